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
from bridge.config import MomoAIConfig
from bridge.errors import BridgeError, ErrorCode

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


async def test_an_empty_answer_is_a_failure(serve) -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")
        await resp.write_eof()
        return resp

    client = await serve(empty)
    with pytest.raises((BridgeError, MomoAIError)):
        await answer(client)


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
