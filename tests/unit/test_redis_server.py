"""tests/support/redis_server.py: the throwaway redis-server and its fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support import redis_server as support
from tests.support.redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    RedisUnavailable,
    redis_server,
    redis_url,
)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811 - fixture
    c = aioredis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    yield c
    await c.aclose()


async def test_answers_ping(client: aioredis.Redis, redis_url: str) -> None:  # noqa: F811
    assert redis_url.startswith("redis://127.0.0.1:")
    assert await client.ping() is True


@pytest.mark.parametrize("round_", [1, 2])
async def test_each_test_starts_empty(client: aioredis.Redis, round_: int) -> None:
    # Whichever round runs second finds nothing of the first: the fixture flushed it.
    assert await client.dbsize() == 0
    await client.set("left-behind", round_)
    await client.set("also-left-behind", round_)
    assert await client.dbsize() == 2


async def test_persistence_is_off(client: aioredis.Redis) -> None:
    config = await client.config_get("save")
    assert config["save"] in ("", b"")
    assert (await client.config_get("appendonly"))["appendonly"] in ("no", b"no")


def test_start_and_stop_a_server_of_its_own() -> None:
    server = RedisServer()
    try:
        server.start()
    except RedisUnavailable as e:
        support.unavailable(str(e))
    try:
        port, tmp = server.port, server.dir
        assert tmp.is_dir()
        assert support.ping(port)
        assert server.running()
    finally:
        server.stop()
    assert not support.ping(port)
    assert not tmp.exists()
    server.stop()  # twice is fine


def test_missing_binary_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(support.BIN_ENV, str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RedisUnavailable, match="not an executable"):
        RedisServer().start()


def test_unavailable_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redis-server not available: gone"):
        support.unavailable("gone")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="install Debian's redis-server package"):
        support.unavailable("gone")
