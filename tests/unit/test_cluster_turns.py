"""One order per conversation across nodes (bridge.cluster.turns) against a real redis-server:
two engines stand for two nodes, each with its own Redis connection, registry entry and bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from bridge.cluster import Bus, NodeRegistry, connect
from bridge.cluster.turns import ConversationTurns, digest
from bridge.engine import Engine, Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey
from tests.support.hub_client import eventually
from tests.support.redis_server import redis_server, redis_url  # noqa: F401 - fixtures

PREFIX = "test:"
WAIT = 10.0
KEY = ConversationKey("u1", "alice", "default")


@dataclass
class Node:
    name: str
    redis: aioredis.Redis
    registry: NodeRegistry
    bus: Bus
    turns: ConversationTurns
    engine: Engine
    alive: list[bool] = field(default_factory=lambda: [True])


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[dict[str, Node]]:  # noqa: F811
    made: dict[str, Node] = {}
    for name in ("a", "b"):
        client = connect(redis_url, client_name=name)
        registry = NodeRegistry(client, name, heartbeat=0.2, ttl=1.0, prefix=PREFIX)
        await registry.start()
        bus = Bus(client, name, prefix=PREFIX)
        alive = [True]
        turns = ConversationTurns(
            client,
            bus,
            registry.identity,
            prefix=PREFIX,
            alive=lambda a=alive: a[0],
            recheck=0.2,
            max_wait=5.0,
            tick=0.1,
        )
        engine = Engine()
        await turns.start(engine.stop_nowait)
        engine.gate = turns
        made[name] = Node(name, client, registry, bus, turns, engine, alive)
    yield made
    for node in made.values():
        await node.engine.close()
        await node.turns.close()
        await node.bus.close()
        await node.registry.close()
        await node.redis.aclose()


class Log:
    """What the jobs did, and a gate per job that the test opens."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.running = 0
        self.overlap = False
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def job(self, name: str, *, hold: bool = True) -> Callable[[Turn], Awaitable[None]]:
        self.gates[name] = gate = asyncio.Event()
        self.started[name] = started = asyncio.Event()
        if not hold:
            gate.set()

        async def run(turn: Turn) -> None:
            turn.admit()
            self.running += 1
            self.overlap = self.overlap or self.running > 1
            self.events.append(f"start {name}")
            started.set()
            try:
                async with asyncio.timeout(WAIT):
                    await gate.wait()
            finally:
                self.running -= 1
                self.events.append(f"end {name}")

        return run


async def ticket_of(turn: Turn) -> int:
    async with asyncio.timeout(WAIT):
        number, _ = await asyncio.shield(turn.ticket.number)
    return number


async def test_turns_of_one_conversation_on_two_nodes_run_one_at_a_time_in_order(
    nodes: dict[str, Node],
) -> None:
    a, b = nodes["a"].engine, nodes["b"].engine
    log = Log()
    t1 = a.submit(KEY, log.job("1"))
    await ticket_of(t1)
    t2 = b.submit(KEY, log.job("2"))
    await ticket_of(t2)
    t3 = a.submit(KEY, log.job("3"))
    await ticket_of(t3)
    t4 = b.submit(KEY, log.job("4"))
    await ticket_of(t4)
    async with asyncio.timeout(WAIT):
        await log.started["1"].wait()
    # Turn 2 waits on node b although b's engine has nothing else to run for this key.
    assert not log.started["2"].is_set()
    for name in ("1", "2", "3", "4"):
        async with asyncio.timeout(WAIT):
            await log.started[name].wait()
        log.gates[name].set()
    for t in (t1, t2, t3, t4):
        await t.wait(WAIT)
    assert log.events == [f"{what} {n}" for n in "1234" for what in ("start", "end")]
    assert not log.overlap
    assert all(t.refusal is None for t in (t1, t2, t3, t4))


async def test_other_conversations_do_not_wait(nodes: dict[str, Node]) -> None:
    a, b = nodes["a"].engine, nodes["b"].engine
    log = Log()
    a.submit(KEY, log.job("1"))
    other = b.submit(ConversationKey("u1", "bob", "default"), log.job("other", hold=False))
    await other.wait(WAIT)
    assert "end other" in log.events and "end 1" not in log.events
    log.gates["1"].set()


async def test_a_dead_nodes_turn_is_given_up_and_the_next_runs(
    nodes: dict[str, Node],
    redis_url: str,  # noqa: F811
) -> None:
    a, b = nodes["a"], nodes["b"]
    log = Log()
    stuck = b.engine.submit(KEY, log.job("on b"))
    async with asyncio.timeout(WAIT):
        await log.started["on b"].wait()
    waiting = a.engine.submit(KEY, log.job("on a", hold=False))
    await ticket_of(waiting)
    assert not log.started["on a"].is_set()
    # Node b dies: its heartbeat stops and its registry key goes (as expiry would).
    await b.registry.close()
    await waiting.wait(WAIT)
    assert log.events[-2:] == ["start on a", "end on a"]
    assert waiting.refusal is None
    log.gates["on b"].set()
    await stuck.wait(WAIT)


async def test_a_turn_dropped_before_its_time_does_not_block_the_conversation(
    nodes: dict[str, Node],
) -> None:
    a, b = nodes["a"].engine, nodes["b"].engine
    log = Log()
    first = a.submit(KEY, log.job("first"))
    dropped = a.submit(KEY, log.job("dropped"))
    for t in (first, dropped):
        await ticket_of(t)  # taken before the other node's: the order this test is about
    later = b.submit(KEY, log.job("later", hold=False))
    await ticket_of(later)
    assert a.stop_nowait(dropped, "recalled") == "dropped"
    log.gates["first"].set()
    await later.wait(WAIT)
    assert "start dropped" not in log.events
    assert log.events == ["start first", "end first", "start later", "end later"]


async def test_a_cleanup_runs_in_the_stopped_turns_place(nodes: dict[str, Node]) -> None:
    """submit_next's turn inherits the running turn's place: it runs before the other node's
    waiting turn, and neither waits for the other forever."""
    a, b = nodes["a"].engine, nodes["b"].engine
    log = Log()
    running = a.submit(KEY, log.job("running"))
    async with asyncio.timeout(WAIT):
        await log.started["running"].wait()
    other = b.submit(KEY, log.job("other", hold=False))
    await ticket_of(other)
    cleanup = a.submit_next(KEY, log.job("cleanup", hold=False))
    await a.stop(running, "recalled")
    await cleanup.wait(WAIT)
    await other.wait(WAIT)
    assert log.events.index("start cleanup") < log.events.index("start other")


async def test_an_idle_conversation_leaves_only_expiring_keys(
    nodes: dict[str, Node],
    redis_url: str,  # noqa: F811
) -> None:
    a = nodes["a"].engine
    log = Log()
    t = a.submit(KEY, log.job("1", hold=False))
    await t.wait(WAIT)
    probe = connect(redis_url, client_name="probe")
    try:
        h = digest(KEY)
        base = f"{PREFIX}turns:{h}:"

        async def settled() -> bool:
            return await probe.get(base + "done") == b"1"

        await eventually(settled, WAIT, "the finished ticket recorded")
        assert await probe.hlen(base + "who") == 0
        for name in ("next", "done"):
            ttl = await probe.pttl(base + name)
            assert 0 < ttl <= 3600_000, name
    finally:
        await probe.aclose()


async def test_a_node_that_loses_the_cluster_stops_its_running_turn(
    nodes: dict[str, Node],
) -> None:
    a = nodes["a"]
    log = Log()
    t = a.engine.submit(KEY, log.job("1"))
    async with asyncio.timeout(WAIT):
        await log.started["1"].wait()
    a.alive[0] = False
    await t.wait(WAIT)
    assert t.stop_reason == "this bridge lost its connection to the cluster"
    assert log.events == ["start 1", "end 1"]


async def test_without_redis_a_turn_is_refused_with_a_reason() -> None:
    """A Redis that cannot be reached: the job is told why (Turn.admit), never run unordered."""
    client = connect("redis://127.0.0.1:1/0", client_name="nowhere")
    bus = Bus(client, "x", prefix=PREFIX)
    turns = ConversationTurns(client, bus, "x#1", prefix=PREFIX)
    engine = Engine()
    engine.gate = turns
    seen: list[BridgeError] = []

    async def job(turn: Turn) -> None:
        try:
            turn.admit()
        except BridgeError as e:
            seen.append(e)

    try:
        t = engine.submit(KEY, job)
        await t.wait(WAIT * 2)
        assert len(seen) == 1 and seen[0].code == ErrorCode.UNAVAILABLE
        assert "order this conversation" in seen[0].reason
    finally:
        await engine.close()
        await turns.close()
        await bus.close()
        await client.aclose()


async def test_an_orphan_ticket_of_this_node_does_not_block_it(
    nodes: dict[str, Node],
    redis_url: str,  # noqa: F811
) -> None:
    """A ticket this node took but never heard back about (its answer lost) is finished by the
    node itself when it blocks a turn, instead of waiting for the node to die."""
    a = nodes["a"]
    orphan = a.turns.take(KEY)
    await asyncio.wait_for(asyncio.shield(orphan.number), WAIT)
    number, _ = orphan.number.result()
    a.turns._held[orphan.h].discard(number)  # as if the take's answer had never come
    if not a.turns._held[orphan.h]:
        del a.turns._held[orphan.h]
    log = Log()
    t = a.engine.submit(KEY, log.job("1", hold=False))
    await t.wait(WAIT)
    assert t.refusal is None and log.events == ["start 1", "end 1"]


def test_push_ids_of_nodes_in_different_slots_never_meet() -> None:
    from storage.outbox import OutboxRepo

    a, b = OutboxRepo(None), OutboxRepo(None)  # type: ignore[arg-type] - ids need no database
    a.id_space(1, 1024)
    b.id_space(2, 1024)
    made_a = [a.next_id() for _ in range(2000)]
    made_b = [b.next_id() for _ in range(2000)]
    assert not set(made_a) & set(made_b)
    assert made_a == sorted(set(made_a)) and all(i % 1024 == 1 for i in made_a)
    assert max(made_a + made_b) < 2**53


async def test_a_node_s_pushes_leave_before_its_turn_lets_the_next_one_run(
    redis_url: str,  # noqa: F811
) -> None:
    """PushFanout.flushed, awaited before a ticket is finished: once it returns, the push
    announced before it is in Redis, ahead of anything the next turn's node publishes."""
    from bridge.cluster.pushes import CHANNEL, PushFanout
    from bridge.outbox import Outbox, Push

    class NoStore:  # the fan-out reads the store only for pushes too big for the bus
        pass

    sender = connect(redis_url, client_name="sender")
    other = connect(redis_url, client_name="other")
    bus_a, bus_b = Bus(sender, "a", prefix=PREFIX), Bus(other, "b", prefix=PREFIX)
    heard: list[str] = []
    got_marker = asyncio.Event()

    def arrived(payload: bytes) -> None:
        heard.append("marker" if payload == b"marker" else "push")
        if payload == b"marker":
            got_marker.set()

    hearer = connect(redis_url, client_name="listener")
    listener = Bus(hearer, "c", prefix=PREFIX)
    fanout = PushFanout(bus_a, Outbox(NoStore(), 10))  # type: ignore[arg-type]
    try:
        await listener.subscribe(CHANNEL, arrived)
        await fanout.start()
        await fanout.announce("u1", Push(kind="message", contact="alice", message_id=1, seq=7))
        await fanout.flushed()
        await bus_b.publish(CHANNEL, b"marker")  # the next turn's node, right after
        async with asyncio.timeout(WAIT):
            await got_marker.wait()
        assert heard[:2] == ["push", "marker"]
    finally:
        await fanout.stop()
        for bus in (bus_a, bus_b, listener):
            await bus.close()
        for client in (sender, other, hearer):
            await client.aclose()


async def test_a_take_whose_answer_was_lost_does_not_block_the_other_nodes(
    nodes: dict[str, Node],
) -> None:
    """Redis took the ticket but the node never heard back (every attempt): the turn is
    refused, and the upkeep finishes the ticket by its take id, so the other node's turn runs
    (without the fix it would wait max_wait and be refused BUSY)."""
    from bridge.cluster.client import ClusterTimeout

    a, b = nodes["a"], nodes["b"]
    real = a.turns._take
    calls = 0

    async def lost(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        await real(*args, **kwargs)  # done in Redis ...
        raise ClusterTimeout("take a turn: no answer")  # ... but the answer is lost

    a.turns._take = lost  # type: ignore[assignment]
    log = Log()
    refused = a.engine.submit(KEY, log.job("on a", hold=False))
    await refused.wait(WAIT)
    assert refused.refusal is not None and refused.refusal.code == ErrorCode.UNAVAILABLE
    assert calls == 3  # asked again, the same take each time
    a.turns._take = real  # type: ignore[assignment]
    after = b.engine.submit(KEY, log.job("on b", hold=False))
    await after.wait(WAIT)
    assert after.refusal is None and log.events == ["start on b", "end on b"]


async def test_the_same_take_asked_twice_is_one_ticket(nodes: dict[str, Node]) -> None:
    a = nodes["a"].turns
    keys = a._keys(digest(KEY))
    args = [f"{PREFIX}node:", 60_000, a.identity, "take-1"]
    first = await a._take(keys=keys, args=args)
    again = await a._take(keys=keys, args=args)
    other = await a._take(keys=keys, args=[*args[:3], "take-2"])
    assert first[0] == again[0] == 1 and other[0] == 2


async def test_a_restarted_node_s_old_tickets_do_not_block(
    nodes: dict[str, Node],
    redis_url: str,  # noqa: F811
) -> None:
    """Node b runs a turn, then crashes and comes back under the same node id (a new run): the
    old run's ticket is given up, and the other node's turn runs."""
    a, b = nodes["a"], nodes["b"]
    log = Log()
    b.engine.submit(KEY, log.job("old run"))
    async with asyncio.timeout(WAIT):
        await log.started["old run"].wait()
    waiting = a.engine.submit(KEY, log.job("on a", hold=False))
    await ticket_of(waiting)
    # The crash: the old run's registry entry expires; the new run registers under "b".
    await b.registry.close()
    again = NodeRegistry(b.redis, "b", heartbeat=0.2, ttl=1.0, prefix=PREFIX)
    await again.start()
    try:
        await waiting.wait(WAIT)
        assert waiting.refusal is None and "end on a" in log.events
    finally:
        log.gates["old run"].set()
        await again.close()


async def test_a_node_id_in_use_by_a_live_process_is_refused(
    nodes: dict[str, Node],
) -> None:
    from bridge.cluster import ClusterError

    twin = NodeRegistry(nodes["a"].redis, "a", heartbeat=0.2, ttl=1.0, prefix=PREFIX)
    with pytest.raises(ClusterError, match="in use by another running bridge"):
        await twin.start()


async def test_a_stopped_turn_s_cleanup_leaves_nothing_running_behind(
    nodes: dict[str, Node],
) -> None:
    a = nodes["a"]
    log = Log()
    for i in range(5):
        running = a.engine.submit(KEY, log.job(f"r{i}"))
        async with asyncio.timeout(WAIT):
            await log.started[f"r{i}"].wait()
        cleanup = a.engine.submit_next(KEY, log.job(f"c{i}", hold=False))
        await a.engine.stop(running, "recalled")
        await cleanup.wait(WAIT)
        assert cleanup.refusal is None
    assert not a.turns._running
    assert not log.overlap


async def test_a_take_that_runs_after_it_was_given_up_takes_no_ticket(
    nodes: dict[str, Node],
) -> None:
    """The upkeep finished a take whose answer never came (nothing taken yet: it was still on
    its way); the take then runs late: it takes no ticket that would block the others."""
    a, b = nodes["a"], nodes["b"]
    h = digest(KEY)
    await a.turns._finish_now(h, 0, "late-take")  # the upkeep: the take is given up
    late = await a.turns._take(
        keys=a.turns._keys(h, "late-take"),
        args=[f"{PREFIX}node:", 60_000, a.turns.identity, "late-take"],
    )
    assert [int(x) for x in late] == [-1, 0]
    log = Log()
    t = b.engine.submit(KEY, log.job("on b", hold=False))
    await t.wait(WAIT)
    assert t.refusal is None and log.events == ["start on b", "end on b"]
    assert await ticket_of(t) == 1


async def test_a_node_whose_id_was_taken_over_leaves_the_new_entry_alone(
    nodes: dict[str, Node],
) -> None:
    a = nodes["a"]
    await a.registry._tasks.cancel_all()  # a long pause: no heartbeats ...
    await a.redis.delete(f"{PREFIX}node:a")  # ... so its entry lapsed ...
    twin = NodeRegistry(a.redis, "a", heartbeat=0.2, ttl=1.0, prefix=PREFIX)
    await twin.start()  # ... and a restarted process took the id
    try:
        await a.registry.close()  # the old process stops at last
        assert await a.redis.hget(f"{PREFIX}node:a", "run") == twin.run.encode()
        assert [n["node_id"] for n in await twin.nodes()].count("a") == 1
    finally:
        await twin.close()


async def test_a_bus_that_lost_its_connection_counts_one_reconnect_each_time(
    redis_url: str,  # noqa: F811
) -> None:
    """redis-py reopens a pub/sub connection by itself, or the bus makes a new one: either way
    one reconnect is one call of the hooks (what was published meanwhile is looked up once)."""
    client = connect(redis_url, client_name="deaf")
    admin = connect(redis_url, client_name="admin")
    bus = Bus(client, "deaf", prefix=PREFIX)
    calls: list[int] = []
    try:
        await bus.subscribe("x", lambda payload: None)
        bus.on_reconnect(lambda: _count(calls))
        for n in (1, 2, 3):
            ids = [
                c["id"]
                for c in await admin.client_list()
                if c.get("name") == "deaf" and int(c.get("sub", 0))
            ]
            assert ids
            for cid in ids:
                await admin.client_kill_filter(_id=cid)
            await eventually(lambda n=n: len(calls) >= n, WAIT, f"reconnect {n} noticed")
            await eventually(lambda: bus.subscribed("x"), WAIT, "subscribed again")
            # A round trip after it: a second count of the same reconnect would be in by now.
            assert await admin.publish(f"{PREFIX}bus:x", b"ping") >= 1
            assert len(calls) == n and bus.connections == n + 1, (calls, bus.connections)
    finally:
        await bus.close()
        await client.aclose()
        await admin.aclose()


async def _count(calls: list[int]) -> None:
    calls.append(1)
