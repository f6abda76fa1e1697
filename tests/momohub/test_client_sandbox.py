"""MomoHubClient end to end against the MomoHub sandbox (real sockets, the real server's quirks)."""

from __future__ import annotations

import asyncio

from adapters.momohub.client import MomoHubClient
from adapters.momohub.types import (
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    StreamToolResult,
    StreamToolStart,
)
from tests.momohub.sandbox_client import WAIT, Sandbox


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
