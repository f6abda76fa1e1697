"""Storage for conversation context: a conversation's instructions (its persona), which outlive
its upstream chat, and its recent messages as `/history` reads them; on both databases."""

from __future__ import annotations

from storage import Storage
from tests.support.storage import backend_fixture, location_fixture, st_fixture  # noqa: F401 - fixtures (both databases)


def text(t: str) -> list[dict]:
    return [{"type": "text", "data": {"text": t}}]


async def test_instructions_are_per_conversation_and_outlive_its_chat(location: str) -> None:
    st = await Storage.open(location)
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
    reopened = await Storage.open(location)
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


async def test_context_pairs_each_message_with_its_reply_and_keeps_only_what_was_said(
    st: Storage,
) -> None:
    m = st.messages
    add = m.add
    one = await add("u", "c", "in", text("one"))
    two = await add("u", "c", "in", text("two"))  # sent while one's reply was generating
    r1 = await add("u", "c", "out", text("r1"), reply_to=one.id)
    await add("u", "c", "in", text("/help"), kind="command")
    await add("u", "c", "out", text("Commands"), kind="notice")
    await add("u", "c", "in", text("held"), kind="held")
    r2 = await add("u", "c", "out", text("r2"), reply_to=two.id)
    three = await add("u", "c", "in", text("three"))
    gone = await add("u", "c", "in", text("recalled"))
    await m.mark_deleted(gone.id)
    await add("u", "other", "in", text("elsewhere"))
    later = await add("u", "c", "in", text("later"))

    async def ids(**kw: int) -> list[int]:
        return [r.id for r in await m.context("u", "c", "default", **kw)]

    assert await ids(after=0, upto=three.id, turns=50) == [one.id, r1.id, two.id, r2.id, three.id]
    # Up to `two`: the reply to `one`, stored after `two`, is in; two's own is not.
    assert await ids(after=0, upto=two.id, turns=50) == [one.id, r1.id, two.id]
    # After a reset at r1: what was stored before it is out, and so are replies to it.
    assert await ids(after=r1.id, upto=three.id, turns=50) == [three.id]
    assert await ids(after=one.id, upto=three.id, turns=50) == [two.id, r2.id, three.id]
    # The newest two turns: two (and its reply), three.
    assert await ids(after=0, upto=three.id, turns=2) == [two.id, r2.id, three.id]
    # A scheduled prompt is context too (its reply answers it).
    prompt = await add("u", "c", "in", text("say hi"), kind="prompt")
    hi = await add("u", "c", "out", text("hi"), reply_to=prompt.id)
    assert await ids(after=three.id, upto=later.id + 10, turns=5) == [later.id, prompt.id, hi.id]
    assert await m.newest_id("u", "c", "default") == hi.id
    assert await m.newest_id("u", "none", "default") == 0
    # Kinds are stored and read back.
    assert [r.kind for r in await m.recent("u", "c", "default", 50)][3:6] == [
        "command",
        "notice",
        "held",
    ]
