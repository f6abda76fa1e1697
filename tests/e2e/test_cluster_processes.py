"""A cluster of three real bridge processes (`momobridge serve`, tests/support/cluster_procs.py)
on one PostgreSQL database and one Redis, driven over loopback sockets: a reply one node runs
reaches the user's tabs on the others; a bot-framework link, the schedules and a MomoHub sign-in
each live on exactly one node and move when that node is SIGKILLed; a reply cut short by the
death of its node ends as an explicit failure on a survivor.

The upstreams (an OpenAI-compatible server, a MomoHub sandbox, a bot framework) run in this test
process; the bridges are other processes, so everything here waits on sockets, logs, Redis and
the database, never on a bridge's insides.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge.cluster import connect
from bridge.recovery import REPLY_CUT
from tests.e2e.test_cluster_frameworks import BOT, framework, say
from tests.e2e.test_cluster_momohub import (
    PREFIX as TOKENS_PREFIX,
)
from tests.e2e.test_cluster_momohub import (
    Controls,
    momohub,
    start_sandbox,
    store_of,
)
from tests.e2e.test_model_chats import ECHO, providers
from tests.e2e.test_momohub import MOMO, reply_text, send, text
from tests.e2e.test_plugins import command
from tests.support.cluster_procs import NodeProc, ProcCluster
from tests.support.fake_framework import FakeFramework
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient, eventually

NODES = ("node-a", "node-b", "node-c")
NODE_TTL = 2.0  # [cluster] node_ttl of every node here (heartbeat 0.5)
PREFIX = "momobridge:"  # [cluster] prefix's default
GATED = "model:fake/gated"  # streams a first part, then waits for the test's `gate`
# Generous: takeovers wait out a lease (3 s), on two cores shared by the bridges, PostgreSQL
# and Redis.
WAIT = 30.0


@pytest.fixture
async def procs(postgres_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[ProcCluster]:
    """The cluster's nodes, started by each test; every one killed and reaped at teardown."""
    cluster = ProcCluster(tmp_path, postgres_dsn, redis_url, heartbeat=0.5, node_ttl=NODE_TTL)
    try:
        yield cluster
    finally:
        await cluster.close()


def about(rid: str) -> Any:
    """Matches the push of the reply to the message sent as request ``rid``."""
    return lambda f: f["data"]["content"].get("stream_request_id") == rid


def pushes_about(tab: HubClient, rid: str) -> list[dict[str, Any]]:
    return [p for p in tab.pushes("message") if about(rid)(p)]


def asked(upstream: FakeOpenAI, prompt: str) -> int:
    """How many requests the model got whose newest user message is ``prompt``."""
    count = 0
    for body in upstream.requests:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        if users and users[-1].get("content") == prompt:
            count += 1
    return count


async def lease_holder(redis_url: str, name: str) -> str | None:
    """The node holding Redis lease ``name`` (its value is ``<node>:<token>``), or None."""
    r = connect(redis_url)
    try:
        value = await r.get(f"{PREFIX}lease:{name}")
    finally:
        await r.aclose()
    if value is None:
        return None
    return (value.decode() if isinstance(value, bytes) else value).rsplit(":", 1)[0]


# ----- (a) a reply run on one node reaches the user's tabs on the others ------------------------


async def test_two_tabs_on_two_nodes_get_the_reply_a_third_node_ran(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, procs: ProcCluster
) -> None:
    a, b, c = await procs.start(*NODES, openai=providers(upstream))
    tab_a, tab_b, tab_c = await a.client("ann"), await b.client("ann"), await c.client("ann")
    stranger = await a.client("bob")
    ack, frames = await send(tab_c, ECHO, "hello from c")
    # C ran the turn: the stream is on C's connection.
    assert frames[0]["message"] == "pending" and frames[-1]["message"] == "completed", frames
    assert reply_text(frames) == "You said: hello from c"
    rid = ack["request_id"]
    pushed = [await tab.wait_push(about(rid), timeout=WAIT) for tab in (tab_a, tab_b, tab_c)]
    # One reply, stored once: the same message id on all three nodes, after the user's.
    ids = {p["data"]["content"]["message_id"] for p in pushed}
    assert len(ids) == 1 and ids.pop() > ack["data"]["message_id"], pushed
    for p in pushed:
        assert p["data"]["id"] == ECHO
        assert p["data"]["content"]["message"] == text("You said: hello from c"), p
    # The tabs on A and B got the push only, never the stream: no other node ran it ...
    for tab in (tab_a, tab_b):
        assert not [f for f in tab.frames if f.get("request_id") == rid], tab.frames
    # ... and the model was asked once.
    assert asked(upstream, "hello from c") == 1
    # A second message: each tab holds exactly one push of each reply, the stranger none.
    ack2, _ = await send(tab_c, ECHO, "and again")
    for tab in (tab_a, tab_b, tab_c):
        await tab.wait_push(about(ack2["request_id"]), timeout=WAIT)
        assert len(pushes_about(tab, rid)) == 1
        assert len(pushes_about(tab, ack2["request_id"])) == 1
    assert not stranger.pushes("message")


# ----- (b) a framework link moves to a surviving node -------------------------------------------


async def link_states(nodes: list[NodeProc]) -> dict[str, dict[str, Any]]:
    """Each node's /readyz view of the one framework link."""
    states = {}
    for n in nodes:
        _, body = await n.readyz()
        links = [v for k, v in body["components"].items() if k.startswith("framework:")]
        assert len(links) == 1, body
        states[n.node_id] = links[0]
    return states


async def settled_holder(nodes: list[NodeProc]) -> str:
    """Once exactly one of ``nodes`` holds the link and the others say it is linked there."""
    found: list[str] = []

    async def settled() -> bool:
        states = await link_states(nodes)
        holders = [n for n, s in states.items() if s["state"] == "ok" and s["detail"] == ""]
        if len(holders) != 1:
            return False
        others = [s for n, s in states.items() if n != holders[0]]
        if not all(s == {**s, "detail": f"linked on node {holders[0]}"} for s in others):
            return False
        found.append(holders[0])
        return True

    await eventually(settled, WAIT, "one node holding the framework link")
    return found[0]


async def test_a_framework_link_moves_to_a_survivor_when_its_node_is_killed(
    postgres_dsn: str, redis_url: str, procs: ProcCluster
) -> None:
    fw = FakeFramework()
    try:
        url = await fw.start()
        nodes = await procs.start(*NODES, onebot=framework(url))
        held_by = await settled_holder(nodes)
        assert await lease_holder(redis_url, f"framework:{url}:{BOT}") == held_by
        assert len(fw.connections) == 1 and fw.max_concurrent == 1
        holder = procs[held_by]
        survivors = [n for n in nodes if n is not holder]
        tabs = [await n.client("20001") for n in survivors]

        # Through a standby, the holder's link carries the message and the answer comes back.
        ack = await say(tabs[0], "before")
        ev = await fw.wait(lambda f: f.get("raw_message") == "before", timeout=WAIT)
        assert ev["message_id"] == ack["data"]["message_id"]
        await fw.call("send_private_msg", {"user_id": 20001, "message": "hello"}, echo=1)
        for tab in tabs:
            await tab.wait_push(lambda f: f["data"]["content"]["message"] == text("hello"))

        killed_at = time.monotonic()
        await holder.kill()
        await fw.wait_closed(1)
        # A survivor dials within about the lease's life (3 s) plus a try (1.5 s).
        await fw.wait_connections(2)
        took = time.monotonic() - killed_at
        assert took < 15.0, f"takeover took {took:.1f} s"
        assert fw.max_concurrent == 1, "two nodes dialed the framework at once"
        new_holder = await settled_holder(survivors)
        assert await lease_holder(redis_url, f"framework:{url}:{BOT}") == new_holder

        # A message to the bot from either survivor reaches the framework on the new link,
        # and its answer reaches the user's tabs on both.
        for i, tab in enumerate(tabs):
            ack = await say(tab, f"after {i}")
            ev = await fw.wait(lambda f, i=i: f.get("raw_message") == f"after {i}", timeout=WAIT)
            assert ev["user_id"] == 20001 and ev["message_id"] == ack["data"]["message_id"]
        await fw.call("send_private_msg", {"user_id": 20001, "message": "still here"}, echo=2)
        for tab in tabs:
            await tab.wait_push(
                lambda f: f["data"]["content"]["message"] == text("still here"), timeout=WAIT
            )
        # Each message reached the framework once, and only on the new link.
        events = [f for f in fw.frames if f.get("post_type") == "message"]
        assert [e["raw_message"] for e in events] == ["before", "after 0", "after 1"]
        assert len(fw.connections) == 2
    finally:
        await procs.close()  # the bridges first: the framework's stop waits on its links
        await fw.stop()


# ----- (c) one MomoHub sign-in and one refresh for three nodes ----------------------------------


def installs(node: NodeProc, generation: int) -> list[str]:
    """How ``node`` came by the cluster's token pair number ``generation`` (its log)."""
    return [
        e["how"]
        for e in node.events("momohub.tokens_installed")
        if e.get("shared_generation") == generation
    ]


async def test_three_nodes_sign_in_once_and_refresh_once_per_expiry(
    postgres_dsn: str, redis_url: str, procs: ProcCluster
) -> None:
    ttl = 6.0  # the access token's life: each pair is renewed about ttl / 2 after it was made
    sandbox = await start_sandbox(access_token_ttl=ttl)
    redis = connect(redis_url)
    try:
        hub = Controls(sandbox)
        nodes = await procs.start(
            *NODES, momohub=momohub(sandbox), cluster={"prefix": TOKENS_PREFIX}
        )
        first = await store_of(redis, sandbox).read()
        assert first is not None and first.how == "sign-in", first
        assert (await hub.stats())["sign_ins"] == 1

        def pair_everywhere(generation: int) -> bool:
            return all(installs(n, generation) for n in nodes)

        # One node signed in; the other two took up its pair.
        await eventually(lambda: pair_everywhere(1), WAIT, "the first pair on every node")
        signed = [n.node_id for n in nodes if installs(n, 1) == ["sign-in"]]
        assert len(signed) == 1, {n.node_id: installs(n, 1) for n in nodes}
        for n in nodes:
            if n.node_id != signed[0]:
                assert installs(n, 1) == [f"cluster (sign-in by {signed[0]})"]

        # Before the token expires all three schedule a refresh: one of them refreshes.
        await eventually(lambda: pair_everywhere(2), WAIT, "the refreshed pair on every node")
        refreshed = [n.node_id for n in nodes if installs(n, 2) == ["refresh"]]
        assert len(refreshed) == 1, {n.node_id: installs(n, 2) for n in nodes}
        for n in nodes:
            if n.node_id != refreshed[0]:
                assert installs(n, 2) == [f"cluster (refresh by {refreshed[0]})"]
        stats = await hub.stats()
        assert stats["sign_ins"] == 1, stats

        # Past the first token's expiry every node still gets replies.
        assert first.access_expires_at is not None
        await eventually(lambda: time.time() > first.access_expires_at + 0.2, WAIT, "expiry")
        tabs = [await n.client(f"user-{i}") for i, n in enumerate(nodes)]
        results = await asyncio.gather(
            *(send(tab, MOMO, f"after expiry via {i}") for i, tab in enumerate(tabs))
        )
        for i, (_, frames) in enumerate(results):
            assert reply_text(frames) == f"Momo: you said after expiry via {i}"

        # Never a second sign-in, never a refused refresh (a rotated token spent twice), and
        # each refresh made one stored pair.
        stats = await hub.stats()
        stored = await store_of(redis, sandbox).read()
        assert stored is not None
        assert stats["sign_ins"] == 1, stats
        assert stats["refreshes"] >= 1
        assert await hub.refresh_attempts() == stats["refreshes"], stats
        assert stored.generation == 1 + stats["refreshes"], (stored, stats)
    finally:
        await procs.close()  # the bridges first: the sandbox's stop waits on their streams
        await redis.aclose()
        await sandbox.stop()


# ----- (d) a schedule fires once, and moves with its node ---------------------------------------


async def schedule_runs(dsn: str, user: str) -> list[float]:
    """When each scheduled run's prompt was stored (one per run), oldest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT time FROM messages WHERE user_id = $1 AND kind = 'prompt' ORDER BY time", user
        )
    finally:
        await conn.close()
    return [float(r["time"]) for r in rows]


async def schedule_created(dsn: str, entry_id: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        raw = await conn.fetchval(
            "SELECT value FROM plugin_kv WHERE plugin = 'schedule' AND key = $1", f"s:{entry_id}"
        )
    finally:
        await conn.close()
    assert raw is not None, "schedule not stored"
    return float(json.loads(raw)["created"])


async def claimed_due_times(redis_url: str, entry_id: int) -> list[str]:
    """The due times of schedule ``entry_id`` some node claimed before running."""
    r = connect(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{PREFIX}once:schedule:{entry_id}:*")]
    finally:
        await r.aclose()
    return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)


def runs_on(node: NodeProc) -> int:
    return len(node.events("schedule.run"))


async def test_a_schedule_fires_once_across_three_nodes_and_moves_when_its_node_dies(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, procs: ProcCluster
) -> None:
    every = 1.5
    nodes = await procs.start(
        *NODES, openai=providers(upstream), plugins={"schedule": {"min_interval": 0.5}}
    )
    holder: list[str | None] = [None]

    async def leader() -> bool:
        holder[0] = await lease_holder(redis_url, "schedules")
        return holder[0] is not None

    await eventually(leader, WAIT, "a node to lead the schedules")
    leader_node = procs[str(holder[0])]
    # Added through a node that does not run schedules.
    adder = next(n for n in nodes if n is not leader_node)
    tab = await adder.client("dee")
    answer = await command(tab, "/schedule add every 1.5s tick", contact=ECHO)
    assert answer.startswith("Schedule #1 added"), answer
    created = await schedule_created(postgres_dsn, 1)

    async def runs_reach(count: int) -> list[float]:
        async def enough() -> bool:
            return len(await schedule_runs(postgres_dsn, "dee")) >= count

        await eventually(enough, WAIT, f"{count} scheduled runs")
        return await schedule_runs(postgres_dsn, "dee")

    def slots(times: list[float]) -> list[int]:
        return [int((t - created) // every) for t in times]

    await runs_reach(3)

    # The leader ran every one (it logs each right after storing its prompt), no one else did.
    async def leader_logged_all() -> bool:
        return runs_on(leader_node) == len(await schedule_runs(postgres_dsn, "dee"))

    await eventually(leader_logged_all, WAIT, "the leader's log to show every run")
    assert all(runs_on(n) == 0 for n in nodes if n is not leader_node)

    killed_at = time.time()
    await leader_node.kill()
    survivors = [n for n in nodes if n is not leader_node]

    async def taken_over() -> bool:
        return await lease_holder(redis_url, "schedules") in {n.node_id for n in survivors}

    await eventually(taken_over, WAIT, "a survivor to lead the schedules")
    new_leader = procs[str(await lease_holder(redis_url, "schedules"))]
    ran_before = len([t for t in await schedule_runs(postgres_dsn, "dee") if t < killed_at])
    await runs_reach(ran_before + 2)
    await eventually(lambda: runs_on(new_leader) >= 2, WAIT, "the new leader's log")

    # Each run served a due time of its own: as many runs as due times claimed in Redis (every
    # run claims its due time first, so a second run of one due time is a run more), each run
    # asked the model once, and the new leader logged every run after the kill. (Polled: the
    # next run may be between its claim, its prompt and its request.)
    seen: dict[str, Any] = {}

    async def consistent() -> bool:
        seen["claims"] = await claimed_due_times(redis_url, 1)
        seen["times"] = times = await schedule_runs(postgres_dsn, "dee")
        seen["asked"] = asked(upstream, "tick")
        seen["logged"] = runs_on(new_leader)
        after = [t for t in times if t >= killed_at]
        return len(seen["claims"]) == len(times) == seen["asked"] and seen["logged"] == len(after)

    try:
        await eventually(consistent, WAIT, "runs, claims, requests and logs to agree")
    except TimeoutError:
        raise AssertionError(f"runs, claims, requests and logs disagree: {seen}") from None
    times = seen["times"]
    before = [t for t in times if t < killed_at]
    after = [t for t in times if t >= killed_at]
    # No due time ran twice while the leader lived (each run in an interval of its own) ...
    assert len(set(slots(before))) == len(before), slots(before)
    # ... and the due time the dead leader last served was not run again after the takeover.
    assert slots(after)[0] > slots(before)[-1], (slots(before), slots(after))
    # Which node ran them: the dead leader the first ones, the new leader all the others.
    assert runs_on(leader_node) == len(before)
    other = next(n for n in survivors if n is not new_leader)
    assert runs_on(other) == 0
    # The user's tab saw each run's reply.
    await eventually(
        lambda: len([p for p in tab.pushes("message") if "tick" in json.dumps(p)]) >= len(times),
        WAIT,
        "each run's reply pushed",
    )


# ----- (e) a reply on a node that dies ends as a failure, not silence ---------------------------


async def test_a_reply_cut_by_the_death_of_its_node_is_reported_on_a_survivor(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, procs: ProcCluster
) -> None:
    a, _b, c = await procs.start(*NODES, openai=providers(upstream))
    tab_a, tab_c = await a.client("eve"), await c.client("eve")
    # A request id no other tab uses: the pushes of a reply name it.
    rid = await tab_c.send(
        "onebot", "message", text("are you there"), id=GATED, request_id="cut-short"
    )
    ack = await tab_c.reply(rid)
    assert ack["code"] == 0, ack
    mid = ack["data"]["message_id"]
    # The reply is running on C: its first part streamed, the upstream still waits.
    await tab_c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    assert upstream.open_streams == 1

    await c.kill()
    # Within the node's ttl and a few seconds, a survivor settles it: the user's tab on A gets
    # an explicit "interrupted" notice for that message.
    notice = await tab_a.wait_push(
        lambda f: f["data"]["content"].get("interrupted") is True, timeout=NODE_TTL + 10.0
    )
    content = notice["data"]["content"]
    assert content["reply_to"] == mid, notice
    assert notice["data"]["id"] == GATED
    assert content["message"] == text(REPLY_CUT), notice
    # It stands for the reply: no reply to that message arrives.
    assert not pushes_about(tab_a, rid)

    # The conversation goes on through A.
    upstream.gate.set()
    ack2, frames = await send(tab_a, GATED, "and now?")
    assert frames[-1]["message"] == "completed", frames[-1]
    assert reply_text(frames) == "first part, then the rest"
    await tab_a.wait_push(about(ack2["request_id"]), timeout=WAIT)
    assert not pushes_about(tab_a, rid)
    # One notice, from one survivor.
    assert len([p for p in tab_a.pushes("message") if p["data"]["content"].get("interrupted")]) == 1
    settled = [n.node_id for n in procs.live() if n.events("recover.reply_interrupted")]
    assert len(settled) == 1, settled
