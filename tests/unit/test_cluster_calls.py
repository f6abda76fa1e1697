"""bridge.cluster.calls (request/response between nodes over the bus) against a real
redis-server (tests/support/redis_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

import bridge.cluster.calls as calls_module
from bridge.cluster import MAX_PAYLOAD, Bus, ClusterTimeout, PayloadTooLarge, connect
from bridge.cluster.calls import CallFailed, NodeCalls, NodeUnreachable
from bridge.cluster.client import ClusterError, ClusterUnavailable
from tests.support.redis_server import redis_server, redis_url  # noqa: F401 - fixtures

PREFIX = "test-calls:"
WAIT = 10.0


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Callable[[str], NodeCalls]]:  # noqa: F811
    """Makes started NodeCalls, each on a Redis client and Bus of its own; closed after."""
    made: list[tuple[aioredis.Redis, Bus, NodeCalls]] = []

    async def make(node_id: str) -> NodeCalls:
        r = connect(redis_url, client_name=node_id)
        bus = Bus(r, node_id, prefix=PREFIX)
        calls = NodeCalls(bus, node_id)
        await calls.start()
        made.append((r, bus, calls))
        return calls

    yield make  # type: ignore[misc]
    for r, bus, calls in made:
        await calls.close()
        await bus.close()
        await r.aclose()


async def test_a_call_returns_the_handlers_result(pair) -> None:
    a, b = await pair("node-a"), await pair("node-b")
    seen: list[Any] = []

    async def double(payload: Any) -> Any:
        seen.append(payload)
        return {"twice": payload["n"] * 2, "on": "node-b"}

    b.register("double", double)
    assert await a.call("node-b", "double", {"n": 21}, timeout=WAIT) == {
        "twice": 42,
        "on": "node-b",
    }
    assert seen == [{"n": 21}]
    # Many at once, each with its own answer; nothing left waiting afterwards.
    results = await asyncio.gather(*(a.call("node-b", "double", {"n": i}, WAIT) for i in range(50)))
    assert [r["twice"] for r in results] == [2 * i for i in range(50)]
    assert a.pending == 0


async def test_failures_are_clear(pair) -> None:
    a, b = await pair("node-a"), await pair("node-b")

    async def boom(payload: Any) -> Any:
        raise ValueError("no such thing")

    b.register("boom", boom)
    with pytest.raises(CallFailed, match="no such thing"):
        await a.call("node-b", "boom", None, WAIT)
    with pytest.raises(CallFailed, match="no handler for 'nope'"):
        await a.call("node-b", "nope", None, WAIT)
    # Nobody listens for node-c: refused at once, not after the timeout.
    began = time.monotonic()
    with pytest.raises(NodeUnreachable, match="node-c"):
        await a.call("node-c", "boom", None, WAIT)
    assert time.monotonic() - began < WAIT / 2
    with pytest.raises(PayloadTooLarge):
        await a.call("node-b", "boom", "x" * MAX_PAYLOAD, WAIT)
    with pytest.raises(TypeError):
        await a.call("node-b", "boom", {1, 2}, WAIT)
    assert a.pending == 0


async def test_a_slow_handler_times_out_and_blocks_nothing(pair) -> None:
    a, b = await pair("node-a"), await pair("node-b")
    release = asyncio.Event()

    async def slow(payload: Any) -> Any:
        await release.wait()
        return "late"

    async def quick(payload: Any) -> Any:
        return "quick"

    b.register("slow", slow)
    b.register("quick", quick)
    stuck = asyncio.ensure_future(a.call("node-b", "slow", None, 0.5))
    # The bus reader is free: another call gets through while the slow one runs.
    assert await a.call("node-b", "quick", None, WAIT) == "quick"
    began = time.monotonic()
    # The handler overruns the deadline the caller gave: the caller hears of it either way.
    with pytest.raises((ClusterTimeout, CallFailed)):
        await stuck
    assert time.monotonic() - began < WAIT
    release.set()
    assert a.pending == 0


async def test_close_fails_the_calls_still_waiting(pair) -> None:
    a, b = await pair("node-a"), await pair("node-b")
    entered = asyncio.Event()

    async def never(payload: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    b.register("never", never)
    waiting = asyncio.ensure_future(a.call("node-b", "never", None, 60))
    async with asyncio.timeout(WAIT):
        await entered.wait()
    await a.close()
    with pytest.raises(ClusterUnavailable, match="shutting down"):
        async with asyncio.timeout(WAIT):
            await waiting
    with pytest.raises(ClusterUnavailable):
        await a.call("node-b", "never", None, 1)


async def test_the_calls_waiting_and_the_handlers_running_are_bounded(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calls_module, "MAX_PENDING", 2)
    monkeypatch.setattr(calls_module, "MAX_RUNNING", 2)
    a, b = await pair("node-a"), await pair("node-b")
    release, both = asyncio.Event(), asyncio.Event()
    running = 0

    async def hold(payload: Any) -> Any:
        nonlocal running
        running += 1
        if running == 2:
            both.set()
        await release.wait()
        return payload

    b.register("hold", hold)
    held = [asyncio.ensure_future(a.call("node-b", "hold", i, WAIT)) for i in range(2)]

    async with asyncio.timeout(WAIT):
        await both.wait()
    # Past MAX_PENDING the caller refuses at once ...
    with pytest.raises(ClusterError, match="already waiting"):
        await a.call("node-b", "hold", 9, WAIT)
    # ... and past MAX_RUNNING the other node answers busy.
    monkeypatch.setattr(calls_module, "MAX_PENDING", 3)
    with pytest.raises(CallFailed, match="busy"):
        await a.call("node-b", "hold", 9, WAIT)
    release.set()
    assert [await h for h in held] == [0, 1]
