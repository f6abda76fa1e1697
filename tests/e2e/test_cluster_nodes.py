"""Bridges as nodes of a cluster, on a real Redis and a real PostgreSQL: each lists the live
nodes in /readyz and /status, a stopped node leaves the list, and a Redis out of reach stops a
bridge from starting (its shared state would split silently)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

import plugins.admin as admin_plugin
from bridge.errors import StartupRefused
from tests.conftest import Bridge
from tests.e2e.test_health import get_json
from tests.e2e.test_model_chats import ECHO, providers
from tests.e2e.test_momohub import reply_text, send
from tests.e2e.test_qq import ALICE, impl, qq_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import eventually

WAIT = 15.0


def cluster(redis_url: str, node_id: str, **extra: Any) -> dict[str, Any]:
    return {"redis_url": redis_url, "node_id": node_id, "heartbeat": 0.2, "node_ttl": 1.0, **extra}


async def nodes_of(bridge: Bridge) -> list[dict[str, Any]]:
    _, body = await get_json(f"{bridge.http}/readyz")
    assert body["components"]["cluster"]["state"] == "ok", body
    return body["nodes"]


# The database and Redis come first, so they go last: the bridges stop before them.


async def test_nodes_are_listed_and_a_stopped_one_leaves(
    postgres_dsn: str, redis_url: str, bridge_factory
) -> None:
    a = await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-b"))
    listed = await nodes_of(a)
    assert [n["node_id"] for n in listed] == ["node-a", "node-b"]
    me = next(n for n in listed if n.get("self"))
    assert me["node_id"] == "node-a" and me["port"] == a.app.port
    assert [n["node_id"] for n in await nodes_of(b) if n.get("self")] == ["node-b"]
    status = await admin_plugin.status_lines(a.app, time.time())
    assert "Cluster: ok (2 nodes (node-a, node-b); this one is node-a)" in status, status
    await b.app.stop()
    # Stopping unregisters at once: the list follows without waiting for the ttl.
    assert [n["node_id"] for n in await nodes_of(a)] == ["node-a"]


async def test_a_cluster_without_redis_does_not_start(postgres_dsn: str, bridge_factory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now.
    with pytest.raises(StartupRefused, match="cannot join the cluster"):
        await bridge_factory(
            storage={"url": postgres_dsn},
            cluster=cluster(f"redis://127.0.0.1:{port}/0", "lonely"),
        )


# ----- pushes reach the user's connections on every node ---------------------------------------


async def test_a_reply_on_one_node_reaches_the_user_s_tab_on_another(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": providers(upstream),
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    tab_a = await a.client("ann")
    tab_b = await b.client("ann")
    ack, frames = await send(tab_a, ECHO, "hello from a")
    assert reply_text(frames) == "You said: hello from a"
    rid = ack["request_id"]
    # The reply's push, made on node A, reaches the tab on node B (and the tab on A).
    pushed = await tab_b.wait_push(
        lambda f: f["data"]["content"].get("stream_request_id") == rid, timeout=10
    )
    assert pushed["data"]["content"]["message"][0]["data"]["text"] == "You said: hello from a"
    await tab_a.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == rid)
    # Someone else's tab on B gets nothing of it.
    other = await b.client("bob")
    await send(tab_a, ECHO, "again")
    await tab_b.wait_push(lambda f: "again" in str(f["data"]["content"]["message"]))
    assert not other.pushes("message")


async def test_a_tab_that_logs_in_later_on_another_node_gets_what_it_missed(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {"storage": {"url": postgres_dsn}, "openai": providers(upstream)}
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    tab_a = await a.client("cid")
    ack, _ = await send(tab_a, ECHO, "while b was away")
    rid = ack["request_id"]
    await tab_a.close()  # nobody confirmed the push: it waits in the shared outbox
    tab_b = await b.client("cid")
    replayed = await tab_b.wait_push(
        lambda f: f["data"]["content"].get("stream_request_id") == rid, timeout=10
    )
    assert "while b was away" in str(replayed["data"]["content"]["message"])


# ----- a QQ event replayed to another node is dropped ---------------------------------------------


async def test_a_qq_event_replayed_to_another_node_is_answered_once(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": providers(upstream),
        "onebot": qq_settings(default_target=ECHO),
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    on_a = await impl(a)
    event = await on_a.private(ALICE, "only once")
    await on_a.wait_sent(1)
    assert on_a.texts() == ["You said: only once"]
    await on_a.close()
    # The implementation reconnects to node B and posts the same event again (as one does after
    # a reconnect), then a new one.
    on_b = await impl(b, first_id=event["message_id"] + 1)
    try:
        await on_b.send_event(event)
        await on_b.private(ALICE, "a new one")
        await on_b.wait_sent(1)
        assert on_b.texts() == ["You said: a new one"]
        # The model was asked about it once (later requests carry it as history only).
        newest = [r["messages"][-1]["content"] for r in upstream.requests]
        assert newest.count("only once") == 1, newest
    finally:
        await on_b.close()


async def test_a_qq_recall_waits_for_the_claim_of_the_message_it_recalls(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    """In a cluster a message event is claimed in Redis before it is taken; its recall, arriving
    meanwhile, is handled after the claim (not before, when the bridge does not know the
    message yet and would let it be answered)."""
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": providers(upstream),
        "onebot": qq_settings(default_target=ECHO, recall_follows=True),
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    edge = a.app.qq
    claimed, release = [], asyncio.Event()
    once = edge.dedupe

    async def slow_claim(key: str, ttl: float) -> bool:
        claimed.append(key)
        await release.wait()  # Redis slow to answer this one
        return await once(key, ttl)

    edge.dedupe = slow_claim
    sim = await impl(a)
    try:
        event = await sim.private(ALICE, "recall me")
        await eventually(lambda: claimed, what="the event's claim under way")
        await sim.friend_recall(ALICE, event["message_id"])
        # The recall waits behind the claim, on the account's chain.
        await eventually(lambda: len(edge._claims) == 2, what="the recall queued behind it")
        edge.dedupe = once
        release.set()
        await sim.private(ALICE, "next")
        await sim.wait_for(
            lambda: "You said: next" in sim.texts(), WAIT, "the next message answered"
        )
        # The recalled message was never answered, or its answer was recalled after it.
        answered = [s for s in sim.sent if s.text == "You said: recall me"]
        assert all(sim.message(s.message_id) is None for s in answered), answered
    finally:
        await sim.close()
