"""The sandbox's SSE side: raw wire quirks, busy chats, disconnects, fault injection, responders."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.momohub.sandbox import run_sandbox
from bridge.config import OpenAIProvider, SandboxConfig
from tests.momohub.conftest import PASSWORD, SandboxFactory, SandboxHub

pytestmark = pytest.mark.timeout(20)


async def _read_frame(resp: aiohttp.ClientResponse) -> bytes:
    return await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)


async def _read_until_event(resp: aiohttp.ClientResponse, event: bytes) -> bytes:
    seen = b""
    while b"event: " + event not in seen:
        seen += await _read_frame(resp)
    return seen


async def test_raw_stream_is_unescaped_and_ends_after_done(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    async with sandbox.open_stream(token, chat, "first line\nsecond line") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        raw = await asyncio.wait_for(resp.read(), 10)
    assert raw.startswith(b": connected\n\n")
    # The token "\nsecond" is written as-is: an empty data line, then a BARE continuation line.
    assert b"event: delta\ndata: \nsecond\n\n" in raw
    assert b"event: delta\ndata: Momo:\n\n" in raw
    # `done` carries the whole reply raw, newline included, and is the last thing on the wire.
    assert raw.endswith(b"event: done\ndata: Momo: you said first line\nsecond line\n\n")
    assert b"[DONE]" not in raw and b"\nid:" not in raw
    events = SandboxHub.events(raw)
    reply = "".join(data for name, data in events if name == "delta")
    assert reply == "Momo: you said first line\nsecond line"


async def test_heartbeats_are_comments_while_generating(sandbox_factory: SandboxFactory) -> None:
    hub = await sandbox_factory(heartbeat_interval=0.02, token_delay=0.05)
    token = await hub.account()
    chat = await hub.chat(token)
    status, raw = await hub.send(token, chat, "a few words to stream slowly")
    assert status == 200
    assert b": heartbeat\n\n" in raw
    assert SandboxHub.events(raw)[-1][0] == "done"


async def test_tool_trigger_emits_tool_events_before_text(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    _, raw = await sandbox.send(token, chat, "what time is it /tool")
    events = SandboxHub.events(raw)
    assert [name for name, _ in events[:3]] == ["tool_call_start", "tool_call_result", "delta"]
    assert json.loads(events[0][1]) == {"name": "clock", "arguments": {"tz": "UTC"}}
    result = json.loads(events[1][1])
    assert result["name"] == "clock" and isinstance(result["result"], str) and result["result"]


async def test_chat_system_prompt_is_appended_to_the_characters(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    _, raw = await sandbox.send(token, chat, "who are you /prompt")

    def system(raw: bytes) -> str:
        reply = SandboxHub.events(raw)[-1][1]
        return json.loads(reply.split(" [system: ", 1)[1].removesuffix("]"))

    own = system(raw)
    assert own.startswith("You are Momo")
    path = f"/chats/{chat}/config"
    await sandbox.call("PUT", path, token=token, json={"systemPrompt": "Speak like a pirate."})
    _, raw = await sandbox.send(token, chat, "again /prompt")
    assert system(raw) == own + "\n\nSpeak like a pirate."
    # Cleared: the character's prompt alone again.
    await sandbox.call("PUT", path, token=token, json={"systemPrompt": None})
    _, raw = await sandbox.send(token, chat, "once more /prompt")
    assert system(raw) == own


async def test_model_failure_is_200_plus_error_event(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    status, raw = await sandbox.send(token, chat, "please /fail")
    assert status == 200
    events = SandboxHub.events(raw)
    assert [name for name, _ in events] == ["delta", "error"]
    assert "fail" in events[1][1]
    # The user message was stored before the model ran; no reply was stored.
    assert [m["senderType"] for m in await sandbox.messages(token, chat)] == ["USER"]


async def test_errors_before_the_stream_are_4xx_and_after_are_200(sandbox: SandboxHub) -> None:
    alice, bob = await sandbox.account(), await sandbox.account()
    chat = await sandbox.chat(alice)
    url = f"{sandbox.url}/chats/{chat}/messages"
    body = {"content": [{"type": "text", "content": "hi"}]}

    async with sandbox.http.post(url, json=body) as resp:
        assert resp.status == 401 and resp.content_type == "text/plain"
    async with sandbox.http.post(
        f"{sandbox.url}/chats/nope/messages",
        json=body,
        headers={"Authorization": f"Bearer {alice}"},
    ) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "VALIDATION_ERROR"
    async with sandbox.http.post(
        url, json={"content": "hi"}, headers={"Authorization": f"Bearer {alice}"}
    ) as resp:
        assert resp.status == 400 and "content" in (await resp.json())["errors"]
    async with sandbox.http.post(
        url,
        json={"content": [{"type": "TEXT", "content": "hi"}]},
        headers={"Authorization": f"Bearer {alice}"},
    ) as resp:
        assert resp.status == 400

    status, raw = await sandbox.send(alice, "00000000-0000-4000-8000-000000000000", "hi")
    assert status == 200 and SandboxHub.events(raw) == [("error", "chat not found")]
    status, raw = await sandbox.send(bob, chat, "hi")
    assert status == 200 and [n for n, _ in SandboxHub.events(raw)] == ["error"]
    assert await sandbox.messages(alice, chat) == []


async def test_busy_chat_rejects_a_second_message(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    async with sandbox.open_stream(token, chat, "/slow") as first:
        await _read_until_event(first, b"delta")
        # The user message is already stored while the model is still talking.
        assert [m["senderType"] for m in await sandbox.messages(token, chat)] == ["USER"]
        status, raw = await sandbox.send(token, chat, "me too")
        assert status == 200
        assert raw == b": connected\n\nevent: error\ndata: this chat is busy\n\n"
        rest = await asyncio.wait_for(first.read(), 10)
        assert b"event: done" in rest
    texts = [m["content"][0]["content"] for m in await sandbox.messages(token, chat)]
    assert "me too" not in texts and len(texts) == 2
    # Free again once the reply is done.
    status, raw = await sandbox.send(token, chat, "now?")
    assert SandboxHub.events(raw)[-1][0] == "done"


async def test_client_disconnect_stops_generation(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    async with sandbox.open_stream(token, chat, "a long and slow answer please /slow") as resp:
        await _read_until_event(resp, b"delta")
        stats = await sandbox.stats()
        assert stats["open_streams"] == 1 and stats["generations"] == 1
        resp.close()  # hang up mid-reply

    async def closed() -> bool:
        s = await sandbox.stats()
        return s["open_streams"] == 0 and s["generations"] == 0

    await sandbox.eventually(closed, what="the server to notice the disconnect")
    assert not sandbox.server.state.tasks
    # The partial reply was not stored and the chat is free again.
    assert [m["senderType"] for m in await sandbox.messages(token, chat)] == ["USER"]
    _status, raw = await sandbox.send(token, chat, "again")
    assert SandboxHub.events(raw)[-1][0] == "done"


async def test_a_reply_that_takes_too_long_ends_with_an_error(
    sandbox_factory: SandboxFactory,
) -> None:
    sandbox = await sandbox_factory(generation_timeout=0.3)
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    status, raw = await sandbox.send(token, chat, "/slow")
    assert status == 200
    assert SandboxHub.events(raw)[-1] == ("error", "model timed out after 0.3 s")
    assert not sandbox.server.state.tasks and not sandbox.server.state.busy


async def test_status_faults_with_retry_after_and_count(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    await sandbox.fault(path="GET /v1/chats", status=429, retry_after=2, count=2)
    for _ in range(2):
        status, body, resp = await sandbox.call("GET", "/chats", token=token)
        assert status == 429 and body["code"] == "HIT_LIMIT"
        assert resp.headers["Retry-After"] == "2"
    assert (await sandbox.call("GET", "/chats", token=token))[0] == 200
    # The pattern must match the whole "METHOD path": this one does not touch /chats/{id}.
    await sandbox.fault(path="GET /v1/chats", status=500)
    chat = await sandbox.chat(token)
    assert (await sandbox.call("GET", f"/chats/{chat}", token=token))[0] == 200
    status, body, _ = await sandbox.call("DELETE", "/_sandbox/faults")
    assert status == 204
    assert (await sandbox.call("GET", "/chats", token=token))[0] == 200


async def test_bare_fault_and_counted_requests(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    await sandbox.call("DELETE", "/_sandbox/stats")
    await sandbox.fault(path="GET /v1/auth/me", status=401, bare=True)
    status, _body, resp = await sandbox.call("GET", "/auth/me", token=token)
    assert status == 401 and resp.content_type == "text/plain"
    assert (await sandbox.call("GET", "/auth/me", token=token))[0] == 200
    stats = await sandbox.stats()
    assert stats["requests"] == {"GET /v1/auth/me": 2}


async def test_stall_delays_an_answer(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    await sandbox.fault(path="GET /v1/auth/me", stall=0.3)
    started = time.monotonic()
    assert (await sandbox.call("GET", "/auth/me", token=token))[0] == 200
    assert time.monotonic() - started >= 0.3


async def test_stall_delays_the_first_event_of_a_stream(sandbox_factory: SandboxFactory) -> None:
    hub = await sandbox_factory(heartbeat_interval=0.05)
    token = await hub.account()
    chat = await hub.chat(token)
    await hub.fault(path=r"POST /v1/chats/[^/]+/messages", stall=0.3)
    async with hub.open_stream(token, chat, "hello") as resp:
        started = time.monotonic()
        assert await _read_frame(resp) == b": connected\n\n"
        before_first_event = await _read_until_event(resp, b"delta")
        assert time.monotonic() - started >= 0.25
        # Heartbeats keep flowing while the "model" stalls.
        assert b": heartbeat\n\n" in before_first_event
        assert b"event: done" in await asyncio.wait_for(resp.read(), 5)


async def test_drop_after_cuts_the_connection_mid_stream(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    await sandbox.fault(path=r"POST /v1/chats/.*/messages", drop_after=2)
    received = b""
    async with sandbox.open_stream(token, chat, "one two three four five") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert received.count(b"event: delta") == 2
    assert b"event: done" not in received and b"event: error" not in received

    async def closed() -> bool:
        return (await sandbox.stats())["open_streams"] == 0

    await sandbox.eventually(closed, what="the dropped stream to close")
    assert [m["senderType"] for m in await sandbox.messages(token, chat)] == ["USER"]


async def test_drop_on_a_plain_request_resets_the_connection(sandbox: SandboxHub) -> None:
    email = await sandbox.sign_up()
    # A POST, because aiohttp's client silently retries an idempotent request once on a dropped
    # keep-alive connection, which would hide the drop.
    await sandbox.fault(path="POST /v1/auth/sign-in/email", drop_after=0)
    with pytest.raises(aiohttp.ClientError):
        await sandbox.call(
            "POST", "/auth/sign-in/email", json={"email": email, "password": PASSWORD}
        )
    await sandbox.sign_in(email)


async def test_bad_fault_is_a_validation_error(sandbox: SandboxHub) -> None:
    status, body, _ = await sandbox.call(
        "POST", "/_sandbox/faults", json={"path": "(", "status": 200, "count": 0}
    )
    assert status == 400 and set(body["errors"]) == {"path", "status", "count"}


async def test_stop_ends_open_streams(sandbox_factory: SandboxFactory) -> None:
    hub = await sandbox_factory()
    token = await hub.account()
    chat = await hub.chat(token)
    async with hub.open_stream(token, chat, "never finishing /slow") as resp:
        await _read_until_event(resp, b"delta")
        started = time.monotonic()
        await asyncio.wait_for(hub.server.stop(), 5)
        assert time.monotonic() - started < 2
        rest = await asyncio.wait_for(resp.read(), 5)
    assert rest.endswith(b"event: error\ndata: server is shutting down\n\n")
    assert not hub.server.state.tasks


async def _fake_openai(captured: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        captured.append(body)
        if body["messages"][-1]["content"] == "break":
            return web.json_response({"error": {"message": "upstream exploded"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ("Hel", "lo\nthere", "!"):
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fake-model",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_openai_responder_streams_with_character_prompt(
    sandbox_factory: SandboxFactory,
) -> None:
    captured: list[dict[str, Any]] = []
    runner, base_url = await _fake_openai(captured)
    try:
        provider = OpenAIProvider(name="fake", base_url=base_url, models=["fake-model"])
        hub = await sandbox_factory(
            providers=[provider], responder="openai", openai_provider="fake"
        )
        token = await hub.account()
        chat = await hub.chat(token)
        await hub.call("PUT", f"/chats/{chat}/config", token=token, json={"temperature": 0.3})
        status, raw = await hub.send(token, chat, "hi")
        assert status == 200
        assert b"event: delta\ndata: lo\nthere\n\n" in raw
        assert SandboxHub.events(raw)[-1] == ("done", "Hello\nthere!")
        request = captured[0]
        assert request["model"] == "fake-model" and request["stream"] is True
        assert request["temperature"] == 0.3
        assert request["messages"][0]["role"] == "system"
        assert request["messages"][0]["content"].startswith("You are Momo")
        assert request["messages"][-1] == {"role": "user", "content": "hi"}

        await hub.send(token, chat, "and again")
        roles = [m["role"] for m in captured[1]["messages"]]
        assert roles == ["system", "user", "assistant", "user"]

        status, raw = await hub.send(token, chat, "break")
        assert status == 200
        name, data = SandboxHub.events(raw)[-1]
        assert name == "error" and "upstream exploded" in data
    finally:
        await runner.cleanup()


async def test_openai_responder_needs_a_provider(sandbox_factory: SandboxFactory) -> None:
    with pytest.raises(ValueError, match="openai"):
        await sandbox_factory(responder="openai", openai_provider="missing")


async def test_run_sandbox_serves_until_stopped(unused_tcp_port: int) -> None:
    stop = asyncio.Event()
    config = SandboxConfig(port=unused_tcp_port)
    task = asyncio.create_task(run_sandbox(config, stop=stop))
    url = f"http://127.0.0.1:{unused_tcp_port}/v1/characters/public"
    try:
        async with aiohttp.ClientSession() as http:

            async def answering() -> bool:
                try:
                    async with http.get(url) as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    if task.done():
                        task.result()  # surface a startup failure instead of polling on
                    return False

            await SandboxHub.eventually(answering, what="run_sandbox to listen")
            assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
