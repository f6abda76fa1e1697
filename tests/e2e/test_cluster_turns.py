"""A conversation across nodes, on a real Redis and PostgreSQL: its turns run in order whichever
node received them, a node that starts leaves the other nodes' running replies alone, what a
gone node left running is settled by a survivor, and a node whose bus reconnected catches up on
the pushes it missed."""

from __future__ import annotations

from typing import Any

from bridge.models import ConversationKey
from storage.client_replies import StoredReply
from tests.conftest import Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_model_chats import ECHO, providers
from tests.e2e.test_momohub import reply_text, text
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient, eventually

GATED = "model:fake/gated"
WAIT = 15.0


async def accepted(tab: HubClient, contact: str, words: str) -> str:
    """Sends a message; returns its request id once the bridge stored it (its turn queued)."""
    rid = await tab.send("onebot", "message", text(words), id=contact)
    ack = await tab.reply(rid)
    assert ack["code"] == 0, ack
    return rid


def pushed_texts(tab: HubClient) -> list[str]:
    return [str(f["data"]["content"].get("message")) for f in tab.pushes("message")]


async def two_nodes(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory: Any
) -> tuple[Bridge, Bridge]:
    shared = {"storage": {"url": postgres_dsn}, "openai": providers(upstream)}
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    return a, b


# The database and Redis come first, so they go last: the bridges stop before them.


async def test_turns_sent_through_two_nodes_reach_the_model_in_order_one_at_a_time(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    tab_a = await a.client("ann")
    tab_b = await b.client("ann")
    first = await accepted(tab_a, GATED, "first")
    await upstream.wait_open_streams(1, WAIT)
    second = await accepted(tab_b, GATED, "second")
    # Node B has the second turn and has taken its place behind the first, on node A.
    engine_b = b.app.sessions.engine
    owner = next(iter(engine_b._owners.values()))
    number, ready = await owner.running.ticket.number
    assert not ready and number >= 2
    assert [r["messages"][-1]["content"] for r in upstream.requests] == ["first"]
    upstream.gate.set()
    await tab_b.stream(second)
    await tab_a.stream(first)
    assert [r["messages"][-1]["content"] for r in upstream.requests][-2:] == ["first", "second"]
    # The model saw the first exchange before the second message (one conversation).
    said = [m["content"] for m in upstream.requests[-1]["messages"]]
    assert said.index("first") < said.index("second")


async def test_a_node_starting_leaves_another_node_s_running_reply_alone(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {"storage": {"url": postgres_dsn}, "openai": providers(upstream)}
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    tab = await a.client("bea")
    rid = await accepted(tab, GATED, "long one")
    await upstream.wait_open_streams(1, WAIT)
    rows = await a.app.storage.inflight.all()
    assert [r.node for r in rows] == [a.app.cluster.identity]
    assert a.app.cluster.identity.startswith("node-a#")
    # A node joining now settles what gone nodes left, and node A is alive.
    c = await bridge_factory(**shared, cluster=cluster(redis_url, "node-c"))
    assert await c.app.cluster.departures.settle_now() == 0
    upstream.gate.set()
    frames = await tab.stream(rid)
    assert reply_text(frames) == "first part, then the rest"
    await tab.wait_push(lambda f: "then the rest" in str(f["data"]["content"]["message"]))
    assert not any("interrupted" in t for t in pushed_texts(tab))


async def test_what_a_gone_node_left_running_is_settled_by_a_survivor(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    storage = a.app.storage
    # What a node that died mid-reply leaves behind: a message with its reply in flight, and a
    # web-client reply still streaming, both recorded as that node's.
    storage.set_node("node-dead")
    try:
        row = await storage.messages.add("cat", "model:fake/echo", "in", [], inflight=True)
        await storage.client_replies.save(
            StoredReply("cat", "m-1", "c-1", "streaming", [], None, {}, 0.0), 100
        )
    finally:
        storage.set_node(a.app.cluster.identity)
    tab = await b.client("cat")
    settled = await a.app.cluster.departures.settle_now() + (
        await b.app.cluster.departures.settle_now()
    )
    assert settled == 1  # one survivor settles it, the other finds it claimed
    notice = await tab.wait_push(lambda f: "interrupted" in str(f["data"]["content"]["message"]))
    assert notice["data"]["content"]["message"][0]["data"]["text"].startswith(
        "The reply to this message was interrupted"
    )

    async def nothing_in_flight() -> bool:
        return not await storage.inflight.all()

    await eventually(nothing_in_flight, WAIT, "the settled reply no longer in flight")
    [failed] = await storage.client_replies.of_contactor("cat", "c-1")
    assert failed.status == "failed"
    assert "node running this reply stopped" in failed.error["message"]
    assert row.id > 0


async def test_a_node_whose_bus_reconnected_catches_up_on_missed_pushes(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    import redis.asyncio as aioredis

    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    tab_b = await b.client("dan")

    # A push node A stores and node B never hears of (as if its bus were down when it was
    # announced). No tab of the user on A: nobody confirms it there meanwhile (a confirmation
    # anywhere deletes it, as on one node).
    async def unheard(user_id: str, push: Any) -> None:
        return None

    fanout, a.app.outbox.fanout = a.app.outbox.fanout, unheard
    try:
        await a.app.sessions.say(ConversationKey("dan", ECHO, "default"), "while b was deaf")
    finally:
        a.app.outbox.fanout = fanout
    assert not any("while b was deaf" in t for t in pushed_texts(tab_b))
    # Node B's bus connection drops; once it is back, B looks for what it missed.
    admin = aioredis.Redis.from_url(redis_url)
    try:
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == "node-b" and int(c.get("sub", 0))]
        assert ids, clients
        for cid in ids:
            await admin.client_kill_filter(_id=cid)
    finally:
        await admin.aclose()
    bus = b.app.cluster.bus
    await eventually(lambda: bus.connections > 1, WAIT, "node B's bus connected again")
    pushed = await tab_b.wait_push(
        lambda f: "while b was deaf" in str(f["data"]["content"]), timeout=WAIT
    )
    assert pushed["data"]["content"]["message"][0]["data"]["text"] == "while b was deaf"
