"""Only a cluster's nodes share a PostgreSQL database: a second bridge on its own, or a cluster
node beside a bridge on its own, is refused at start with the reason (each would settle the
other's replies in flight and keep per-user order in its own memory)."""

from __future__ import annotations

import pytest

from storage.lock import StorageRefused
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
