"""`/broadcast` from a hub client over real sockets: it answers at once, sends in the
background (past the command timeout), answers again with the totals, and refuses a second
broadcast while one is going."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import plugins.admin as admin_plugin
from tests.conftest import ADMIN_CODE, Bridge
from tests.e2e.test_momohub import MOMO, text
from tests.e2e.test_plugins import pushed_texts
from tests.support.hub_client import HubClient

WAIT = 10.0
# More users than one batch, so the broadcast takes several rounds.
SEEDED = 120


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


class Gate:
    """Holds every broadcast write until the test opens it: the broadcast is "still going" for
    exactly as long as the test needs, with no timing involved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()
        send = admin_plugin.send_from_contact

        async def held(*args: Any, **kwargs: Any) -> int:
            self.waiting.set()
            async with asyncio.timeout(WAIT):
                await self.open.wait()
            return await send(*args, **kwargs)

        monkeypatch.setattr(admin_plugin, "send_from_contact", held)


async def answers(c: HubClient, count: int) -> list[str]:
    """The first ``count`` answers from Momo (the broadcast itself comes from the bot)."""

    def momo() -> list[str]:
        return [
            t
            for p, t in zip(c.pushes("message"), pushed_texts(c), strict=True)
            if p["data"]["id"] == MOMO
        ]

    await c.wait_for(lambda _: len(momo()) >= count, WAIT)
    return momo()[:count]


async def send(c: HubClient, line: str) -> None:
    rid = await c.send("onebot", "message", text(line), id=MOMO)
    assert (await c.reply(rid))["code"] == 0


async def test_broadcast_answers_at_once_then_with_the_totals_and_one_at_a_time(
    hub: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = hub.app.storage
    assert storage is not None and hub.app.plugins is not None
    for i in range(SEEDED):
        await storage.users.touch(f"seed-{i}", False)
    live = await hub.client("live")
    admin = await hub.client("root", ADMIN_CODE)
    users = SEEDED + 2
    gate = Gate(monkeypatch)
    await send(admin, "/broadcast Maintenance at 22:00")
    assert await answers(admin, 1) == [f"Broadcasting to {users} users…"]
    async with asyncio.timeout(WAIT):
        await gate.waiting.wait()
    # The command has been answered and its turn is over; the broadcast goes on, owned.
    assert hub.app.plugins.background == 1
    await send(admin, "/broadcast Another one")
    assert (await answers(admin, 2))[1] == (
        f"A broadcast is still going (0 of {users} users so far); send yours once it has finished."
    )
    gate.open.set()
    done = (await answers(admin, 3))[2]
    assert done == f"Broadcast sent to {users} users (2 online now, the rest at next login)."
    assert hub.app.plugins.background == 0
    bot = str(hub.config.auth.bot_qq)
    await live.wait_push(lambda f: f["data"]["id"] == bot)
    assert pushed_texts(live) == ["Maintenance at 22:00"]
    assert await storage.outbox.count("seed-7") == 1  # the offline ones: kept for their login
    # Once told, the admin may broadcast again.
    await send(admin, "/broadcast Back online")
    assert (await answers(admin, 4))[3] == f"Broadcasting to {users} users…"
    assert (await answers(admin, 5))[4].startswith(f"Broadcast sent to {users} users")


async def test_a_broadcast_going_on_at_close_is_cancelled(
    hub: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub.app.plugins is not None
    admin = await hub.client("root", ADMIN_CODE)
    gate = Gate(monkeypatch)
    await send(admin, "/broadcast Never mind")
    assert await answers(admin, 1) == ["Broadcasting to 1 user…"]
    async with asyncio.timeout(WAIT):
        await gate.waiting.wait()
    await hub.app.plugins.close()
    assert hub.app.plugins.background == 0
    assert len(admin.pushes("message")) == 1  # no totals: it never finished
