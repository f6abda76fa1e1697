"""The MOMO AI sandbox over real loopback HTTP: the API's shapes, its natural errors, every
injected fault, the controls, and a prompt close()."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import mock

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import make_mocked_request

from adapters.momoai.sandbox import MomoAISandbox, run_standalone
from adapters.momoai.sandbox import controls as sandbox_controls
from adapters.momoai.sandbox import state as sandbox_state
from tests.momoai.conftest import SANDBOX_KEY

Factory = Callable[..., Awaitable[MomoAISandbox]]
PIECES = ["gpt5", ".", "2 ", "收", "到", ": ", "hi"]  # agent 159 ("gpt5.2") answering "hi"
# (len("hi") + len("gpt5.2 收到: hi")) // 2 + 1 == 8 tokens at 0.01 per 1k
DEFAULT_STREAM = (
    'data: {"delta": "gpt5"}\n\n'
    'data: {"delta": "."}\n\n'
    'data: {"delta": "2 "}\n\n'
    'data: {"delta": "收"}\n\n'
    'data: {"delta": "到"}\n\n'
    'data: {"delta": ": "}\n\n'
    'data: {"delta": "hi"}\n\n'
    'data: {"delta": "", "done": true, "id": "req_000001", "tokens_used": 8, "cost": 8e-05}\n\n'
).encode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def auth(key: str | None = SANDBOX_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


async def call(
    http: aiohttp.ClientSession,
    sb: MomoAISandbox,
    body: Any = None,
    *,
    agent: int | str = 159,
    key: str | None = SANDBOX_KEY,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST /agents/{agent}; (status, headers, parsed JSON or text)."""
    url = f"{sb.base_url}/agents/{agent}"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.post(url, headers=auth(key), **kwargs) as resp:
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, dict(resp.headers), parsed


async def get(
    http: aiohttp.ClientSession, sb: MomoAISandbox, path: str, key: str | None = SANDBOX_KEY
) -> tuple[int, Any]:
    async with http.get(sb.base_url + path, headers=auth(key)) as resp:
        return resp.status, await resp.json()


async def stream_bytes(
    http: aiohttp.ClientSession, sb: MomoAISandbox, prompt: str = "hi", **extra: Any
) -> bytes:
    body = {"prompt": prompt, "stream": True, **extra}
    async with http.post(f"{sb.base_url}/agents/159", json=body, headers=auth()) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        return await resp.read()


def error_of(status: int, parsed: Any) -> tuple[int, str]:
    assert parsed["success"] is False
    assert set(parsed["error"]) == {"code", "message", "details"}
    return status, parsed["error"]["code"]


def deltas(raw: bytes) -> list[Any]:
    """What the documented client does: JSON.parse every `data: ` line."""
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


# -- the API's shapes ---------------------------------------------------------------------------


async def test_agents_default_list(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    status, body = await get(http, momoai_sandbox, "/agents")
    assert status == 200 and body["success"] is True
    data = body["data"]
    assert (data["total"], data["page"], data["page_size"]) == (4, 1, 20)
    assert data["agents"][0] == {
        "id": 159,
        "name": "gpt5.2",
        "description": "最新的 GPT 模型",
        "price_per_1k_tokens": 0.01,
        "rating": 4.8,
    }
    assert any(re.search(r"[\u4e00-\u9fff]", a["name"]) for a in data["agents"])


async def test_agents_paging(momoai_sandbox_factory: Factory, http: aiohttp.ClientSession):
    agents = [{"id": i, "name": f"agent-{i}", "price_per_1k_tokens": 0.001} for i in range(1, 46)]
    sb = await momoai_sandbox_factory(agents=agents)

    async def page(query: str) -> dict[str, Any]:
        status, body = await get(http, sb, "/agents" + query)
        assert status == 200
        return body["data"]

    first, third, beyond = await page(""), await page("?page=3"), await page("?page=4")
    assert [a["id"] for a in first["agents"]] == list(range(1, 21))
    assert [a["id"] for a in third["agents"]] == list(range(41, 46))
    assert beyond["agents"] == [] and beyond["total"] == 45 and beyond["page"] == 4
    everything = await page("?page_size=100")
    assert len(everything["agents"]) == 45 and everything["page_size"] == 100
    small = await page("?page=2&page_size=7")
    assert [a["id"] for a in small["agents"]] == list(range(8, 15))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=-3", "page_size"),
    ],
)
async def test_agents_bad_paging(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession, query: str, field: str
):
    status, body = await get(http, momoai_sandbox, "/agents?" + query)
    assert error_of(status, body) == (400, "INVALID_PARAMETERS")
    assert body["error"]["details"].startswith(field + ":")


async def test_balance(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    status, body = await get(http, momoai_sandbox, "/account/balance")
    assert status == 200
    assert body["data"]["balance"] == 100.0 and body["data"]["currency"] == "CNY"
    assert {"agent_id": 159, "remaining_tokens": 50000} in body["data"]["agents"]


async def test_plain_call_shape_and_deduction(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    sb = momoai_sandbox
    body = {"prompt": "first line\n\n  hi  \n", "temperature": 0.3, "max_tokens": 50, "x": 1}
    status, _, answer = await call(http, sb, body)
    assert status == 200 and answer["success"] is True
    data = answer["data"]
    assert data["content"] == "gpt5.2 收到: hi"
    assert data["id"] == "req_000001"
    assert data["tokens_used"] == (len(body["prompt"]) + len(data["content"])) // 2 + 1
    assert data["cost"] == round(data["tokens_used"] / 1000 * 0.01, 6)
    assert sb.balance == round(100 - data["cost"], 6)
    assert sb.agents[159].remaining_tokens == 50000 - data["tokens_used"]
    _, balance = await get(http, sb, "/account/balance")
    assert balance["data"]["balance"] == sb.balance

    [recorded] = sb.requests
    assert (recorded.agent_id, recorded.body, recorded.api_key) == (159, body, SANDBOX_KEY)
    assert recorded.stream is False and recorded.fault is None


async def test_stream_exact_bytes(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    async with http.post(
        f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Transfer-Encoding"] == "chunked"
        raw = await resp.read()
    assert raw == DEFAULT_STREAM
    assert "".join(d["delta"] for d in deltas(raw)) == "gpt5.2 收到: hi"
    await sb.wait_until(lambda: sb.completed_streams == 1, timeout=5)
    assert sb.open_streams == 0 and sb.aborted == 0
    assert sb.balance == round(100 - 8e-05, 6)


async def test_max_tokens_caps_deltas(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    parsed = deltas(await stream_bytes(http, momoai_sandbox, max_tokens=3))
    assert [d["delta"] for d in parsed] == [*PIECES[:3], ""]
    assert parsed[-1]["tokens_used"] == (2 + len("gpt5.2")) // 2 + 1
    _, _, answer = await call(http, momoai_sandbox, {"prompt": "hi", "max_tokens": 1})
    assert answer["data"]["content"] == "gpt5"


# -- natural errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic sandbox-key"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/agents"), ("GET", "/account/balance"), ("POST", "/agents/159"), ("GET", "/nope")],
)
async def test_invalid_api_key(
    momoai_sandbox: MomoAISandbox,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    method: str,
    path: str,
):
    url = momoai_sandbox.base_url + path
    async with http.request(method, url, headers=headers, json={"prompt": "hi"}) as resp:
        assert error_of(resp.status, await resp.json()) == (401, "INVALID_API_KEY")


async def test_unknown_path_with_key(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    status, body = await get(http, momoai_sandbox, "/nope")
    assert error_of(status, body) == (404, "NOT_FOUND")


@pytest.mark.parametrize("agent", [999, "abc"])
async def test_agent_not_found(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession, agent: int | str
):
    status, _, body = await call(http, momoai_sandbox, {"prompt": "hi"}, agent=agent)
    assert error_of(status, body) == (404, "AGENT_NOT_FOUND")
    assert str(agent) in body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"not json", "body"),
        (b'["a list"]', "body"),
        (b"{}", "prompt"),
        (b'{"prompt": 5}', "prompt"),
        (b'{"prompt": "  "}', "prompt"),
        (b'{"prompt": "hi", "temperature": "hot"}', "temperature"),
        (b'{"prompt": "hi", "temperature": 1.5}', "temperature"),
        (b'{"prompt": "hi", "temperature": -0.1}', "temperature"),
        (b'{"prompt": "hi", "temperature": true}', "temperature"),
        (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": 2.5}', "max_tokens"),
        (b'{"prompt": "hi", "stream": "yes"}', "stream"),
    ],
)
async def test_invalid_parameters(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession, payload: bytes, field: str
):
    sb = momoai_sandbox
    status, _, body = await call(http, sb, raw=payload)
    assert error_of(status, body) == (400, "INVALID_PARAMETERS")
    assert body["error"]["details"].startswith(field + ":")
    assert sb.balance == 100.0 and len(sb.requests) == 1


async def test_insufficient_balance(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.balance = 0.00001
    status, _, body = await call(http, sb, {"prompt": "hi"})
    assert error_of(status, body) == (402, "INSUFFICIENT_BALANCE")
    assert body["error"]["message"] == "余额不足"
    assert body["error"]["details"] == "当前余额: 0.00001 元,本次请求需要: 0.00008 元"
    assert sb.balance == 0.00001
    sb.balance = 0.00008  # exactly enough
    status, _, body = await call(http, sb, {"prompt": "hi"})
    assert status == 200 and sb.balance == 0


async def test_concurrent_calls_cannot_overdraw(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    sb = momoai_sandbox
    sb.balance = 0.0001  # one "hi" (0.00008) fits, two do not
    sb.inject("stall", after=1)
    async with http.post(
        f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
    ) as held:
        await held.content.readline()
        status, _, body = await call(http, sb, {"prompt": "hi"})
        assert error_of(status, body) == (402, "INSUFFICIENT_BALANCE")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rate_limit_free_tier(momoai_sandbox_factory: Factory, http: aiohttp.ClientSession):
    clock = FakeClock()
    sb = await momoai_sandbox_factory(keys={"free-key": "free", "ent": "enterprise"}, clock=clock)
    for _ in range(10):
        assert (await call(http, sb, {"prompt": "hi"}, key="free-key"))[0] == 200
    status, headers, body = await call(http, sb, {"prompt": "hi"}, key="free-key")
    assert error_of(status, body) == (429, "RATE_LIMIT")
    assert headers["Retry-After"] == "60"
    # GETs are not counted, and another key has its own window.
    assert (await get(http, sb, "/agents", key="free-key"))[0] == 200
    for _ in range(12):
        assert (await call(http, sb, {"prompt": "hi"}, key="ent"))[0] == 200

    clock.now += 45.5
    status, headers, _ = await call(http, sb, {"prompt": "hi"}, key="free-key")
    assert status == 429 and headers["Retry-After"] == "15"
    clock.now += 14.5  # the first ten calls leave the window
    assert (await call(http, sb, {"prompt": "hi"}, key="free-key"))[0] == 200


# -- injected faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("INVALID_API_KEY", 401),
        ("INSUFFICIENT_BALANCE", 402),
        ("RATE_LIMIT", 429),
        ("AGENT_NOT_FOUND", 404),
        ("INVALID_PARAMETERS", 400),
    ],
)
async def test_injected_error_codes(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession, kind: str, status: int
):
    sb = momoai_sandbox
    sb.inject(kind)
    got_status, headers, body = await call(http, sb, {"prompt": "hi", "stream": True})
    assert error_of(got_status, body) == (status, kind)
    assert body["error"]["message"] and body["error"]["details"]
    if kind == "RATE_LIMIT":
        assert headers["Retry-After"] == "1"
    if kind == "INSUFFICIENT_BALANCE":
        assert body["error"]["message"] == "余额不足"
        assert body["error"]["details"].startswith("当前余额: 100 元,本次请求需要: ")
    assert sb.requests[0].fault == kind
    assert (await call(http, sb, {"prompt": "hi"}))[0] == 200  # count=1: used up


async def test_injected_error_overrides(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("RATE_LIMIT", retry_after=7, message="慢一点", details="d")
    status, headers, body = await call(http, sb, {"prompt": "hi"}, key=None)  # even without a key
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"] == {"code": "RATE_LIMIT", "message": "慢一点", "details": "d"}


async def test_injected_count_and_agent_filter(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    sb = momoai_sandbox
    sb.inject("AGENT_NOT_FOUND", count=2, agent_id=160)
    assert (await call(http, sb, {"prompt": "hi"}, agent=159))[0] == 200
    assert (await call(http, sb, {"prompt": "hi"}, agent=160))[0] == 404
    assert (await call(http, sb, {"prompt": "hi"}, agent=160))[0] == 404
    assert (await call(http, sb, {"prompt": "hi"}, agent=160))[0] == 200


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "marker"),
    [
        ("http_500", 500, "text/plain", "Internal Server Error"),
        ("http_502_html", 502, "text/html", "<h1>502 Bad Gateway</h1>"),
    ],
)
async def test_injected_http_errors(
    momoai_sandbox: MomoAISandbox,
    http: aiohttp.ClientSession,
    kind: str,
    status: int,
    content_type: str,
    marker: str,
):
    momoai_sandbox.inject(kind)
    url = f"{momoai_sandbox.base_url}/agents/159"
    async with http.post(url, json={"prompt": "hi"}, headers=auth()) as resp:
        assert resp.status == status and resp.content_type == content_type
        text = await resp.text()
    assert marker in text
    with pytest.raises(ValueError):
        json.loads(text)


async def test_stream_faults_wait_for_an_accepted_call(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    sb = momoai_sandbox
    sb.inject("error_midstream", after=0)
    assert (await call(http, sb, {"prompt": ""}))[0] == 400  # refused: the fault stays queued
    assert (await call(http, sb, {"prompt": "hi"}))[0] == 200  # not streamed: stream-only kind
    parsed = deltas(await stream_bytes(http, sb))
    assert parsed == [
        {
            "success": False,
            "error": {
                "code": "INTERNAL_ERROR",
                "message": "服务器内部错误",
                "details": "生成过程中断",
            },
        }
    ]


async def test_slow(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("slow", delay=0.03)
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await stream_bytes(http, sb)
    assert loop.time() - started >= 0.03 * (len(PIECES) - 1)
    assert [d["delta"] for d in deltas(raw)][:-1] == PIECES


async def test_stall_holds_until_client_leaves(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    sb = momoai_sandbox
    sb.inject("stall", after=2)
    resp = await http.post(
        f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
    )
    try:
        lines = [await resp.content.readline() for _ in range(4)]
        assert lines == [b'data: {"delta": "gpt5"}\n', b"\n", b'data: {"delta": "."}\n', b"\n"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readline(), 0.2)
        assert sb.open_streams == 1 and sb.completed_streams == 0
    finally:
        resp.close()  # the client gives up
    await sb.wait_aborted(1, timeout=5)
    assert sb.open_streams == 0


async def test_drop_is_a_payload_error(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("drop", after=2)
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
        ) as resp:
            async for line in resp.content:
                received.append(line)
    assert b"".join(received) == DEFAULT_STREAM[: len(b"".join(received))]
    assert [json.loads(x[6:]) for x in received if x.startswith(b"data: ")] == [
        {"delta": "gpt5"},
        {"delta": "."},
    ]
    await sb.wait_until(lambda: sb.dropped == 1, timeout=5)
    assert sb.open_streams == 0 and sb.aborted == 0 and sb.completed_streams == 0
    tokens = (len("hi") + len("gpt5.")) // 2 + 1  # paid for the prompt and the two deltas sent
    assert sb.balance == round(100 - tokens / 1000 * 0.01, 6)


async def test_drop_plain_call(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, sb, {"prompt": "hi"})
    assert sb.balance == 100.0  # no answer, no charge


async def test_error_midstream(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("error_midstream", after=2, code="RATE_LIMIT")
    raw = await stream_bytes(http, sb)  # ends cleanly
    parsed = deltas(raw)
    assert parsed[:2] == [{"delta": "gpt5"}, {"delta": "."}]
    assert parsed[2]["success"] is False and parsed[2]["error"]["code"] == "RATE_LIMIT"
    assert parsed[2]["error"]["message"] == "请求过于频繁,请稍后再试"
    assert len(parsed) == 3 and raw.endswith(b"\n\n")


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (
            {"delta_key": "content"},
            'data: {"content": "hi"}\n\n'
            'data: {"content": "", "done": true, "id": "req_000001", "tokens_used": 4, "cost": 4e-05}\n\n',
        ),
        (
            {"delta_key": "openai", "final": "done_marker"},
            'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
            'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"total_tokens": 4},'
            ' "done": true, "id": "req_000001", "tokens_used": 4, "cost": 4e-05}\n\n'
            "data: [DONE]\n\n",
        ),
        ({"final": "none"}, 'data: {"delta": "hi"}\n\n'),
        ({"final": "done_marker"}, None),
        ({"newlines": "single", "final": "none"}, 'data: {"delta": "hi"}\n'),
        ({"newlines": "crlf", "final": "none"}, 'data: {"delta": "hi"}\r\n\r\n'),
    ],
)
async def test_style_variants(
    momoai_sandbox: MomoAISandbox,
    http: aiohttp.ClientSession,
    style: dict[str, Any],
    expected: str | None,
):
    sb = momoai_sandbox
    sb.inject("style", **style)
    raw = await stream_bytes(http, sb, max_tokens=1, prompt="hi")  # one delta: "gpt5"
    raw = raw.replace(b'"gpt5"', b'"hi"')  # keep the expectations short
    if expected is None:
        assert raw.endswith(b"\n\ndata: [DONE]\n\n") and b'"done": true' in raw
    else:
        assert raw == expected.encode()


async def test_style_keepalive(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    momoai_sandbox.inject("style", keepalive=True)
    raw = await stream_bytes(http, momoai_sandbox, max_tokens=2)
    assert raw.startswith(b'data: {"delta": "gpt5"}\n\n: keep-alive\n\ndata: {"delta": "."}\n\n')
    assert raw.count(b": keep-alive\n\n") == 1  # between deltas only


async def test_style_split(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    sb.inject("style", split=True)
    chunks: list[bytes] = []
    async with http.post(
        f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
    ) as resp:
        async for chunk in resp.content.iter_any():
            chunks.append(chunk)
    assert b"".join(chunks) == DEFAULT_STREAM  # the same bytes...
    assert len(chunks) > 2 * DEFAULT_STREAM.count(b"\n\n")  # ...in many more reads than lines
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable  # some read ended inside a multi-byte character


async def test_style_params_combine_with_stream_faults(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    momoai_sandbox.inject("drop", after=1, delta_key="openai", newlines="crlf")
    url = f"{momoai_sandbox.base_url}/agents/159"
    async with http.post(url, json={"prompt": "hi", "stream": True}, headers=auth()) as resp:
        first = await resp.content.readline()
        assert first == b'data: {"choices": [{"delta": {"content": "gpt5"}}]}\r\n'
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_non_stream_when_streaming(
    momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession
):
    momoai_sandbox.inject("non_stream_when_streaming")
    url = f"{momoai_sandbox.base_url}/agents/159"
    async with http.post(url, json={"prompt": "hi", "stream": True}, headers=auth()) as resp:
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["success"] is True and body["data"]["content"] == "gpt5.2 收到: hi"
    assert momoai_sandbox.completed_streams == 0


async def test_abandoned_stream_counts_as_aborted(
    momoai_sandbox_factory: Factory, http: aiohttp.ClientSession
):
    sb = await momoai_sandbox_factory(token_delay=0.05)
    resp = await http.post(
        f"{sb.base_url}/agents/159", json={"prompt": "hi", "stream": True}, headers=auth()
    )
    assert await resp.content.readline() == b'data: {"delta": "gpt5"}\n'
    resp.close()
    await sb.wait_aborted(1, timeout=5)
    assert sb.open_streams == 0 and sb.completed_streams == 0
    assert 100 - 8e-05 < sb.balance < 100  # paid for what was delivered only
    with pytest.raises(TimeoutError):
        await sb.wait_aborted(2, timeout=0.05)


def test_inject_validation():
    sb = MomoAISandbox()
    with pytest.raises(ValueError, match="unknown fault kind"):
        sb.inject("explode")
    with pytest.raises(ValueError, match="takes no param"):
        sb.inject("drop", delay=1)
    with pytest.raises(ValueError, match="delta_key"):
        sb.inject("style", delta_key="text")
    with pytest.raises(ValueError, match="after"):
        sb.inject("stall", after=-1)
    with pytest.raises(ValueError, match="count"):
        sb.inject("http_500", count=0)
    with pytest.raises(ValueError, match="tier"):
        MomoAISandbox(keys={"k": "gold"})


# -- controls, close, standalone ----------------------------------------------------------------


async def test_control_endpoints(momoai_sandbox: MomoAISandbox, http: aiohttp.ClientSession):
    sb = momoai_sandbox
    controls = sb.root_url + "/_sandbox"
    async with http.post(controls + "/inject", json={"kind": "AGENT_NOT_FOUND", "count": 2}) as r:
        assert r.status == 200
        assert await r.json() == {
            "ok": True,
            "fault": {"kind": "AGENT_NOT_FOUND", "count": 2, "agent_id": None},
            "pending": 1,
        }
    async with http.post(controls + "/inject", json={"kind": "nope"}) as r:
        assert r.status == 400 and "unknown fault kind" in (await r.json())["error"]
    async with http.post(controls + "/inject", json={"kind": "drop", "after": "x"}) as r:
        assert r.status == 400
    assert (await call(http, sb, {"prompt": "hi"}))[0] == 404
    async with http.get(controls + "/state") as r:
        state = await r.json()
    assert state["requests"] == 1 and state["faults"][0]["count"] == 1

    sb.balance = 1.0
    async with http.post(controls + "/reset") as r:
        assert await r.json() == {"ok": True, "balance": 100.0}
    assert sb.requests == [] and (await call(http, sb, {"prompt": "hi"}))[0] == 200
    async with http.post(controls + "/reset", json={"balance": 0}) as r:
        assert (await r.json())["balance"] == 0
    assert (await call(http, sb, {"prompt": "hi"}))[0] == 402


async def test_recorded_calls_are_bounded(
    momoai_sandbox_factory: Factory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
):
    assert (await momoai_sandbox_factory()).state.requests.maxlen == 1000
    monkeypatch.setattr(sandbox_state, "MAX_RECORDED", 3)
    sb = await momoai_sandbox_factory(controls=True)
    assert sb.requests == [] and not sb.requests and sb.request_count == 0
    for i in range(5):
        assert (await call(http, sb, {"prompt": f"q{i}"}))[0] == 200
    # The latest three are kept, oldest first; every call is still counted and waited for.
    assert [r.body["prompt"] for r in sb.requests] == ["q2", "q3", "q4"]
    assert len(sb.requests) == 3 and sb.requests[-1].body["prompt"] == "q4" and sb.requests
    assert isinstance(sb.requests, list) and sb.request_count == 5
    await sb.wait_requests(5, timeout=1)
    async with http.get(sb.root_url + "/_sandbox/state") as r:
        assert (await r.json())["requests"] == 5
    sb.reset()
    assert sb.requests == [] and sb.request_count == 0


async def test_controls_off_and_loopback_only(
    momoai_sandbox_factory: Factory, http: aiohttp.ClientSession
):
    sb = await momoai_sandbox_factory()  # controls=False
    async with http.post(sb.root_url + "/_sandbox/inject", json={"kind": "http_500"}) as r:
        assert r.status == 404
    on = await momoai_sandbox_factory(controls=True)
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("192.0.2.7", 5555)
    request = make_mocked_request("POST", "/_sandbox/reset", app=on.app, transport=transport)
    response = await sandbox_controls.reset(request)
    assert response.status == 403


async def test_close_with_stalled_streams_is_prompt(
    momoai_sandbox_factory: Factory, http: aiohttp.ClientSession
):
    sb = await momoai_sandbox_factory()
    sb.inject("stall", count=2, after=1)
    sb.inject("stall")  # a plain call held without an answer
    url = f"{sb.base_url}/agents/159"
    streams = [
        await http.post(url, json={"prompt": "hi", "stream": True}, headers=auth())
        for _ in range(2)
    ]
    plain = asyncio.create_task(call(http, sb, {"prompt": "hi"}))
    for resp in streams:
        await resp.content.readline()
    await sb.wait_requests(3, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(3):
        await sb.close()
    assert loop.time() - started < 3
    for resp in streams:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    with pytest.raises(aiohttp.ClientConnectionError):
        await plain
    assert sb.open_streams == 0 and sb.aborted == 0
    await sb.close()  # idempotent


async def test_run_standalone(http: aiohttp.ClientSession):
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with structlog.testing.capture_logs() as logs:
        server = asyncio.create_task(
            run_standalone("127.0.0.1", 0, {"demo": "basic"}, stop, 0.0, started=started)
        )
        try:
            async with asyncio.timeout(5):
                base = await started  # set once it listens: no port to guess, no race
            match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", base)
            assert match, base
            port = int(match[1])
            assert port != 0
            async with http.get(base + "/agents", headers=auth("demo")) as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/_sandbox/state") as r:
                assert r.status == 200  # controls on by default, loopback only
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await server
    [listening] = [e for e in logs if e["event"] == "momoai_sandbox.listening"]
    assert listening["base_url"] == base  # what `momobridge momoai-sandbox` shows is the real URL
    assert listening["controls"] == f"http://127.0.0.1:{port}/_sandbox/"
    assert [e["event"] for e in logs][-1] == "momoai_sandbox.stopped"


async def test_run_standalone_without_started():
    """The call bridge/cli.py makes (no `started`) still listens, logs the real URL, and stops."""
    stop = asyncio.Event()
    stop.set()  # stops as soon as it listens
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):
            await run_standalone("127.0.0.1", 0, {"demo": "pro"}, stop)
    listening, stopped = logs
    assert listening["event"] == "momoai_sandbox.listening"
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*/v1", listening["base_url"])
    assert listening["api_keys"] == {"demo": "pro"}
    assert stopped["event"] == "momoai_sandbox.stopped"


async def test_run_standalone_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        with pytest.raises(OSError):
            await run_standalone("127.0.0.1", port, {"demo": "basic"}, asyncio.Event(),
                                 started=started)  # fmt: skip
        with pytest.raises(OSError):
            started.result()  # a waiter learns why instead of waiting forever
