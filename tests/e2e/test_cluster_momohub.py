"""One MomoHub account for a cluster: the nodes share its token pair through Redis, so the whole
cluster signs in once and refreshes once per expiry. MomoHub rotates refresh tokens (each works
once), so nodes renewing on their own would spend each other's refresh token and log each other
out. One standalone MomoHub sandbox, a real Redis and (for the bridges) a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.momohub.client import MomoHubClient
from adapters.momohub.sandbox import SandboxServer
from adapters.momohub.shared_tokens import (
    LEASE,
    SharedTokens,
    StaleTokenWrite,
    account_of,
)
from bridge.cluster import LeaseBusy, connect
from bridge.config import MomoHubConfig, SandboxConfig
from tests.conftest import Bridge
from tests.e2e.test_health import wait_state
from tests.e2e.test_momohub import MOMO, reply_text, send
from tests.support.hub_client import eventually

EMAIL = "cluster@sandbox.test"
PASSWORD = "right-password"
PREFIX = "test:"


class Controls:
    """The standalone sandbox's test controls (/_sandbox/...) and counters."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.base = server.base_url

    async def call(self, method: str, path: str, json: Any = None) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.base + path, json=json) as r:
                assert r.status < 300, await r.text()
                return await r.json() if r.content_type == "application/json" else None

    async def stats(self) -> dict[str, Any]:
        return await self.call("GET", "/_sandbox/stats")

    async def expire_tokens(self) -> None:
        await self.call("POST", "/_sandbox/expire-tokens")

    async def refresh_attempts(self) -> int:
        return (await self.stats())["requests"].get("POST /v1/auth/refresh", 0)


async def start_sandbox(**settings: Any) -> SandboxServer:
    config = SandboxConfig(**({"token_delay": 0.0, "fault_injection": True} | settings))
    server = SandboxServer(config, [])
    await server.start()
    await server.ensure_account(EMAIL, PASSWORD)
    return server


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = await start_sandbox()
    yield server
    await server.stop()


@pytest.fixture
async def short_lived_sandbox() -> AsyncIterator[SandboxServer]:
    """Access tokens live 4 s: the scheduled refresh comes ~2 s after each new pair."""
    server = await start_sandbox(access_token_ttl=4.0)
    yield server
    await server.stop()


def momohub(sandbox: SandboxServer) -> dict[str, Any]:
    return {
        "enabled": True,
        "base_url": sandbox.base_url,
        "email": EMAIL,
        "password": PASSWORD,
        "list_public": True,
        "default_character": "Momo",
    }


def cluster(redis_url: str, node_id: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "node_id": node_id,
        "heartbeat": 0.2,
        "node_ttl": 1.0,
        "prefix": PREFIX,
    }


async def three_nodes(
    bridge_factory: Any, postgres_dsn: str, redis_url: str, sandbox: SandboxServer
) -> list[Bridge]:
    nodes = []
    for name in ("node-a", "node-b", "node-c"):
        nodes.append(
            await bridge_factory(
                storage={"url": postgres_dsn},
                cluster=cluster(redis_url, name),
                momohub=momohub(sandbox),
            )
        )
    for b in nodes:
        await wait_state(b, "momohub", "ok")
    return nodes


def store_of(redis: aioredis.Redis, sandbox: SandboxServer, node: str = "reader") -> SharedTokens:
    account = account_of(MomoHubConfig(email=EMAIL, password=PASSWORD))
    assert account is not None
    return SharedTokens(redis, node, base_url=sandbox.base_url, account=account, prefix=PREFIX)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


# ----- three bridges, one account ---------------------------------------------------------------

# The database and Redis come first, so they go last: the bridges stop before them.


async def test_one_momohub_refresh_for_three_nodes(
    postgres_dsn: str,
    redis_url: str,
    redis: aioredis.Redis,
    sandbox: SandboxServer,
    bridge_factory,
) -> None:
    hub = Controls(sandbox)
    nodes = await three_nodes(bridge_factory, postgres_dsn, redis_url, sandbox)
    stats = await hub.stats()
    assert stats["sign_ins"] == 1, stats  # the first node signed in; the others took its pair
    assert stats["refreshes"] == 0
    stored = await store_of(redis, sandbox).read()
    assert stored is not None and stored.generation == 1 and stored.how == "sign-in"
    assert {b.app.momohub._access for b in nodes} == {stored.access}

    tabs = [await b.client(f"user-{i}") for i, b in enumerate(nodes)]
    for i, tab in enumerate(tabs):
        _, frames = await send(tab, MOMO, f"hello {i}")
        assert reply_text(frames) == f"Momo: you said hello {i}"

    for round_ in (1, 2):
        await hub.expire_tokens()
        # Every node meets the expired token at once: a 401 each, one refresh among them.
        results = await asyncio.gather(
            *(send(tab, MOMO, f"round {round_} via {i}") for i, tab in enumerate(tabs))
        )
        for i, (_, frames) in enumerate(results):
            assert reply_text(frames) == f"Momo: you said round {round_} via {i}"
        stats = await hub.stats()
        assert stats["refreshes"] == round_, stats
        # No refresh was refused (none spent a rotated token) and nobody signed in again.
        assert await hub.refresh_attempts() == round_
        assert stats["sign_ins"] == 1, stats
        stored = await store_of(redis, sandbox).read()
        assert stored is not None and stored.generation == 1 + round_
        assert stored.how == "refresh"
        assert {b.app.momohub._access for b in nodes} == {stored.access}


async def test_the_scheduled_refresh_runs_once_for_three_nodes(
    postgres_dsn: str,
    redis_url: str,
    redis: aioredis.Redis,
    short_lived_sandbox: SandboxServer,
    bridge_factory,
) -> None:
    sandbox = short_lived_sandbox
    hub = Controls(sandbox)
    nodes = await three_nodes(bridge_factory, postgres_dsn, redis_url, sandbox)
    # All three schedule a refresh before the token they share expires; one of them does it
    # and the others take up its pair. Two periods of it:
    await eventually(lambda: _refreshes_at_least(hub, 2), timeout=15.0, what="two refreshes")
    stats = await hub.stats()
    stored = await store_of(redis, sandbox).read()
    assert stored is not None
    assert stats["sign_ins"] == 1, stats
    # Each refresh made exactly one stored generation, and none was refused.
    assert stored.generation == 1 + stats["refreshes"]
    assert await hub.refresh_attempts() == stats["refreshes"]
    for i, b in enumerate(nodes):
        _, frames = await send(await b.client(f"late-{i}"), MOMO, "still signed in?")
        assert reply_text(frames) == "Momo: you said still signed in?"
    assert (await hub.stats())["sign_ins"] == 1


async def _refreshes_at_least(hub: Controls, n: int) -> bool:
    return (await hub.stats())["refreshes"] >= n


# ----- clients sharing a store, without bridges ------------------------------------------------


async def clients(
    redis: aioredis.Redis, sandbox: SandboxServer, count: int = 3
) -> list[MomoHubClient]:
    config = MomoHubConfig(base_url=sandbox.base_url, email=EMAIL, password=PASSWORD)
    return [
        MomoHubClient(config, shared_tokens=store_of(redis, sandbox, f"node-{i}"))
        for i in range(count)
    ]


async def test_clients_starting_together_sign_in_once(
    redis: aioredis.Redis, sandbox: SandboxServer
) -> None:
    hub = Controls(sandbox)
    nodes = await clients(redis, sandbox)
    try:
        await asyncio.gather(*(c.start() for c in nodes))
        assert (await hub.stats())["sign_ins"] == 1
        assert len({c._access for c in nodes}) == 1
        await hub.expire_tokens()
        users = await asyncio.gather(*(c.get_me() for c in nodes))
        assert {u.email for u in users} == {EMAIL}
        stats = await hub.stats()
        assert stats["refreshes"] == 1 and stats["sign_ins"] == 1, stats
    finally:
        for c in nodes:
            await c.close()


async def test_a_spent_refresh_token_ends_in_one_sign_in(
    redis: aioredis.Redis, sandbox: SandboxServer
) -> None:
    """A holder refreshed and died before storing the new pair: the stored refresh token is
    spent. The next holder's refresh is refused; it re-reads, finds nothing newer, and signs in
    once for everyone (no loop)."""
    hub = Controls(sandbox)
    nodes = await clients(redis, sandbox)
    try:
        await asyncio.gather(*(c.start() for c in nodes))
        stored = await store_of(redis, sandbox).read()
        assert stored is not None
        async with aiohttp.ClientSession() as http:
            async with http.post(
                sandbox.base_url + "/auth/refresh", json={"refreshToken": stored.refresh}
            ) as r:
                assert r.status == 200
        await hub.expire_tokens()
        users = await asyncio.gather(*(c.get_me() for c in nodes))
        assert {u.email for u in users} == {EMAIL}
        stats = await hub.stats()
        assert stats["sign_ins"] == 2, stats  # the first, and the one after the spent token
        assert await hub.refresh_attempts() == 2  # ours above, and the one refused
        after = await store_of(redis, sandbox).read()
        assert after is not None and after.how == "sign-in" and after.generation == 2
        assert {c._access for c in nodes} == {after.access}
    finally:
        for c in nodes:
            await c.close()


# ----- the token store ---------------------------------------------------------------------------


async def test_store_reads_writes_and_numbers_pairs(
    redis: aioredis.Redis, sandbox: SandboxServer
) -> None:
    store = store_of(redis, sandbox, "node-a")
    assert await store.read() is None
    async with store.hold(wait=0) as kept:
        first = await store.write(
            access="a1",
            refresh="r1",
            access_expires_at=1_900_000_000.25,
            fence=kept.token,
            how="sign-in",
            user={"id": "u1", "email": EMAIL},
        )
    assert first.generation == 1
    read = await store.read()
    assert read == first
    assert read.access_expires_at == 1_900_000_000.25 and read.node == "node-a"
    async with store.hold(wait=0) as kept:
        second = await store.write(
            access="a2", refresh="r2", access_expires_at=None, fence=kept.token, how="refresh"
        )
    assert second.generation == 2
    read = await store.read()
    assert read is not None and (read.access, read.refresh, read.generation) == ("a2", "r2", 2)
    assert read.access_expires_at is None and read.user is None and read.fence == second.fence
    # The key lives under the cluster's prefix, named by MomoHub's address and the account.
    assert store.key == f"{PREFIX}momohub:tokens:{sandbox.base_url}:{EMAIL}"
    assert await redis.exists(store.key) == 1


async def test_store_refuses_a_writer_whose_lease_was_taken_over(
    redis: aioredis.Redis, sandbox: SandboxServer
) -> None:
    a = store_of(redis, sandbox, "node-a")
    b = store_of(redis, sandbox, "node-b")
    # a's lease runs out (a paused process, say) and b takes it over with a newer token.
    old = await a.leases.acquire(LEASE, 0.1)
    assert old is not None
    await asyncio.sleep(0.2)
    new = await b.leases.acquire(LEASE, 5.0)
    assert new is not None and new.token > old.token
    written = await b.write(
        access="b1", refresh="rb", access_expires_at=None, fence=new.token, how="sign-in"
    )
    with pytest.raises(StaleTokenWrite):
        await a.write(
            access="a1", refresh="ra", access_expires_at=None, fence=old.token, how="refresh"
        )
    assert await a.read() == written  # b's pair stands
    # While b holds the lease, a waits for it at most as long as it said, then gives up.
    with pytest.raises(LeaseBusy):
        async with a.hold(wait=0.2):
            pass
    assert await b.leases.release(new)
    async with a.hold(wait=1.0) as kept:
        assert kept.token > new.token
        again = await a.write(
            access="a2", refresh="ra2", access_expires_at=None, fence=kept.token, how="refresh"
        )
    assert again.generation == written.generation + 1


def test_account_names() -> None:
    assert account_of(MomoHubConfig(email=" Bot@Example.Test ", password="x")) == (
        "bot@example.test"
    )
    by_token = account_of(MomoHubConfig(refresh_token="secret-refresh"))
    assert by_token is not None and by_token.startswith("token-")
    assert "secret" not in by_token
    assert account_of(MomoHubConfig()) is None
