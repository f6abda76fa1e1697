"""Storage for conversation context: a conversation's instructions (its persona), which outlive
its upstream chat, and its recent messages as `/history` reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import Storage


@pytest.fixture
async def st(tmp_path: Path) -> AsyncIterator[Storage]:
    s = await Storage.open(str(tmp_path / "test.db"))
    yield s
    await s.close()


def text(t: str) -> list[dict]:
    return [{"type": "text", "data": {"text": t}}]


async def test_instructions_are_per_conversation_and_outlive_its_chat(tmp_path: Path) -> None:
    st = await Storage.open(str(tmp_path / "test.db"))
    try:
        conv = st.conversations
        assert await conv.instructions("u", "c", "default") is None
        await conv.set("u", "c", "default", "chat-1")
        await conv.set_instructions("u", "c", "default", "Talk like a pirate.")
        await conv.set_instructions("u", "c", "work", "Be formal.")
        assert await conv.instructions("u", "c", "default") == "Talk like a pirate."
        assert await conv.instructions("u", "c", "work") == "Be formal."
        assert await conv.instructions("v", "c", "default") is None
        assert await conv.instructions("u", "other", "default") is None
        await conv.set_instructions("u", "c", "default", "Talk like a cat.")  # replaces
        # Forgetting the chat (a reset) keeps them; so does reopening the database.
        await conv.forget("u", "c", "default")
        assert await conv.get("u", "c", "default") is None
    finally:
        await st.close()
    reopened = await Storage.open(str(tmp_path / "test.db"))
    try:
        conv = reopened.conversations
        assert await conv.instructions("u", "c", "default") == "Talk like a cat."
        await conv.set_instructions("u", "c", "default", None)
        assert await conv.instructions("u", "c", "default") is None
        await conv.set_instructions("u", "c", "default", None)  # clearing twice is fine
        assert await conv.instructions("u", "c", "work") == "Be formal."
        # Not counted against the conversation limit: they are not chats.
        assert await conv.count("u") == 0
    finally:
        await reopened.close()


async def test_recent_messages_newest_n_oldest_first_without_deleted(st: Storage) -> None:
    msgs = st.messages
    ids = []
    for i in range(6):
        row = await msgs.add("u", "c", "in" if i % 2 == 0 else "out", text(f"m{i}"))
        ids.append(row.id)
    await msgs.add("u", "c", "in", text("other thread"), thread="work")
    await msgs.add("u", "d", "in", text("other contact"))
    await msgs.add("v", "c", "in", text("other user"))
    await msgs.mark_deleted(ids[4])
    recent = await msgs.recent("u", "c", "default", 3)
    assert [r.content[0]["data"]["text"] for r in recent] == ["m2", "m3", "m5"]
    assert [r.direction for r in recent] == ["in", "out", "out"]
    everything = await msgs.recent("u", "c", "default", 100)
    assert [r.id for r in everything] == [ids[0], ids[1], ids[2], ids[3], ids[5]]
    assert [r.content[0]["data"]["text"] for r in await msgs.recent("u", "c", "work", 5)] == [
        "other thread"
    ]
    assert await msgs.recent("u", "c", "default", 0) == []
    assert await msgs.recent("nobody", "c", "default", 5) == []
