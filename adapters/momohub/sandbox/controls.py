"""Test-only controls under /v1/_sandbox/, mounted only when `sandbox.fault_injection` is on.

They answer plain JSON (no envelope): they are the sandbox's own API, not MomoHub's.
"""

from __future__ import annotations

from aiohttp import web

from adapters.momohub.sandbox.api import no_content, raw_json, read_object, validation_error
from adapters.momohub.sandbox.faults import parse_fault
from adapters.momohub.sandbox.state import STATE

PREFIX = "/v1/_sandbox/"
routes = web.RouteTableDef()


@routes.post(PREFIX + "faults")
async def add_fault(request: web.Request) -> web.Response:
    fault, errors = parse_fault(await read_object(request))
    if fault is None:
        raise validation_error(errors)
    request.app[STATE].faults.add(fault)
    return raw_json(fault.to_api(), status=201)


@routes.delete(PREFIX + "faults")
async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return no_content()


@routes.post(PREFIX + "expire-tokens")
async def expire_tokens(request: web.Request) -> web.Response:
    return raw_json({"expired": request.app[STATE].store.expire_access_tokens()})


@routes.get(PREFIX + "stats")
async def stats(request: web.Request) -> web.Response:
    return raw_json(request.app[STATE].stats.to_api())


@routes.delete(PREFIX + "stats")
async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset()
    return no_content()
