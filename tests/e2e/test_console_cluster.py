"""The console of a cluster's node, on a real Redis and a real PostgreSQL: its overview lists
the cluster's live nodes (the /readyz `nodes` section), this node marked; a single bridge's
overview has no such section."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_console_api import Console


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: cookies for an IP address host (127.0.0.1), which the default jar ignores.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


# The database and Redis come first, so they go last: the bridges stop before them.


async def test_overview_lists_the_cluster_s_nodes(
    postgres_dsn: str, redis_url: str, bridge_factory, http: aiohttp.ClientSession
) -> None:
    before = time.time()
    a = await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(storage={"url": postgres_dsn}, cluster=cluster(redis_url, "node-b"))
    c = Console(a, http)
    assert (await c.login()).status == 200
    r = await c.get("overview")
    assert r.status == 200
    body = await r.json()
    nodes = body["health"]["nodes"]
    assert [n["node_id"] for n in nodes] == ["node-a", "node-b"], nodes
    assert [n["node_id"] for n in nodes if n.get("self")] == ["node-a"]
    by_id = {n["node_id"]: n for n in nodes}
    assert by_id["node-a"]["port"] == a.app.port and by_id["node-b"]["port"] == b.app.port
    for n in nodes:
        assert n["host"] and n["started"] >= before - 1
        assert n["since"] <= n["seen"]
    assert body["health"]["components"]["cluster"]["state"] == "ok"
    # Node B's console marks node B.
    other = Console(b, http)
    assert (await other.login()).status == 200
    nodes_b = (await (await other.get("overview")).json())["health"]["nodes"]
    assert [n["node_id"] for n in nodes_b if n.get("self")] == ["node-b"]


async def test_a_single_bridge_has_no_nodes(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    assert (await c.login()).status == 200
    body = await (await c.get("overview")).json()
    assert "nodes" not in body["health"]
