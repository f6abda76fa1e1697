"""A new user's first message, sent from two tabs at the same moment, works in both (the defect:
one of them got INTERNAL: IntegrityError) — to a bot framework contact and to a character."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.fake_framework import FakeFramework
from tests.support.hub_client import WAIT, HubClient

BOT = "10000"
MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
# Numeric ids keep their number; the others get a mapped one: both paths allocate on first use.
USERS = ["40001", "40002", "40003", "zoe", "yan", "xi_x", "0404", "w-1"]


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


@pytest.fixture
async def fw() -> AsyncIterator[FakeFramework]:
    f = FakeFramework()
    yield f
    await f.stop()


@pytest.fixture
async def bridge(bridge_factory, fw: FakeFramework) -> Bridge:
    url = await fw.start()
    b = await bridge_factory(
        momohub={"enabled": True},
        onebot={"frameworks": [{"url": url, "reconnect_interval": 0.05}]},
    )
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(1)
    await fw.wait_connections(1)
    return b


async def two_tabs(bridge: Bridge, user: str) -> tuple[HubClient, HubClient]:
    tabs = await asyncio.gather(bridge.client(), bridge.client())
    await asyncio.gather(*(t.login(user) for t in tabs))
    return tabs[0], tabs[1]


async def at_once(tabs: tuple[HubClient, HubClient], contact: str) -> list[dict[str, Any]]:
    """Both tabs send their first message without waiting; both answers."""
    rids = await asyncio.gather(
        *(
            t.send("onebot", "message", text(f"first from tab {i}"), id=contact)
            for i, t in enumerate(tabs)
        )
    )
    return list(await asyncio.gather(*(t.reply(r) for t, r in zip(tabs, rids, strict=True))))


async def test_two_tabs_first_message_to_the_framework(bridge: Bridge, fw: FakeFramework) -> None:
    tabs = await asyncio.gather(*(two_tabs(bridge, u) for u in USERS))
    acks = await asyncio.gather(*(at_once(t, BOT) for t in tabs))
    for user, pair in zip(USERS, acks, strict=True):
        for ack in pair:
            assert ack["code"] == 0, (user, ack)
    await fw.wait(lambda f: len([e for e in fw.frames if e.get("post_type") == "message"]) >= 16)
    events = [e for e in fw.frames if e.get("post_type") == "message"]
    assert len(events) == 2 * len(USERS)
    # Each user has one number, the same in both of their events, and no two users share one.
    numbers: dict[str, set[int]] = {}
    for user, pair in zip(USERS, acks, strict=True):
        mids = {a["data"]["message_id"] for a in pair}
        numbers[user] = {e["user_id"] for e in events if e["message_id"] in mids}
    assert all(len(n) == 1 for n in numbers.values()), numbers
    assert len({n for ns in numbers.values() for n in ns}) == len(USERS)
    assert next(iter(numbers["40001"])) == 40001
    # The framework can answer each of them, and both tabs get the reply.
    for user, (t1, t2) in zip(USERS, tabs, strict=True):
        number = next(iter(numbers[user]))
        r = await fw.call(
            "send_private_msg", {"user_id": number, "message": f"hi {user}"}, echo=user
        )
        assert r["status"] == "ok", r
        for t in (t1, t2):
            await t.wait_push(lambda f, u=user: f["data"]["content"]["message"] == text(f"hi {u}"))


async def test_two_tabs_first_message_to_a_character(bridge: Bridge) -> None:
    users = USERS[:4]
    tabs = await asyncio.gather(*(two_tabs(bridge, u) for u in users))
    acks = await asyncio.gather(*(at_once(t, MOMO) for t in tabs))
    for user, pair in zip(users, acks, strict=True):
        for ack in pair:
            assert ack["code"] == 0, (user, ack)
    for (t1, t2), pair in zip(tabs, acks, strict=True):
        for t, ack in zip((t1, t2), pair, strict=True):
            frames = await t.stream(ack["request_id"], timeout=30)
            assert frames[-1]["message"] == "completed", frames[-1]
    for user in users:
        chat = await bridge.app.storage.conversations.get(user, MOMO, "default")
        assert chat is not None
        msgs = await bridge.app.momohub.list_messages(chat, page=1, limit=50)
        said = sorted(m.text for m in msgs if m.senderType == "USER")
        assert said == ["first from tab 0", "first from tab 1"], (user, said)
        async with bridge.app.storage.db.conn.execute(
            "SELECT COUNT(*) FROM conversations WHERE user_id = ?", (user,)
        ) as cur:
            assert (await cur.fetchone())[0] == 1  # one chat, not one per tab
