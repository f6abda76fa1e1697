"""Bot-framework links in a cluster, on a real Redis and a real PostgreSQL: each link is dialed by
exactly one node at a time, a standby takes it over when the holder stops or dies, a holder that
loses its lease hangs up, and a hub message to the bot reaching a standby is relayed to the
holder (the framework's reply reaches the user wherever they are connected)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.onebot.framework_target import FrameworkTarget
from adapters.onebot.link_owner import lease_name
from tests.conftest import Bridge
from tests.e2e.test_health import get_json
from tests.support.fake_framework import FakeFramework
from tests.support.frameworks import FrameworkProcess
from tests.support.hub_client import HubClient, eventually

BOT = "10000"
TOKEN = "fw-token"
PREFIX = "momobridge:"  # [cluster] prefix's default
# Generous: a takeover needs a try interval (or a lease expiry) plus a dial, on a loaded machine.
WAIT = 30.0


def text(t: str) -> list[dict]:
    return [{"type": "text", "data": {"text": t}}]


def node(redis_url: str, node_id: str) -> dict[str, Any]:
    return {"redis_url": redis_url, "node_id": node_id, "heartbeat": 0.2, "node_ttl": 1.0}


def framework(url: str, token: str = "") -> dict[str, Any]:
    return {
        "frameworks": [
            {
                "url": url,
                "access_token": token,
                "reconnect_interval": 0.05,
                "max_reconnect_interval": 0.2,
                "heartbeat_interval": 0.2,
            }
        ]
    }


def target(b: Bridge) -> FrameworkTarget:
    assert b.app.frameworks is not None
    return b.app.frameworks


def owner_of(b: Bridge):
    t = target(b)
    assert t.cluster is not None
    return t.cluster.owner(t.links[0])


async def two_nodes(
    bridge_factory, postgres_dsn: str, redis_url: str, onebot: dict[str, Any]
) -> tuple[Bridge, Bridge]:
    bridges = []
    for name in ("node-a", "node-b"):
        bridges.append(
            await bridge_factory(
                storage={"url": postgres_dsn}, cluster=node(redis_url, name), onebot=onebot
            )
        )
    return bridges[0], bridges[1]


async def holder_and_standby(a: Bridge, b: Bridge) -> tuple[Bridge, Bridge]:
    """Once one node's link is up and the other has seen it held (its try came back busy)."""

    def settled() -> bool:
        up = [x for x in (a, b) if target(x).connected_count()]
        return len(up) == 1 and owner_of(a if up[0] is b else b).holder == up[0].app.cluster.node_id

    await eventually(settled, timeout=WAIT, what="one node to link and the other to see it")
    return (a, b) if target(a).connected_count() else (b, a)


async def component(b: Bridge, name: str) -> dict[str, Any]:
    _, body = await get_json(f"{b.http}/readyz")
    return body["components"][f"framework:{name}"]


async def say(c: HubClient, t: str) -> dict[str, Any]:
    f = await c.request("onebot", "message", text(t), id=BOT)
    assert f["code"] == 0, f
    return f


@pytest.fixture
async def fw() -> AsyncIterator[FakeFramework]:
    f = FakeFramework()
    yield f
    await f.stop()


@pytest.fixture
async def nonebot(tmp_path: Path) -> AsyncIterator[FrameworkProcess]:
    proc = FrameworkProcess("nonebot_bot.py", "/onebot/v11/ws", TOKEN, tmp_path / "nonebot")
    await proc.start()
    yield proc
    await proc.stop()


# Redis and the database come first, so they go last: the bridges stop before them.


async def test_one_node_dials_and_the_other_takes_over_when_it_stops(
    redis_url: str, postgres_dsn: str, fw: FakeFramework, bridge_factory
) -> None:
    url = await fw.start()
    a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(url))
    holder, standby = await holder_and_standby(a, b)
    assert len(fw.connections) == 1 and fw.max_concurrent == 1
    name = target(holder).links[0].name
    held_by = holder.app.cluster.node_id
    # A standby is healthy, and says where the link is.
    assert (await component(holder, name))["state"] == "ok"
    state = await component(standby, name)
    assert state["state"] == "ok" and state["detail"] == f"linked on node {held_by}", state

    # A message to the bot on the standby goes out on the holder's link ...
    c = await standby.client("20001")
    ack = await say(c, "via the standby")
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    assert ev["user_id"] == 20001 and ev["message_id"] == ack["data"]["message_id"]
    assert ev["self_id"] == int(BOT) and ev["raw_message"] == "via the standby"
    # ... and the framework's answer on that link reaches the user's tab on the standby.
    answer = await fw.call("send_private_msg", {"user_id": 20001, "message": "hi back"}, echo=1)
    assert answer["status"] == "ok", answer
    push = await c.wait_push(lambda f: f["data"]["id"] == BOT, timeout=WAIT)
    assert push["data"]["content"]["message"] == text("hi back")

    await holder.app.stop()
    await fw.wait_closed(1)
    # Released on stop: the standby links within about a try interval.
    async with asyncio.timeout(WAIT):
        await target(standby).wait_connected(1)
    await fw.wait_connections(2)
    assert fw.max_concurrent == 1, "two nodes dialed the framework at once"
    state = await component(standby, name)
    assert state["state"] == "ok" and state["detail"] == "", state

    await say(c, "after the takeover")
    ev = await fw.wait(
        lambda f: f.get("post_type") == "message" and f["raw_message"] == "after the takeover"
    )
    assert ev["user_id"] == 20001
    await fw.call("send_private_msg", {"user_id": 20001, "message": "still here"}, echo=2)
    await c.wait_push(lambda f: f["data"]["content"]["message"] == text("still here"))


async def test_a_burst_on_the_standby_reaches_the_framework_in_order(
    redis_url: str, postgres_dsn: str, fw: FakeFramework, bridge_factory
) -> None:
    url = await fw.start()
    a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(url))
    _, standby = await holder_and_standby(a, b)
    c = await standby.client("20004")
    # Sent without waiting for each other's acks: each is relayed to the holder once it is
    # this conversation's turn, and goes out on the link in that order.
    sent = [f"burst {i}" for i in range(20)]
    rids = [await c.send("onebot", "message", text(t), id=BOT) for t in sent]
    for rid in rids:
        f = await c.reply(rid, timeout=WAIT)
        assert f["code"] == 0, f
    await fw.wait(lambda f: f.get("raw_message") == sent[-1])
    got = [f["raw_message"] for f in fw.frames if f.get("post_type") == "message"]
    assert got == sent


async def test_a_send_failing_on_the_holder_is_reported_on_the_standby(
    redis_url: str, postgres_dsn: str, fw: FakeFramework, bridge_factory
) -> None:
    url = await fw.start()
    a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(url))
    holder, standby = await holder_and_standby(a, b)
    held_by = holder.app.cluster.node_id
    # The framework drops the holder's link and every redial: the holder keeps the lease, but
    # has no link to send on.
    fw.dropping = True
    await fw.connections[0].close()
    await eventually(lambda: not target(holder).connected_count(), what="the link to drop")
    c = await standby.client("20005")
    f = await c.request("onebot", "message", text("lost?"), id=BOT)
    assert f["code"] == 1 and f["data"]["error"] == "UNAVAILABLE", f
    assert f"did not get the message (linked on node {held_by}: " in f["data"]["reason"], f
    assert not [x for x in fw.frames if x.get("raw_message") == "lost?"]


async def test_a_lease_lost_behind_the_holder_s_back_stops_its_link(
    redis_url: str, postgres_dsn: str, fw: FakeFramework, bridge_factory
) -> None:
    url = await fw.start()
    a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(url))
    holder, _ = await holder_and_standby(a, b)
    key = f"{PREFIX}lease:{lease_name(target(holder).links[0])}"
    r = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        assert await r.delete(key) == 1
    finally:
        await r.aclose()
    # The holder's next renewal is refused: it hangs up (the framework sees the close) ...
    await fw.wait_closed(1)
    assert fw.close_codes[0] == 1001
    # ... and one node, whichever gets the lease first, links again.
    await fw.wait_connections(2)
    await eventually(
        lambda: target(a).connected_count() + target(b).connected_count() == 1,
        timeout=WAIT,
        what="exactly one node linked",
    )
    assert owner_of(a).holding != owner_of(b).holding


async def test_a_dead_holder_s_link_is_taken_over_when_its_lease_expires(
    redis_url: str, postgres_dsn: str, fw: FakeFramework, bridge_factory
) -> None:
    """A node killed outright releases nothing: its lease runs out, then a standby links."""
    url = await fw.start()
    r = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        # The dead node's lease, without expiry until the test lets it run out. The name is the
        # link's: the URL without credentials, and the bot's number.
        key = f"{PREFIX}lease:framework:{url}:{BOT}"
        assert await r.set(key, "ghost:1", nx=True)
        a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(url))
        name = target(a).links[0].name
        for x in (a, b):
            await eventually(lambda x=x: owner_of(x).holder == "ghost", what="a look at the lease")
            state = await component(x, name)
            assert state["state"] == "ok" and state["detail"] == "linked on node ghost", state
        # Both stand by, and a message to the bot says where the link is and that it is stuck.
        c = await a.client("20002")
        f = await c.request("onebot", "message", text("anyone?"), id=BOT)
        assert f["code"] == 1 and f["data"]["error"] == "UNAVAILABLE", f
        assert "linked on node ghost, which does not answer" in f["data"]["reason"], f
        assert not fw.connections
        assert await r.pexpire(key, 100)  # the dead node's lease runs out
    finally:
        await r.aclose()
    await fw.wait_connections(1)
    await eventually(
        lambda: target(a).connected_count() + target(b).connected_count() == 1,
        timeout=WAIT,
        what="a node to take the expired lease",
    )
    assert fw.max_concurrent == 1
    await say(c, "someone now")
    await fw.wait(lambda f: f.get("raw_message") == "someone now")


async def test_nonebot_answers_a_user_on_either_node(
    redis_url: str, postgres_dsn: str, nonebot: FrameworkProcess, bridge_factory
) -> None:
    a, b = await two_nodes(bridge_factory, postgres_dsn, redis_url, framework(nonebot.url, TOKEN))
    holder, standby = await holder_and_standby(a, b)
    on_standby = await standby.client("20003")
    on_holder = await holder.client("20003")
    await say(on_standby, "from the standby")
    push = await on_standby.wait_push(
        lambda f: f["data"]["content"]["message"] == text("echo: from the standby"), timeout=WAIT
    )
    assert push["data"]["id"] == BOT
    # The user's tab on the holder has it too.
    await on_holder.wait_push(
        lambda f: f["data"]["content"]["message"] == text("echo: from the standby"), timeout=WAIT
    )
    await holder.app.stop()
    async with asyncio.timeout(WAIT):
        await target(standby).wait_connected(1)
    await say(on_standby, "after the takeover")
    await on_standby.wait_push(
        lambda f: f["data"]["content"]["message"] == text("echo: after the takeover"),
        timeout=WAIT,
    )
