"""ProviderClient.stream against a loopback server that misbehaves in ways FakeOpenAI does not:
error bodies of every shape, silence before any byte, streams that end or break early."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from adapters.openai.client import ProviderClient, env_proxy
from adapters.openai.sse import MAX_EVENT
from bridge.config import OpenAIProvider
from bridge.errors import ErrorCode
from bridge.models import CompletionRequest, Delta, Done, Failed, ReplyEvent, UserRef

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """One route, /v1/chat/completions, answered by whatever handler a test installs."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.headers: list[dict[str, str]] = []
        self.peers: list[tuple[str, int]] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._serve)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer)
        await request.read()
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def up() -> AsyncIterator[Upstream]:
    u = Upstream()
    await u.start()
    yield u
    await u.stop()


@pytest.fixture
async def client(up: Upstream) -> AsyncIterator[ProviderClient]:
    c = ProviderClient(
        OpenAIProvider(name="odd", base_url=up.base_url, api_key="sk-odd", timeout=0.5)
    )
    yield c
    await c.close()


def _req() -> CompletionRequest:
    return CompletionRequest(
        user=UserRef("u"), model="m", messages=[{"role": "user", "content": "hi"}]
    )


async def collect(c: ProviderClient) -> list[ReplyEvent]:
    return [e async for e in c.stream(_req(), "m")]


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def sse(request: web.Request, *pieces: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for piece in pieces:
        await resp.write(piece)
    return resp


def failed(events: list[ReplyEvent]) -> Failed:
    last = events[-1]
    assert isinstance(last, Failed), events
    return last


async def test_sends_the_sdk_headers_and_reuses_the_connection(
    up: Upstream, client: ProviderClient
) -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunk("hi"), chunk(finish="stop"), b"data: [DONE]\n\n")

    up.handler = ok
    for _ in range(2):
        events = await collect(client)
        assert events[-1] == Done(finish_reason="stop")
    sent = up.headers[0]
    assert sent["Authorization"] == "Bearer sk-odd"
    assert sent["Content-Type"] == "application/json"
    assert sent["Accept"] == "text/event-stream"
    # A reply read to its end leaves its connection in the pool for the next one.
    assert up.peers[0] == up.peers[1]


@pytest.mark.parametrize(
    ("status", "body", "content_type", "code", "words"),
    [
        (503, {"error": {"message": "overloaded, retry later"}}, None, "UPSTREAM_ERROR", None),
        (502, {"error": "bad gateway upstream"}, None, "UPSTREAM_ERROR", "bad gateway upstream"),
        (429, "<html><body>Too many</body></html>", "text/html", "RATE_LIMITED", "Too many"),
        (500, "", "text/plain", "UPSTREAM_ERROR", "Internal Server Error"),
        (404, {"detail": "no route"}, None, "NOT_FOUND", "no route"),
    ],
)
async def test_status_errors_keep_the_providers_words(
    up: Upstream, client: ProviderClient, status, body, content_type, code, words
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if content_type is None:
            return web.json_response(body, status=status)
        return web.Response(status=status, text=body, content_type=content_type)

    up.handler = answer
    last = failed(await collect(client))
    assert last.error == ErrorCode(code)
    assert last.reason.startswith(f"provider odd returned {status}: ")
    expected = words or body["error"]["message"]
    assert expected in last.reason


async def test_silence_before_any_byte_times_out(up: Upstream, client: ProviderClient) -> None:
    async def mute(request: web.Request) -> web.StreamResponse:
        await up.release.wait()
        return web.Response()

    up.handler = mute
    last = failed(await collect(client))
    assert last.error == ErrorCode.UPSTREAM_TIMEOUT
    assert "sent nothing for 0.5 s" in last.reason


async def test_silence_mid_stream_times_out(up: Upstream, client: ProviderClient) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = await sse(request, chunk("partial"))
        await up.release.wait()
        return resp

    up.handler = stall
    events = await collect(client)
    assert events[0] == Delta(text="partial")
    assert failed(events).error == ErrorCode.UPSTREAM_TIMEOUT


async def test_torn_stream_keeps_what_arrived(up: Upstream, client: ProviderClient) -> None:
    async def torn(request: web.Request) -> web.StreamResponse:
        resp = await sse(request, chunk("partial"))
        assert request.transport is not None
        request.transport.abort()
        return resp

    up.handler = torn
    events = await collect(client)
    assert events[0] == Delta(text="partial")
    last = failed(events)
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason == "provider odd: the connection broke off mid-reply"


async def test_clean_end_without_finish(up: Upstream, client: ProviderClient) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunk("partial"), b"data: [DONE]\n\n")

    up.handler = short
    last = failed(await collect(client))
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason == "provider odd: stream ended before the reply finished"


async def test_a_payload_that_is_not_json(up: Upstream, client: ProviderClient) -> None:
    async def garbled(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunk("ok"), b"data: {not json\n\n")

    up.handler = garbled
    last = failed(await collect(client))
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason.startswith("provider odd sent a stream event that is not JSON (")


async def test_refused_connection() -> None:
    dead = ProviderClient(OpenAIProvider(name="dead", base_url="http://127.0.0.1:9/v1", timeout=5))
    last = failed([e async for e in dead.stream(_req(), "m")])
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason.startswith("provider dead: connection failed (")
    await dead.close()


async def test_closed_client_refuses_to_stream(client: ProviderClient) -> None:
    await client.close()
    last = failed(await collect(client))
    assert last.error == ErrorCode.UNAVAILABLE


def test_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert env_proxy("https://api.example.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert env_proxy("https://api.example.com/v1/chat/completions") == "http://proxy:3128"
    assert env_proxy("http://api.example.com/v1/chat/completions") is None
    assert env_proxy("https://127.0.0.1:8000/v1/chat/completions") is None


async def test_a_huge_error_page_is_read_only_so_far(up: Upstream, client: ProviderClient) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="bad gateway " * 100_000, content_type="text/html")

    up.handler = huge
    last = failed(await collect(client))
    assert last.reason.startswith("provider odd returned 502: bad gateway bad gateway")
    assert len(last.reason) < 400


async def test_cancelled_before_the_answer_closes_the_request(up: Upstream) -> None:
    # A timeout far off, so only the cancellation can close the request in time.
    client = ProviderClient(OpenAIProvider(name="odd", base_url=up.base_url, timeout=60))
    entered = asyncio.Event()
    gone = asyncio.Event()

    async def mute(request: web.Request) -> web.StreamResponse:
        entered.set()
        try:
            await up.release.wait()
        except asyncio.CancelledError:  # aiohttp cancels the handler when the peer goes
            gone.set()
            raise
        return web.Response()

    up.handler = mute
    reader = asyncio.create_task(collect(client))
    async with asyncio.timeout(5):
        await entered.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    async with asyncio.timeout(5):
        await gone.wait()
    await client.close()


async def test_a_lone_surrogate_escape_becomes_u_fffd(up: Upstream, client: ProviderClient) -> None:
    # Written raw: json.dumps would escape the backslash. orjson refuses the lone \ud83d.
    cut = b'data: {"choices":[{"index":0,"delta":{"content":"B\\ud83d"}}]}\n\n'

    async def halved(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunk("A"), cut, chunk("C"), chunk(finish="stop"))

    up.handler = halved
    events = await collect(client)
    assert events[-1] == Done(finish_reason="stop")
    # Storage and the hub's frames cannot hold a lone surrogate; the hub writes U+FFFD for it.
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "AB\ufffdC"


async def test_an_event_that_never_ends_fails_and_closes_the_response(
    up: Upstream, client: ProviderClient
) -> None:
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = await sse(request, chunk("partial"))
        try:
            while True:  # `data:` lines, never the blank line that would end the event
                await resp.write(b"data: x\n" * 8192)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            raise

    up.handler = endless
    async with asyncio.timeout(5):
        events = await collect(client)
        await gone.wait()
    assert events[0] == Delta(text="partial")
    last = failed(events)
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason == f"provider odd: a stream event is longer than {MAX_EVENT} bytes"


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        ("just text", "the delta is a string, not an object"),
        (["text"], "the delta is an array, not an object"),
        ({"tool_calls": {"index": 0}}, "tool_calls is an object, not a list"),
        ({"tool_calls": "call"}, "tool_calls is a string, not a list"),
        ({"tool_calls": 7}, "tool_calls is a number, not a list"),
        ({"tool_calls": ["call"]}, "a tool call is a string, not an object"),
        ({"tool_calls": [3]}, "a tool call is a number, not an object"),
        ({"tool_calls": [{"index": 0, "function": "f(x)"}]}, "function is a string, not an"),
        ({"tool_calls": [{"index": 0, "function": [1]}]}, "function is an array, not an"),
        ({"tool_calls": [{"index": [0], "function": {}}]}, "index is an array, not an"),
        ({"tool_calls": [{"index": "first"}]}, "index is a string, not an integer"),
    ],
)
async def test_a_malformed_chunk_fails_the_stream_without_a_crash(
    up: Upstream, client: ProviderClient, delta: object, words: str
) -> None:
    bad = json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode()

    async def malformed(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunk("ok"), b"data: " + bad + b"\n\n", chunk(finish="stop"))

    up.handler = malformed
    events = await collect(client)
    assert events[0] == Delta(text="ok")
    last = failed(events)
    assert last.error == ErrorCode.UPSTREAM_ERROR
    assert last.reason.startswith("provider odd sent a malformed chunk: ")
    assert words in last.reason
