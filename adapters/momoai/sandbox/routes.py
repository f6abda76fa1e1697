"""The imitated API: GET /v1/agents, POST /v1/agents/{agent_id}, GET /v1/account/balance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.momoai.sandbox import errors
from adapters.momoai.sandbox.agents import reply_pieces
from adapters.momoai.sandbox.faults import Fault
from adapters.momoai.sandbox.state import STATE, Recorded, SandboxState, bearer_key
from adapters.momoai.sandbox.streaming import Call, answer_plain, stream_reply

routes = web.RouteTableDef()
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_NOT_JSON = object()
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def _query_int(request: web.Request, name: str, default: int, maximum: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if raw.strip().isdigit() else 0
    if value < 1 or (maximum is not None and value > maximum):
        limit = f"1 到 {maximum} 之间" if maximum else "大于等于 1"
        raise errors.invalid_parameter(name, f"必须是{limit}的整数, 收到 {raw!r}")
    return value


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.authenticate(request)
    page = _query_int(request, "page", 1, None)
    page_size = _query_int(request, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    agents = list(state.agents.values())
    chunk = agents[(page - 1) * page_size : page * page_size]
    return errors.ok(
        {
            "agents": [a.to_api() for a in chunk],
            "total": len(agents),
            "page": page,
            "page_size": page_size,
        }
    )


@routes.get("/v1/account/balance")
async def account_balance(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.authenticate(request)
    agents = [
        {"agent_id": a.id, "remaining_tokens": a.remaining_tokens} for a in state.agents.values()
    ]
    return errors.ok({"balance": state.balance, "currency": "CNY", "agents": agents})


@dataclass(slots=True)
class CallParams:
    prompt: str
    temperature: float | None
    max_tokens: int | None
    stream: bool


def parse_call(body: Any) -> CallParams:
    """The body's fields, or INVALID_PARAMETERS naming the first bad one. Unknown fields are fine;
    an optional field sent as null counts as absent (JS clients send `undefined` that way)."""
    if body is _NOT_JSON:
        raise errors.invalid_parameter("body", "请求体必须是合法的 JSON")
    if not isinstance(body, dict):
        raise errors.invalid_parameter("body", "请求体必须是 JSON 对象")
    prompt = body.get("prompt")
    if prompt is None:
        raise errors.invalid_parameter("prompt", "缺少必填字段 prompt")
    if not isinstance(prompt, str):
        raise errors.invalid_parameter("prompt", "必须是字符串")
    if not prompt.strip():
        raise errors.invalid_parameter("prompt", "不能为空")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise errors.invalid_parameter("temperature", "必须是 0 到 1 之间的数字")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise errors.invalid_parameter("max_tokens", "必须是正整数")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise errors.invalid_parameter("stream", "必须是布尔值")
    return CallParams(prompt, temperature, max_tokens, stream)


def _int_or_str(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return _NOT_JSON


@routes.post("/v1/agents/{agent_id}")
async def call_agent(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    agent_ref = request.match_info["agent_id"]
    body = _parse_json(await request.read())
    record = Recorded(
        agent_id=_int_or_str(agent_ref),
        body=None if body is _NOT_JSON else body,
        api_key=bearer_key(request),
        time=state.clock(),
        stream=isinstance(body, dict) and body.get("stream") is True,
    )
    state.record(record)

    fault = state.faults.take("early", agent_ref, record.stream)
    if fault is not None:
        record.fault = fault.kind
        return early_fault(state, fault, agent_ref, body)

    # The order a gateway would check in: who, how often, what, then whether it can be paid.
    key, tier = state.authenticate(request)
    state.check_rate(key, tier)
    agent = state.find_agent(agent_ref)
    params = parse_call(body)
    pieces = reply_pieces(agent, params.prompt, params.max_tokens)
    call = Call(agent, params.prompt, pieces, "", reserved=0.0)
    call.reserved = call.usage("".join(pieces))[1]
    state.reserve(call.reserved)
    call.request_id = state.next_request_id()

    fault = state.faults.take("accepted", agent_ref, params.stream)
    if fault is not None:
        record.fault = fault.kind
    if params.stream and (fault is None or fault.kind != "non_stream_when_streaming"):
        return await stream_reply(request, state, call, fault)
    return await answer_plain(request, state, call, fault)


def early_fault(state: SandboxState, fault: Fault, agent_ref: str, body: Any) -> web.Response:
    """The response of an injected error: the envelope, or what a broken proxy sends instead."""
    if fault.kind == "http_500":
        return web.Response(status=500, text="Internal Server Error", content_type="text/plain")
    if fault.kind == "http_502_html":
        return web.Response(status=502, text=BAD_GATEWAY_HTML, content_type="text/html")
    error: errors.ApiError
    if fault.kind == "INVALID_API_KEY":
        error = errors.invalid_api_key()
    elif fault.kind == "INSUFFICIENT_BALANCE":
        error = errors.insufficient_balance(state.balance, _estimate(state, agent_ref, body))
    elif fault.kind == "RATE_LIMIT":
        retry_after = fault.params["retry_after"]
        error = errors.rate_limited(retry_after, f"请在 {retry_after:g} 秒后重试")
    elif fault.kind == "AGENT_NOT_FOUND":
        error = errors.agent_not_found(agent_ref)
    else:
        error = errors.invalid_parameter("temperature", "必须是 0 到 1 之间的数字")
    for name in ("message", "details"):
        if name in fault.params:
            error.body["error"][name] = fault.params[name]
    return error.response()


def _estimate(state: SandboxState, agent_ref: str, body: Any) -> float:
    """What the call would cost, for a believable injected INSUFFICIENT_BALANCE: above the
    balance, as the real error would be."""
    agent_id = _int_or_str(agent_ref)
    agent = state.agents.get(agent_id) if isinstance(agent_id, int) else None
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if agent is not None and isinstance(prompt, str) and prompt.strip():
        pieces = reply_pieces(agent, prompt)
        needed = Call(agent, prompt, pieces, "", 0.0).usage("".join(pieces))[1]
        if needed > state.balance:
            return needed
    return round(state.balance + 1.2, 6)
