"""`once`: the first caller cluster-wide wins, for a while.

For "a scheduled job fires once per due time" (key: job id + due time) and "a duplicate QQ event
is dropped" (key: the event's id). The keys are often derived from outside input, so each one
expires after `ttl`: the set of them is bounded by the rate of events times the ttl.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from bridge.cluster.client import DEFAULT_OP_TIMEOUT, DEFAULT_PREFIX, call, millis, positive

MAX_KEY_BYTES = 1024  # a longer key is a bug upstream, not a reason to store kilobytes in Redis


async def once(
    redis: aioredis.Redis,
    key: str,
    ttl: float,
    *,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = DEFAULT_OP_TIMEOUT,
) -> bool:
    """True for exactly one caller cluster-wide among all that pass the same `key` within `ttl`
    seconds of the first; False for the others. Raises ClusterUnavailable if Redis cannot say:
    the caller decides whether to skip the work (at most once) or do it anyway (at least once)."""
    ttl = positive("ttl", ttl)
    if not key:
        raise ValueError("once: empty key")
    full = f"{prefix}once:{key}"
    if len(full.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"once: key longer than {MAX_KEY_BYTES} bytes")
    # SET NX is atomic on the server: of concurrent callers exactly one creates the key.
    won = await call(
        f"once({key!r})", redis.set(full, b"1", nx=True, px=millis(ttl)), timeout=timeout
    )
    return bool(won)
