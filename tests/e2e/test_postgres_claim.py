"""Only a cluster's nodes share a PostgreSQL database: a second bridge on its own, or a cluster
node beside a bridge on its own, is refused at start with the reason (each would settle the
other's replies in flight and keep per-user order in its own memory)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from storage.lock import StorageRefused
from storage.pg_claim import CLAIM_NAME
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_health import get_json

# The database and Redis come first, so they go last: the bridges stop before them.


async def test_a_second_bridge_on_its_own_is_refused(postgres_dsn: str, bridge_factory) -> None:
    first = await bridge_factory(storage={"url": postgres_dsn})
    with pytest.raises(StorageRefused, match="another MomoBridge is using the database"):
        await bridge_factory(storage={"url": postgres_dsn})
    # The refused one took nothing down with it: the first still serves.
    status, body = await get_json(f"{first.http}/readyz")
    assert status == 200, body
    await first.app.stop()
    # Once the first is gone the database is free again.
    await bridge_factory(storage={"url": postgres_dsn})


async def test_a_cluster_node_beside_a_bridge_on_its_own_is_refused_and_the_other_way(
    postgres_dsn: str, redis_url: str, bridge_factory
) -> None:
    alone = await bridge_factory(storage={"url": postgres_dsn})
    with pytest.raises(StorageRefused, match="without \\[cluster\\] is using the database"):
        await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-a"))
    await alone.app.stop()
    await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-a"))
    await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-b"))
    with pytest.raises(StorageRefused, match="another MomoBridge is using the database"):
        await bridge_factory(storage={"url": postgres_dsn})


async def _cut_claims(dsn: str) -> int:
    """Ends every claim session on the database (a restart of PostgreSQL, a proxy's idle cut)."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1",
            CLAIM_NAME,
        )
        return len(rows)
    finally:
        await conn.close()


async def test_a_claim_whose_connection_dropped_is_taken_again_or_reported(
    postgres_dsn: str, bridge_factory
) -> None:
    first = await bridge_factory(storage={"url": postgres_dsn})
    assert await _cut_claims(postgres_dsn) == 1
    # The next readiness probe takes the claim again: another bridge is still refused.
    status, body = await get_json(f"{first.http}/readyz")
    assert status == 200, body
    with pytest.raises(StorageRefused, match="another MomoBridge is using the database"):
        await bridge_factory(storage={"url": postgres_dsn})
    # Cut again, and another bridge takes the database before the first looks: the first says
    # so (its database is not its own any more) instead of running on beside it.
    assert await _cut_claims(postgres_dsn) == 1
    await bridge_factory(storage={"url": postgres_dsn})
    status, body = await get_json(f"{first.http}/readyz")
    assert status == 503, body
    assert "claim on the database was lost" in body["components"]["database"]["detail"]


async def _claims_held(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND a.application_name = $1 AND l.granted",
                CLAIM_NAME,
            )
        )
    finally:
        await conn.close()


async def test_probes_at_once_or_cut_short_take_the_claim_again_once(postgres_dsn: str) -> None:
    from storage import Storage

    st = await Storage.open(postgres_dsn, exclusive=True)
    try:
        # Looks at a held claim at once share its one session.
        assert await asyncio.gather(*(st.db.claim_problem() for _ in range(5))) == [None] * 5
        for _ in range(5):
            assert await _cut_claims(postgres_dsn) == 1
            # Several probes at once (a load balancer and the console), one of them cut short
            # by its deadline: the claim is taken again once, and none reports it lost.
            short = asyncio.create_task(st.db.claim_problem())
            await asyncio.sleep(0)  # it has started taking the claim again
            short.cancel()
            problems = await asyncio.gather(*(st.db.claim_problem() for _ in range(3)))
            assert all(p is None for p in problems), problems
            assert await _claims_held(postgres_dsn) == 1
    finally:
        await st.close()
    assert await _claims_held(postgres_dsn) == 0
    await st.db.claim_problem()  # a probe after the close takes nothing
    assert await _claims_held(postgres_dsn) == 0
