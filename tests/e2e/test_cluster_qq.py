"""A QQ account connected to one node of a cluster, used from another (real Redis and
PostgreSQL, a NapCat-like implementation, a real OpenAI-compatible server): the account's actions
called on node A run on its connection on node B, once; where it is connected is listed in Redis
while it is connected and not after (it disconnects, its node stops or dies)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from adapters.onebot.qq_link import ActionFailed
from bridge.errors import BridgeError, ErrorCode
from tests.conftest import Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_model_chats import ECHO, providers
from tests.e2e.test_qq import ALICE, BOT, GROUP, impl, qq_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import eventually

WAIT = 20.0
TTL = 1.0  # the node_ttl of tests.e2e.test_cluster_nodes.cluster


async def two_nodes(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory: Any
) -> tuple[Bridge, Bridge]:
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": providers(upstream),
        "onebot": qq_settings(default_target=ECHO),
        "plugins": {"schedule": {"min_interval": 0.5}},
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    return a, b


async def holder(bridge: Bridge) -> str | None:
    """The node Redis names for BOT (read through this bridge's own client)."""
    assert bridge.app.qq is not None and bridge.app.qq.cluster is not None
    return await bridge.app.qq.cluster.where(BOT)


def group_message(text: str) -> dict[str, Any]:
    return {"group_id": GROUP, "message": [{"type": "text", "data": {"text": text}}]}


async def test_an_action_called_on_node_a_runs_once_on_the_account_on_node_b(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    assert a.app.qq is not None and b.app.qq is not None
    sim = await impl(b)
    try:
        await eventually(lambda: _is(holder(a), "node-b"), WAIT, "the account listed on node-b")
        assert BOT not in a.app.qq.link.accounts  # A has no connection of its own
        data = await a.app.qq.call(BOT, "send_group_msg", group_message("from node A"))
        # The implementation's own answer comes back to A.
        await sim.wait_sent(1)
        assert data == {"message_id": sim.sent[0].message_id}
        assert sim.texts(("group", GROUP)) == ["from node A"]
        assert len(sim.calls_of("send_group_msg")) == 1
        # A failure keeps its retcode and the implementation's words.
        sim.refuse("send_group_msg", retcode=1200, message="muted in this group")
        with pytest.raises(ActionFailed) as refused:
            await a.app.qq.call(BOT, "send_group_msg", group_message("refused"))
        assert refused.value.retcode == 1200 and "muted in this group" in refused.value.reason
        # A query routed the same way: the message A sent, read back from A.
        message = await a.app.qq.call(BOT, "get_msg", {"message_id": sim.sent[0].message_id})
        assert message["message_id"] == sim.sent[0].message_id
        assert len(sim.calls_of("send_group_msg")) == 2
        assert sim.texts() == ["from node A"]
    finally:
        await sim.close()


async def test_a_schedule_fired_on_node_a_reaches_the_group_through_node_b_once(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    sim = await impl(b)
    try:
        await sim.group(GROUP, ALICE, "/schedule add every 1h tick", card="Alice")
        await sim.wait_sent(1)
        assert sim.texts()[0].startswith("Schedule #1 added"), sim.texts()
        schedules = a.app.plugins.api("schedule")  # type: ignore[union-attr]
        await eventually(lambda: 1 in schedules.entries, WAIT, "node A knows the schedule")
        # It fires on node A, which has no connection of the account.
        await schedules.runner(1)()
        await sim.wait_sent(2)
        owner = f"qq:{BOT}:g{GROUP}"
        assert b.app.outbox is not None

        async def delivered() -> bool:
            return await b.app.outbox.pending_count(owner) == 0  # type: ignore[union-attr]

        await eventually(delivered, WAIT, "the scheduled reply confirmed by node B")
        assert sim.texts(("group", GROUP))[1:] == ["You said: tick"]
    finally:
        await sim.close()


async def test_an_account_that_disconnects_is_unlisted_and_calls_fail_at_once(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    assert a.app.qq is not None
    sim = await impl(b)
    await eventually(lambda: _is(holder(a), "node-b"), WAIT, "the account listed on node-b")
    await sim.close()
    await eventually(lambda: _is(holder(a), None), WAIT, "the account unlisted")
    began = time.monotonic()
    with pytest.raises(BridgeError) as gone:
        await a.app.qq.call(BOT, "send_group_msg", group_message("nobody there"))
    assert gone.value.code == ErrorCode.UNAVAILABLE
    assert gone.value.reason == f"QQ account {BOT} is not connected"
    assert time.monotonic() - began < 5.0
    # It comes back on node A: listed there, and node B's calls now go to A.
    sim = await impl(a, first_id=1000)
    try:
        await eventually(lambda: _is(holder(b), "node-a"), WAIT, "the account listed on node-a")
        assert b.app.qq is not None
        await b.app.qq.call(BOT, "send_group_msg", group_message("from node B"))
        assert sim.texts() == ["from node B"]
    finally:
        await sim.close()


async def test_the_account_is_unlisted_when_its_node_stops_or_dies(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    assert a.app.qq is not None and b.app.qq is not None and b.app.qq.cluster is not None
    sim = await impl(b)
    try:
        await eventually(lambda: _is(holder(a), "node-b"), WAIT, "the account listed on node-b")
        # Node B "dies": nothing renews its entry any more (the connection itself is still up).
        await b.app.qq.cluster._tasks.cancel_all()
        assert a.app.cluster is not None
        left = await a.app.cluster.redis.pttl(b.app.qq.cluster.key(BOT))
        assert 0 < left <= TTL * 1000
        await eventually(lambda: _is(holder(a), None), WAIT, "the entry expired")
        with pytest.raises(BridgeError, match="not connected"):
            await a.app.qq.call(BOT, "send_group_msg", group_message("nobody there"))
    finally:
        await sim.close()
    # A node that stops unlists its accounts at once.
    sim = await impl(a, first_id=1000)
    await eventually(lambda: _is(holder(b), "node-a"), WAIT, "the account listed on node-a")
    await a.app.stop()
    assert await holder(b) is None
    await sim.wait_closed()


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected
