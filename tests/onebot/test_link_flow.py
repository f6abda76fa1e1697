"""The framework link over time: relinking within reconnect_max whatever happened before, and
action calls handled concurrently, in order per user, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from adapters.onebot.framework_link import FrameworkLink
from tests.support.fake_framework import WAIT, linked
from tests.support.hub_client import eventually
from tests.support.link_helpers import text, texts

BOT = "10000"


# ----- reconnecting -------------------------------------------------------------------------------


async def test_relinked_within_reconnect_max_after_drops_and_downtime(bridge_factory, fw) -> None:
    reconnect_max = 0.5
    fw.dropping = True  # accepts, then drops every connection at once (a framework starting up)
    url = await fw.start()
    with structlog.testing.capture_logs() as logs:
        b = await bridge_factory(
            onebot={
                "frameworks": [
                    {
                        "url": url,
                        "access_token": "tok",
                        "reconnect_interval": 0.05,
                        # Left alone, doubling from 0.05 s would pass 12 s within these attempts.
                        "max_reconnect_interval": 60.0,
                        "reconnect_max": reconnect_max,
                    }
                ]
            }
        )
        target = b.app.frameworks
        link = target._links[0]
        await fw.wait_connections(6)  # six short-lived connections
        await fw.stop()  # then down for good while the bridge keeps trying
        await eventually(lambda: link.failures >= 9, what="refused redials")
        assert target.connected_count() == 0
        fw.dropping = False
        loop = asyncio.get_running_loop()
        await fw.start()  # back on the same port, for good
        started = loop.time()
        # Within reconnect_max, plus room for a loaded machine to run the handshake.
        async with asyncio.timeout(reconnect_max + 1.0):
            await target.wait_connected(1)
        took = loop.time() - started
    delays = [e["retry_in"] for e in logs if e["event"] == "onebot.link_down"]
    assert len(delays) >= 9 and max(delays) <= reconnect_max
    assert took <= reconnect_max + 1.0
    c = await b.client("1551")
    assert (await c.request("onebot", "message", text("back"), id=BOT))["code"] == 0  # and it works


async def test_a_healthy_connection_starts_the_backoff_afresh(
    bridge_factory, fw, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.onebot.framework_link.HEALTHY_AFTER", 0.0)
    b = await linked(bridge_factory, fw, reconnect_interval=0.05, max_reconnect_interval=5.0)
    link = b.app.frameworks._links[0]
    link.failures = 7  # as after a bad start
    await fw.connections[0].close()
    await fw.wait_connections(2)
    assert link.retry_in <= 0.05  # the first step again, not 0.05 * 2**7


# ----- action calls: concurrent, ordered per user, bounded -----------------------------------


class Gate:
    """Holds the storing of replies to chosen users, counting how many are held at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, messages: Any, users: set[str]) -> None:
        self.open = asyncio.Event()
        self.users = users
        self.held = 0
        self.peak = 0
        self.held_per_user: dict[str, int] = {}
        self.peak_per_user: dict[str, int] = {}
        self.order: list[str] = []
        self._changed = asyncio.Condition()
        add = messages.add

        async def gated_add(user_id: str, *args: Any, **kwargs: Any) -> Any:
            direction = args[1] if len(args) > 1 else kwargs.get("direction")
            if user_id not in self.users or direction != "out":
                return await add(user_id, *args, **kwargs)
            await self._enter(user_id)
            try:
                await self.open.wait()
                return await add(user_id, *args, **kwargs)
            finally:
                self.held -= 1
                self.held_per_user[user_id] -= 1

        monkeypatch.setattr(messages, "add", gated_add)

    async def _enter(self, user_id: str) -> None:
        async with self._changed:
            self.held += 1
            self.peak = max(self.peak, self.held)
            n = self.held_per_user.get(user_id, 0) + 1
            self.held_per_user[user_id] = n
            self.peak_per_user[user_id] = max(self.peak_per_user.get(user_id, 0), n)
            self.order.append(user_id)
            self._changed.notify_all()

    async def wait_held(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            async with self._changed:
                await self._changed.wait_for(lambda: self.held >= n)


async def test_a_slow_action_holds_up_neither_others_nor_its_order(
    bridge_factory, fw, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await linked(bridge_factory, fw)
    slow = await b.client("7001")
    other = await b.client("7002")
    gate = Gate(monkeypatch, b.app.storage.messages, {"7001"})
    for n, t in enumerate(["first", "second", "third"]):
        await fw.send("send_private_msg", {"user_id": 7001, "message": t}, echo=f"a{n}")
    await gate.wait_held(1)  # the first reply to 7001 is stuck in storage
    # Meanwhile another user's reply and a query are answered at once.
    r = await fw.call("send_private_msg", {"user_id": 7002, "message": "meanwhile"}, echo="b")
    assert r["status"] == "ok"
    assert (await fw.call("get_login_info", echo="q"))["status"] == "ok"
    assert (await other.wait_push())["data"]["content"]["message"] == text("meanwhile")
    # The later replies to 7001 wait their turn behind the first instead of overtaking it.
    assert gate.held == 1 and not any(fw.answered(f"a{n}") for n in range(3))
    gate.open.set()
    ids = [(await fw.answer(f"a{n}"))["data"]["message_id"] for n in range(3)]
    assert ids == sorted(ids)
    await slow.wait_for(lambda _: len(slow.pushes("message")) >= 3)
    assert texts(slow) == ["first", "second", "third"]
    assert gate.peak_per_user["7001"] == 1


async def test_action_calls_in_flight_are_bounded(
    bridge_factory, fw, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FrameworkLink, "max_in_flight", 4)
    b = await linked(bridge_factory, fw)
    users = [str(8001 + i) for i in range(10)]
    clients = [await b.client(u) for u in users]
    gate = Gate(monkeypatch, b.app.storage.messages, set(users))
    for u in users:
        await fw.send("send_private_msg", {"user_id": int(u), "message": f"to {u}"}, echo=u)
    await gate.wait_held(4)
    gate.open.set()
    for u in users:
        assert (await fw.answer(u))["status"] == "ok"
    for u, c in zip(users, clients, strict=True):
        await c.wait_push()
        assert texts(c) == [f"to {u}"]
    assert gate.peak == 4  # concurrent, but never more than max_in_flight at once
