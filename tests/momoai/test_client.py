"""The MOMO AI client against answers the sandbox does not give: a real aiohttp server on
loopback sending error pages with status 200, pretty-printed errors as text, NDJSON, streams
ended by closing the connection, hostile nesting, many concurrent streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from adapters.momoai.client import MomoAIClient, MomoAIError
from adapters.momoai.stream import StreamEnd, TextDelta
from adapters.momoai.target import MomoAITarget
from bridge.config import MomoAIConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Failed, UserRef

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[MomoAIClient]]]:
    runners: list[web.AppRunner] = []
    clients: list[MomoAIClient] = []

    async def start(handler: Handler, **config: Any) -> MomoAIClient:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        cfg = MomoAIConfig(
            enabled=True,
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="k",
            tier="enterprise",
            **config,
        )
        client = MomoAIClient(cfg)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def answer(client: MomoAIClient, stream: bool = True) -> list[Any]:
    events: list[Any] = []
    async for event in client.call("159", "hi", temperature=None, max_tokens=None, stream=stream):
        events.append(event)
    return events


def text(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_200_error_page_is_a_failure_not_an_empty_answer(serve) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body><h1>Portal</h1><p>Please log in to the Wi-Fi.</p></body></html>",
            content_type="text/html",
        )

    client = await serve(page)
    with pytest.raises(MomoAIError) as e:
        await answer(client)
    assert "Please log in to the Wi-Fi." in e.value.failure.message


async def test_a_pretty_printed_error_sent_as_text_keeps_its_code(serve) -> None:
    async def pretty(request: web.Request) -> web.Response:
        body = (
            '{\n  "success": false,\n  "error": {\n    "code": "INSUFFICIENT_BALANCE",\n'
            '    "message": "余额不足",\n    "details": "当前余额: 0 元"\n  }\n}\n'
        )
        return web.Response(text=body, content_type="text/plain")

    client = await serve(pretty)
    with pytest.raises(MomoAIError) as e:
        await answer(client)
    assert e.value.failure.code == "INSUFFICIENT_BALANCE"
    assert e.value.failure.details == "当前余额: 0 元"


async def test_ndjson_is_streamed(serve) -> None:
    async def ndjson(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for piece in ("Hel", "lo"):
            await resp.write(b'{"delta": "%s"}\n' % piece.encode())
        await resp.write(b'{"done": true, "tokens_used": 3}\n')
        await resp.write_eof()
        return resp

    client = await serve(ndjson)
    events = await answer(client)
    assert text(events) == "Hello"
    assert events[-1] == StreamEnd(tokens_used=3)


async def test_a_stream_ended_by_closing_the_connection_is_a_failure() -> None:
    # No chunking and no length: the end of the body is the connection closing, which a cut
    # looks exactly like. (Written by hand: aiohttp's server always frames its bodies.)
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10):
            await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            b'data: {"delta": "Hel"}\n\n'
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(close_delimited, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MomoAIClient(
        MomoAIConfig(enabled=True, base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    )
    try:
        with pytest.raises(BridgeError) as e:
            await answer(client)
        assert e.value.code == ErrorCode.UPSTREAM_ERROR
        assert "without its final line" in e.value.reason
    finally:
        await client.close()
        server.close()


async def test_a_chunked_stream_without_a_final_line_is_the_answer(serve) -> None:
    async def no_final(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"delta": "Hel"}\n\ndata: {"delta": "lo"}\n\n')
        await resp.write_eof()
        return resp

    client = await serve(no_final)
    events = await answer(client)
    assert text(events) == "Hello" and events[-1] == StreamEnd()


async def test_hostile_nesting_is_an_unreadable_answer(serve) -> None:
    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    client = await serve(nested)
    with pytest.raises(MomoAIError):
        await answer(client, stream=False)
    with pytest.raises(MomoAIError):
        await client.balance()


async def test_a_stream_without_text_says_so(serve) -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b': keep-alive\n\ndata: {"ping": 1}\n\n')
        await resp.write_eof()
        return resp

    client = await serve(empty)
    with pytest.raises(BridgeError) as e:
        await answer(client)
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert e.value.reason == "MOMO AI's stream ended without any text"


async def test_a_whole_answer_may_take_longer_than_a_first_piece(serve) -> None:
    release = asyncio.Event()

    async def slow_whole(request: web.Request) -> web.Response:
        # Generated before the headers go out, as a plain JSON API does.
        async with asyncio.timeout(10):
            await release.wait()
        return web.json_response({"success": True, "data": {"content": "done", "cost": 0.1}})

    client = await serve(slow_whole, first_event_timeout=0.2, answer_timeout=30)
    task = asyncio.create_task(answer(client, stream=False))
    # Well past first_event_timeout, the whole answer is still awaited.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.6):
            await asyncio.shield(task)
    release.set()
    async with asyncio.timeout(10):
        events = await task
    assert text(events) == "done" and events[-1] == StreamEnd(cost=0.1)


async def test_the_first_piece_has_first_event_timeout_then_idle_timeout(serve) -> None:
    release = asyncio.Event()

    async def late_first(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)  # headers at once; the first token takes a while
        async with asyncio.timeout(10):
            await release.wait()
        await resp.write(b'data: {"delta": "late", "done": true}\n\n')
        await resp.write_eof()
        return resp

    client = await serve(late_first, first_event_timeout=30, idle_timeout=0.2)
    task = asyncio.create_task(answer(client))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.6):  # three idle timeouts: the first piece is not idle
            await asyncio.shield(task)
    release.set()
    async with asyncio.timeout(10):
        assert text(await task) == "late"


async def test_a_rate_limit_inside_a_stream_pauses_the_pacer(serve) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(
            b'data: {"success": false, "error": {"code": "RATE_LIMIT", "message": "slow down",'
            b' "retry_after": 30}}\n\n'
        )
        await resp.write_eof()
        return resp

    client = await serve(limited, max_wait=0)
    with pytest.raises(MomoAIError) as e:
        await answer(client)
    assert e.value.failure.code == "RATE_LIMIT"
    with pytest.raises(BridgeError) as refused:
        await answer(client)
    assert refused.value.code == ErrorCode.RATE_LIMITED and "pause" in refused.value.reason


async def test_many_concurrent_streams_are_not_capped_by_the_pool(serve) -> None:
    gate = asyncio.Event()
    started = 0
    count = 120  # aiohttp's default pool holds 100 connections

    async def held(request: web.Request) -> web.StreamResponse:
        nonlocal started
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        started += 1
        if started == count:
            gate.set()
        async with asyncio.timeout(30):
            await gate.wait()
        await resp.write(b'data: {"delta": "ok", "done": true}\n\n')
        await resp.write_eof()
        return resp

    client = await serve(held, connect_timeout=5)
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(answer(client) for _ in range(count)))
    assert all(text(r) == "ok" for r in results)


async def test_an_answer_without_text_is_a_failure_not_an_empty_reply(serve) -> None:
    async def only_done(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    client = await serve(only_done)
    target = MomoAITarget(client._config)
    await target.client.close()
    target.client = client
    request = CompletionRequest(
        user=UserRef("ann"), model="momoai:159", messages=[{"role": "user", "content": "hi"}]
    )
    events = [e async for e in target.complete(request)]
    assert events == [Failed(ErrorCode.UPSTREAM_ERROR, "MOMO AI answered with no text")]
