"""Schedules in a cluster of two bridges (real Redis and PostgreSQL, a real OpenAI-compatible
server): one node runs them, so each due time fires once; every node lists them; when the
running node stops, the other takes over."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from tests.conftest import Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_model_chats import ECHO, providers
from tests.e2e.test_plugins import command
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import eventually

SETTINGS = {"schedule": {"min_interval": 0.5}}
WAIT = 20.0


def book(bridge: Bridge) -> Any:
    assert bridge.app.plugins is not None
    return bridge.app.plugins.api("schedule")


async def prompt_times(bridge: Bridge, user: str) -> list[float]:
    """When each scheduled run's prompt was stored (one per run)."""
    assert bridge.app.storage is not None
    rows = await bridge.app.storage.db.fetch(
        "SELECT time FROM messages WHERE user_id = ? AND kind = 'prompt' ORDER BY time", (user,)
    )
    return [float(r[0]) for r in rows]


async def runs_reach(bridge: Bridge, user: str, count: int) -> list[float]:
    async def enough() -> bool:
        return len(await prompt_times(bridge, user)) >= count

    # The runs are in another node's store writes: nothing to wait on but the database.
    await eventually(enough, WAIT, "scheduled runs")
    return await prompt_times(bridge, user)


def once_each(times: list[float], created: float, every: float) -> None:
    """No due time ran twice: each run falls in an interval of its own after the schedule's
    anchor (a run a takeover owed comes late, in the interval after its due time, but never in
    the same one as another run)."""
    slots = [int((t - created) // every) for t in times]
    assert len(set(slots)) == len(slots), (slots, [b - a for a, b in itertools.pairwise(times)])


async def test_a_schedule_fires_once_per_due_time_and_moves_with_its_node(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": providers(upstream),
        "plugins": SETTINGS,
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    # One of them takes the lease.
    await eventually(lambda: book(a).leading != book(b).leading, WAIT, "a leader")
    leader, other = (a, b) if book(a).leading else (b, a)
    # Added on the node that does not run schedules: the other arms it.
    c = await other.client("dee")
    answer = await command(c, "/schedule add every 1s tick", contact=ECHO)
    assert answer.startswith("Schedule #1 added"), answer
    created = book(leader).entries[1].created
    times = await runs_reach(leader, "dee", 3)
    once_each(times, created, 1.0)
    # Both nodes list it.
    for node in (a, b):
        assert [e["id"] for e in book(node).all()] == [1]
    # The running node stops: the other takes over within a few seconds and goes on.
    await leader.app.stop()
    await eventually(lambda: book(other).leading, WAIT, "the other node leading")
    before = len(await prompt_times(other, "dee"))
    times = await runs_reach(other, "dee", before + 2)
    once_each(times, created, 1.0)


async def test_ids_from_two_nodes_never_collide(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    shared = {"storage": {"url": postgres_dsn}, "openai": providers(upstream), "plugins": SETTINGS}
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    ca, cb = await a.client("eve"), await b.client("fay")
    answers = await asyncio.gather(
        command(ca, "/schedule add every 1h one", contact=ECHO),
        command(cb, "/schedule add every 1h two", contact=ECHO),
    )
    ids = [int(x.split("#")[1].split()[0]) for x in answers]
    assert sorted(ids) == [1, 2], answers
    eves, fays = ids
    # Each node learns of the other's add.
    await eventually(lambda: all(len(book(n).entries) == 2 for n in (a, b)), WAIT, "both adds")
    # A delete on one node disarms it on the node running it.
    assert await command(ca, f"/schedule del {eves}", contact=ECHO) == f"Schedule #{eves} deleted."
    await eventually(lambda: all(list(book(n).entries) == [fays] for n in (a, b)), WAIT, "del")
    leader = a if book(a).leading else b
    assert f"schedule-{eves}" not in leader.app.scheduler.job_ids()
    assert f"schedule-{fays}" in leader.app.scheduler.job_ids()
