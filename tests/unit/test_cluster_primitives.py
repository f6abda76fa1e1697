"""bridge.cluster against a real redis-server (tests/support/redis_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from bridge.cluster import (
    MAX_PAYLOAD,
    Bus,
    ClusterUnavailable,
    Lease,
    LeaseBusy,
    Leases,
    NodeRegistry,
    PayloadTooLarge,
    connect,
    once,
)
from tests.support.redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    RedisUnavailable,
    redis_server,
    redis_url,
    unavailable,
)

PREFIX = "test:"
WAIT = 10.0  # generous: a loaded CI machine is slow, a working primitive is still far faster


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    """Waits until `check()` is true, polling: Redis's expiries announce nothing to wait on."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[], aioredis.Redis]]:  # noqa: F811
    """Makes clients of their own (separate pools, so separate connections), closed after."""
    made: list[aioredis.Redis] = []

    def make() -> aioredis.Redis:
        made.append(connect(redis_url, client_name="test"))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def r(clients: Callable[[], aioredis.Redis]) -> aioredis.Redis:
    return clients()


# -- node registry -----------------------------------------------------------------------------


async def test_registry_lists_live_nodes_and_drops_a_silent_one(r: aioredis.Redis) -> None:
    # node-a's ttl is long so that a slow machine never drops it; node-b's is short because it is
    # the one dropped (each node's entry expires by its own ttl).
    a = NodeRegistry(r, "node-a", {"addr": "10.0.0.1:8080"}, heartbeat=0.1, ttl=5, prefix=PREFIX)
    b = NodeRegistry(r, "node-b", {"addr": "10.0.0.2:8080"}, heartbeat=0.1, ttl=0.5, prefix=PREFIX)
    await a.start()
    await b.start()
    try:
        nodes = await a.nodes()
        assert [n["node_id"] for n in nodes] == ["node-a", "node-b"]
        assert nodes[0]["addr"] == "10.0.0.1:8080"
        assert all(n["since"] <= n["seen"] for n in nodes)
        first_seen = nodes[0]["seen"]

        # node-b stops heartbeating as a crashed process would: no unregister.
        await b._tasks.cancel_all()

        async def only_a() -> bool:
            return [n["node_id"] for n in await b.nodes()] == ["node-a"]

        await eventually(only_a, "node-b dropped from the list")
        # node-a kept heartbeating all along, and the next heartbeat prunes the sorted set.
        assert (await a.nodes())[0]["seen"] > first_seen

        async def pruned() -> bool:
            return await r.zcard(f"{PREFIX}nodes") == 1

        await eventually(pruned, "node-b pruned from the sorted set")
    finally:
        await a.close()
        await b.close()
    assert await a.nodes() == []  # close() removes the node at once


async def test_registry_rejects_a_heartbeat_too_slow_for_its_ttl(r: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="at most half"):
        NodeRegistry(r, "n", heartbeat=3, ttl=5)


async def test_registry_start_fails_clearly_without_redis() -> None:
    # A port nothing listens on: the first heartbeat fails within the timeouts, not later.
    dead = connect("redis://127.0.0.1:1/0", connect_timeout=1, socket_timeout=1)
    try:
        with pytest.raises(ClusterUnavailable, match="heartbeat n"):
            await NodeRegistry(dead, "n", timeout=5).start()
    finally:
        await dead.aclose()


# -- once --------------------------------------------------------------------------------------


async def test_once_is_true_for_exactly_one_of_twenty(
    clients: Callable[[], aioredis.Redis],
) -> None:
    conns = [clients(), clients()]  # callers on two "bridges"
    results = await asyncio.gather(
        *(once(conns[i % 2], "job:42@2024-01-01T00:00", ttl=30, prefix=PREFIX) for i in range(20))
    )
    assert results.count(True) == 1
    assert 0 < await conns[0].pttl(f"{PREFIX}once:job:42@2024-01-01T00:00") <= 30_000
    assert await once(conns[0], "another key", ttl=30, prefix=PREFIX) is True


# -- leases ------------------------------------------------------------------------------------


async def test_a_lease_has_one_holder(clients: Callable[[], aioredis.Redis]) -> None:
    la, lb = Leases(clients(), "node-a", prefix=PREFIX), Leases(clients(), "node-b", prefix=PREFIX)
    got = await asyncio.gather(*(lx.acquire("job", 30) for lx in [la, lb] * 5))
    winners = [g for g in got if g is not None]
    assert len(winners) == 1
    lease = winners[0]
    assert await la.holder("job") == (lease.node_id, lease.token)
    assert await la.acquire("job", 30) is None  # not re-entrant either
    assert await lb.acquire("other", 30) is not None  # names are independent


async def test_fencing_tokens_increase_across_holders(r: aioredis.Redis) -> None:
    la, lb = Leases(r, "node-a", prefix=PREFIX), Leases(r, "node-b", prefix=PREFIX)
    first = await la.acquire("job", 30)
    assert first is not None
    assert await la.release(first) is True
    second = await lb.acquire("job", 0.2)
    assert second is not None and second.token > first.token

    async def expired() -> bool:
        return await la.holder("job") is None

    await eventually(expired, "node-b's lease expired")
    third = await la.acquire("job", 30)
    assert third is not None and third.token > second.token
    assert (third.node_id, await la.holder("job")) == ("node-a", ("node-a", third.token))


async def test_renew_and_release_refuse_a_stale_holding(r: aioredis.Redis) -> None:
    la, lb = Leases(r, "node-a", prefix=PREFIX), Leases(r, "node-b", prefix=PREFIX)
    old = await la.acquire("job", 30)
    assert old is not None
    await r.delete(f"{PREFIX}lease:job")  # as if it expired while node-a was paused
    new = await lb.acquire("job", 30)
    assert new is not None

    assert await la.renew(old, 30) is False
    assert await la.release(old) is False
    # The right token from the wrong node, or the right node with an old token: refused too.
    assert await la.renew(Lease("job", new.token, "node-a"), 30) is False
    assert await lb.release(Lease("job", new.token - 1, "node-b")) is False
    assert await la.holder("job") == ("node-b", new.token)

    await r.pexpire(f"{PREFIX}lease:job", 5_000)
    assert await lb.renew(new, 30) is True
    assert await r.pttl(f"{PREFIX}lease:job") > 5_000
    assert await lb.release(new) is True
    assert await la.holder("job") is None


async def test_hold_keeps_renewing_and_releases_on_exit(r: aioredis.Redis) -> None:
    leases = Leases(r, "node-a", prefix=PREFIX)
    ttl = 1.0
    async with leases.hold("job", ttl) as kept:
        began = time.monotonic()
        low = await r.pttl(f"{PREFIX}lease:job")
        renewals = 0

        async def renewed_twice() -> bool:
            nonlocal low, renewals
            pttl = await r.pttl(f"{PREFIX}lease:job")
            if pttl > low + 100:  # the time left jumped back up: a renewal
                renewals += 1
            low = pttl
            return renewals >= 2 and time.monotonic() - began > ttl * 1.2

        await eventually(renewed_twice, "two renewals and the first ttl long gone")
        assert await leases.holder("job") == ("node-a", kept.token)
        assert not kept.lost.is_set()
    assert await leases.holder("job") is None
    assert kept.lost.is_set()  # after the block nothing may count on it any more


async def test_hold_sets_lost_when_the_lease_is_stolen(r: aioredis.Redis) -> None:
    la, lb = Leases(r, "node-a", prefix=PREFIX), Leases(r, "node-b", prefix=PREFIX)
    async with la.hold("job", 0.6) as kept:
        await r.delete(f"{PREFIX}lease:job")
        thief = await lb.acquire("job", 30)
        assert thief is not None and thief.token > kept.token
        await asyncio.wait_for(kept.lost.wait(), WAIT)
    # Leaving the block did not release node-b's holding.
    assert await la.holder("job") == ("node-b", thief.token)


async def test_hold_when_busy_raises_or_waits(r: aioredis.Redis) -> None:
    la, lb = Leases(r, "node-a", prefix=PREFIX), Leases(r, "node-b", prefix=PREFIX)
    lease = await la.acquire("job", 30)
    assert lease is not None
    with pytest.raises(LeaseBusy, match="node-a") as busy:
        async with lb.hold("job", 5):
            pass
    assert busy.value.holder == ("node-a", lease.token)

    entered = asyncio.Event()

    async def wait_for_it() -> int:
        async with lb.hold("job", 5, wait=WAIT) as kept:
            entered.set()
            return kept.token

    waiter = asyncio.create_task(wait_for_it())
    try:
        assert await la.release(lease) is True
        assert await asyncio.wait_for(waiter, WAIT) > lease.token
    finally:
        waiter.cancel()
    assert entered.is_set()


# -- bus ---------------------------------------------------------------------------------------


async def test_bus_delivers_to_two_subscribers_in_order(
    clients: Callable[[], aioredis.Redis],
) -> None:
    n = 50
    got: dict[str, list[bytes]] = {"sync": [], "async": []}
    done = {name: asyncio.Event() for name in got}

    def on_sync(payload: bytes) -> None:
        got["sync"].append(payload)
        if payload == b"boom":
            raise RuntimeError("a handler's bug must not end the reader")
        if len(got["sync"]) == n + 1:
            done["sync"].set()

    async def on_async(payload: bytes) -> None:
        await asyncio.sleep(0)
        got["async"].append(payload)
        if len(got["async"]) == n + 1:
            done["async"].set()

    b1, b2 = Bus(clients(), "node-1", prefix=PREFIX), Bus(clients(), "node-2", prefix=PREFIX)
    publisher = Bus(clients(), "node-3", prefix=PREFIX)
    try:
        await b1.subscribe("news", on_sync)
        await b2.subscribe("news", on_async)
        assert b1.subscribed("news") and b2.subscribed("news")
        assert await publisher.publish("news", b"boom") == 2
        for i in range(n):
            await publisher.publish("news", f"m{i}".encode())
        for name in done:
            await asyncio.wait_for(done[name].wait(), WAIT)
        expected = [b"boom"] + [f"m{i}".encode() for i in range(n)]
        assert got == {"sync": expected, "async": expected}
        assert await publisher.publish("elsewhere", b"x") == 0
    finally:
        for bus in (b1, b2, publisher):
            await bus.close()


async def test_bus_bounds_payloads(r: aioredis.Redis) -> None:
    bus = Bus(r, "node-1", prefix=PREFIX)
    with pytest.raises(PayloadTooLarge):
        await bus.publish("news", b"x" * (MAX_PAYLOAD + 1))
    assert await bus.publish("news", b"x" * MAX_PAYLOAD) == 0
    with pytest.raises(TypeError):
        await bus.publish("news", "text")  # type: ignore[arg-type]


async def test_bus_reader_survives_client_kill(clients: Callable[[], aioredis.Redis]) -> None:
    admin = clients()
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    bus = Bus(clients(), "node-1", prefix=PREFIX, backoff_min=0.01, backoff_max=0.2)
    channel = f"{PREFIX}bus:news"
    try:
        await bus.subscribe("news", inbox.put_nowait)
        await admin.publish(channel, b"before")
        assert await asyncio.wait_for(inbox.get(), WAIT) == b"before"

        for round_ in range(2):  # twice: the second reconnect must work as well as the first
            assert await admin.client_kill_filter(_type="pubsub") >= 1

            async def resubscribed() -> bool:
                return dict(await admin.pubsub_numsub(channel)).get(channel.encode(), 0) == 1

            await eventually(resubscribed, "the reader subscribed again")
            await admin.publish(channel, f"after {round_}".encode())
            assert await asyncio.wait_for(inbox.get(), WAIT) == f"after {round_}".encode()
        assert inbox.empty()
    finally:
        await bus.close()
    assert dict(await admin.pubsub_numsub(channel)).get(channel.encode(), 0) == 0


async def test_bus_reader_reconnects_after_an_outage() -> None:
    # A server of its own: this test stops it, then starts one again on the same port, so the
    # reader's own reconnect loop (not only redis-py's quick retries) has to bring it back.
    first = RedisServer()
    try:
        await asyncio.to_thread(first.start)
    except RedisUnavailable as e:
        unavailable(str(e))
    port, url = first.port, first.url
    second = RedisServer(port=port)
    client = connect(url, connect_timeout=1, socket_timeout=1)
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    bus = Bus(client, "node-1", prefix=PREFIX, backoff_min=0.01, backoff_max=0.2)
    missed: list[int] = []

    async def look_up() -> None:
        missed.append(1)

    bus.on_reconnect(look_up)
    try:
        await bus.subscribe("news", inbox.put_nowait)
        assert await bus.publish("news", b"before") == 1
        assert await asyncio.wait_for(inbox.get(), WAIT) == b"before"

        await asyncio.to_thread(first.stop)

        async def noticed() -> bool:
            return not bus.subscribed("news")

        await eventually(noticed, "the reader noticed the outage")
        with pytest.raises(ClusterUnavailable, match="publish"):
            await bus.publish("news", b"lost")

        await asyncio.to_thread(second.start)

        async def back() -> bool:
            return bus.subscribed("news")

        await eventually(back, "the reader subscribed again after the outage")
        assert await bus.publish("news", b"after") == 1
        assert await asyncio.wait_for(inbox.get(), WAIT) == b"after"
        # One reconnect, counted once, and what was missed looked up once (the connection
        # the pool hands out again carries no callback of the connection given up).
        assert bus.connections == 2

        async def looked_up() -> bool:
            return len(missed) >= 1

        await eventually(looked_up, "the missed messages looked up")
        assert len(missed) == 1
    finally:
        await bus.close()
        await client.aclose()
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(second.stop)
