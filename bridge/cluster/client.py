"""The Redis client the cluster primitives share, their errors, and the bounded call they all use.

Every primitive takes a `redis.asyncio.Redis` (made by `connect()` here or by the caller) and a
key `prefix`, so several deployments, or a test, can share one Redis without seeing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

DEFAULT_PREFIX = "momobridge:"
# One Redis command, from asking the pool for a connection to the reply. Generous for loopback
# or a LAN; a Redis slower than this is treated as unavailable, never waited on forever.
DEFAULT_OP_TIMEOUT = 5.0
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# Connections one client may open; callers past that wait (at most POOL_TIMEOUT) for a free one
# instead of opening connections without bound under load.
MAX_CONNECTIONS = 32
POOL_TIMEOUT = 5.0


class ClusterError(Exception):
    """Base of the errors of bridge.cluster."""


class ClusterUnavailable(ClusterError):
    """Redis could not be reached or answered with an error; the message says which call."""


class ClusterTimeout(ClusterUnavailable, TimeoutError):
    """A call to Redis took longer than its timeout."""


class PayloadTooLarge(ClusterError, ValueError):
    """A payload over the size the cluster carries."""


def connect(
    url: str,
    *,
    client_name: str | None = None,
    socket_timeout: float = SOCKET_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    pool_timeout: float = POOL_TIMEOUT,
) -> aioredis.Redis:
    """A client for `url` (`redis://host:port/db`, `rediss://` for TLS) with every wait bounded:
    socket reads and connects, and the wait for a pooled connection. Nothing is sent until the
    first command. Close it with `await client.aclose()`.

    redis-py's own retry is kept short (two quick retries on a dropped connection): the callers
    here have their own cadence (heartbeats, renewals, the bus's reconnect backoff), and a call
    should fail within its timeout rather than sit in a 10 s backoff inside the library."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name=client_name,
    )
    client = aioredis.Redis(connection_pool=pool)
    # The client owns the pool it was given here, so aclose() closes both.
    client.auto_close_connection_pool = True
    return client


async def call(what: str, aw: Awaitable[T], timeout: float = DEFAULT_OP_TIMEOUT) -> T:
    """Awaits one Redis call with a timeout, turning redis-py's and asyncio's failures into
    ClusterUnavailable / ClusterTimeout that say `what` failed."""
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except (TimeoutError, RedisTimeoutError) as e:
        # asyncio's own timeout, or redis-py's socket timeout (its TimeoutError is no builtin one).
        raise ClusterTimeout(f"{what}: no answer from Redis in time ({timeout}s): {e}") from e
    except RedisError as e:
        raise ClusterUnavailable(f"{what}: {type(e).__name__}: {e}") from e
    except OSError as e:
        raise ClusterUnavailable(f"{what}: {e}") from e


def positive(name: str, value: float) -> float:
    """`value` as a float, or ValueError naming the parameter when it is not > 0."""
    value = float(value)
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def millis(seconds: float) -> int:
    """Seconds as Redis PX milliseconds, at least 1 (PX 0 is an error)."""
    return max(1, round(seconds * 1000))


def text(value: Any) -> str:
    """A Redis reply (bytes: the clients do not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
