"""Test controls at the server root, `/_sandbox/...` (NOT under /v1, no key): mounted only with
`controls=True` and answering loopback peers only, since they reshape every caller's answers.

They speak plain JSON, not MOMO AI's envelope: they are the sandbox's own API.
- POST /_sandbox/inject  {"kind": ..., "count": 1, "agent_id": 159?, ...params}
      -> 200 {"ok": true, "fault": {"kind", "count", "agent_id", ...params}, "pending": N}
      -> 400 {"ok": false, "error": "<what is wrong>"}
- POST /_sandbox/reset   (body optional; {"balance": 5.0} also sets the balance afterwards)
      -> 200 {"ok": true, "balance": B}
- GET  /_sandbox/state   -> 200 {"balance", "open_streams", "completed_streams", "aborted",
                                  "dropped", "requests", "faults": [...]}
      ("requests": the POST /v1/agents/{id} calls since the start or the last reset)
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from aiohttp import web

from adapters.momoai.sandbox.faults import fault_from_json
from adapters.momoai.sandbox.state import STATE

PREFIX = "/_sandbox/"
routes = web.RouteTableDef()


def _reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def _refuse_remote(request: web.Request) -> web.Response | None:
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return _reply({"ok": False, "error": "sandbox controls answer loopback clients only"}, 403)


async def _json_object(request: web.Request, *, optional: bool) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


@routes.post(PREFIX + "inject")
async def inject(request: web.Request) -> web.Response:
    if refused := _refuse_remote(request):
        return refused
    state = request.app[STATE]
    try:
        fault = fault_from_json(await _json_object(request, optional=False))
    except ValueError as e:
        return _reply({"ok": False, "error": str(e)}, 400)
    state.faults.add(fault)
    return _reply({"ok": True, "fault": fault.to_api(), "pending": len(state.faults)})


@routes.post(PREFIX + "reset")
async def reset(request: web.Request) -> web.Response:
    if refused := _refuse_remote(request):
        return refused
    state = request.app[STATE]
    try:
        body = await _json_object(request, optional=True)
    except ValueError as e:
        return _reply({"ok": False, "error": str(e)}, 400)
    balance = body.get("balance")
    if balance is not None and (isinstance(balance, bool) or not isinstance(balance, int | float)):
        return _reply({"ok": False, "error": "balance must be a number"}, 400)
    state.reset()
    if balance is not None:
        state.balance = round(float(balance), 6)
    return _reply({"ok": True, "balance": state.balance})


@routes.get(PREFIX + "state")
async def show_state(request: web.Request) -> web.Response:
    if refused := _refuse_remote(request):
        return refused
    state = request.app[STATE]
    return _reply(
        {
            "balance": state.balance,
            "open_streams": state.open_streams,
            "completed_streams": state.completed_streams,
            "aborted": state.aborted,
            "dropped": state.dropped,
            "requests": state.request_count,
            "faults": [f.to_api() for f in state.faults.pending()],
        }
    )
