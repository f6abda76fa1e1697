"""MomoHubClient end to end against the MomoHub sandbox (real sockets, the real server's quirks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.momohub.client import MomoHubClient
from adapters.momohub.sandbox import SandboxServer
from adapters.momohub.types import (
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    StreamToolResult,
    StreamToolStart,
)
from bridge.config import MomoHubConfig, SandboxConfig

EMAIL = "bridge@example.test"
PASSWORD = "sandbox-password"
WAIT = 10.0


class Sandbox:
    def __init__(self, server: SandboxServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.url = server.base_url

    async def control(self, method: str, name: str, json: Any = None) -> Any:
        async with self.http.request(method, f"{self.url}/_sandbox/{name}", json=json) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json() if resp.status != 204 else None


@pytest.fixture
async def momo_sandbox() -> AsyncIterator[Sandbox]:
    server = SandboxServer(SandboxConfig(token_delay=0.0, fault_injection=True))
    await server.start()
    await server.ensure_account(EMAIL, PASSWORD)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
    try:
        yield Sandbox(server, http)
    finally:
        await http.close()
        await server.stop()


@pytest.fixture
async def client(momo_sandbox: Sandbox) -> AsyncIterator[MomoHubClient]:
    c = MomoHubClient(MomoHubConfig(email=EMAIL, password=PASSWORD), base_url=momo_sandbox.url)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def send(client: MomoHubClient, chat_id: str, text: str) -> list[StreamEvent]:
    async with asyncio.timeout(WAIT):
        return [
            ev async for ev in client.send_message(chat_id, [{"type": "text", "content": text}])
        ]


async def test_conversation_round_trip(client: MomoHubClient) -> None:
    public = await client.list_public_characters(page=1, limit=20)
    assert public.items
    momo = public.items[0]
    chat = await client.create_chat(momo.id, name="integration")
    assert chat.characterId == momo.id

    # Blank lines, a fake field, a comment-looking line inside a paragraph, trailing newline.
    text = "line one\n\nline three\n   indented: yes\n:) smile\n\n\ntail\n"
    events = await send(client, chat.id, text)
    deltas = "".join(e.text for e in events if isinstance(e, StreamDelta))
    done = events[-1]
    assert isinstance(done, StreamDone)
    assert deltas == done.text
    assert done.text == f"{momo.name}: you said {text}"

    messages = await client.list_messages(chat.id, page=1, limit=20)
    assert [m.senderType for m in messages] == ["USER", "CHARACTER"]
    assert messages[0].text == text
    assert messages[1].text == done.text
    latest = await client.list_latest_messages(chat.id, limit=1)
    assert [m.id for m in latest] == [messages[1].id]

    await client.delete_message(chat.id, messages[0].id)
    remaining = await client.list_messages(chat.id, page=1, limit=20)
    assert [m.id for m in remaining] == [messages[1].id]


async def test_tools_and_failures(client: MomoHubClient) -> None:
    momo = (await client.list_public_characters()).items[0]
    chat = await client.create_chat(momo.id)
    events = await send(client, chat.id, "what time is it /tool")
    tools = [e for e in events if isinstance(e, StreamToolStart)]
    assert [t.name for t in tools] == ["clock"]
    assert any(isinstance(e, StreamToolResult) for e in events)
    assert isinstance(events[-1], StreamDone)
    events = await send(client, chat.id, "please /fail")
    assert isinstance(events[-1], StreamError) and "fail" in events[-1].message


async def test_expired_tokens_are_renewed_transparently(
    momo_sandbox: Sandbox, client: MomoHubClient
) -> None:
    await momo_sandbox.control("DELETE", "stats")
    await momo_sandbox.control("POST", "expire-tokens")
    results = await asyncio.gather(*(client.list_chats() for _ in range(5)))
    assert len(results) == 5
    stats = await momo_sandbox.control("GET", "stats")
    assert stats["refreshes"] == 1
    assert stats["sign_ins"] == 0
