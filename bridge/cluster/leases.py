"""Leases: at most one holder of a name cluster-wide at a time, with fencing tokens.

A lease is a key `lease:<name>` holding `"<node_id>:<token>"` with a PX expiry. The token comes
from INCR on `fence:<name>`, a counter that never expires, so tokens for a name only ever grow,
across holders and across expiries: whatever the guarded work writes can carry the token, and a
store that remembers the highest token it saw refuses a holder whose lease already expired and
was taken over (a paused process waking up, say). Acquire, renew and release are Lua scripts, so
the check "still mine, with this token" and the change are one step on the server.

Lease names come from code (a job, a shard), not from user input: each name keeps its fence
counter for good, which is what makes tokens strictly increasing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from bridge.cluster.client import (
    DEFAULT_OP_TIMEOUT,
    DEFAULT_PREFIX,
    ClusterError,
    call,
    millis,
    positive,
    text,
)
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

# KEYS: lease, fence. ARGV: node id, ttl ms. The token, or nil while someone holds the lease
# (no token is spent on a failed attempt).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lease. ARGV: "<node>:<token>", ttl ms. 1 if it was that holder's and is extended.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""
# KEYS: lease. ARGV: "<node>:<token>". 1 if it was that holder's and is gone now.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""

ACQUIRE_POLL_MAX = 1.0  # hold(wait=...) retries at most this far apart


class LeaseBusy(ClusterError):
    """hold() could not get the lease: someone else holds it."""

    def __init__(self, name: str, holder: tuple[str, int] | None) -> None:
        who = f"node {holder[0]!r} (token {holder[1]})" if holder else "another node"
        super().__init__(f"lease {name!r} is held by {who}")
        self.name = name
        self.holder = holder


@dataclass(frozen=True)
class Lease:
    """One holding of a lease. `token` is strictly greater than that of every earlier holding of
    the same name, by any node."""

    name: str
    token: int
    node_id: str

    @property
    def value(self) -> str:
        return f"{self.node_id}:{self.token}"


class Leases:
    """Leases taken by one node (`node_id` names it in the lease's value)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        if not node_id:
            raise ValueError("Leases: empty node_id")
        self._redis = redis
        self.node_id = node_id
        self._prefix = prefix
        self.timeout = timeout
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        if not name:
            raise ValueError("empty lease name")
        return f"{self._prefix}lease:{name}"

    async def acquire(self, name: str, ttl: float, *, timeout: float | None = None) -> Lease | None:
        """The lease for `ttl` seconds with a new token, or None while another holding (this
        node's included) is live."""
        key = self._key(name)
        token = await call(
            f"acquire lease {name!r}",
            self._acquire(
                keys=[key, f"{self._prefix}fence:{name}"],
                args=[self.node_id, millis(positive("ttl", ttl))],
            ),
            timeout=self.timeout if timeout is None else timeout,
        )
        if token is None:
            return None
        return Lease(name=name, token=int(token), node_id=self.node_id)

    async def renew(self, lease: Lease, ttl: float, *, timeout: float | None = None) -> bool:
        """Extends the lease to `ttl` seconds from now; False (and nothing changed) unless it is
        still this very holding: same node and same token."""
        done = await call(
            f"renew lease {lease.name!r}",
            self._renew(
                keys=[self._key(lease.name)], args=[lease.value, millis(positive("ttl", ttl))]
            ),
            timeout=self.timeout if timeout is None else timeout,
        )
        return int(done) == 1

    async def release(self, lease: Lease, *, timeout: float | None = None) -> bool:
        """Gives the lease up; False (and nothing changed) unless it is still this holding."""
        done = await call(
            f"release lease {lease.name!r}",
            self._release(keys=[self._key(lease.name)], args=[lease.value]),
            timeout=self.timeout if timeout is None else timeout,
        )
        return int(done) == 1

    async def holder(self, name: str) -> tuple[str, int] | None:
        """(node_id, token) of the live holding of `name`, or None."""
        value = await call(
            f"read lease {name!r}", self._redis.get(self._key(name)), timeout=self.timeout
        )
        if value is None:
            return None
        held = text(value)
        # rpartition: a node id may itself contain ':'; the token never does.
        node_id, _, token = held.rpartition(":")
        if not node_id or not token.isdigit():
            raise ClusterError(f"lease {name!r} holds a malformed value {held[:100]!r}")
        return node_id, int(token)

    def hold(self, name: str, ttl: float, *, wait: float = 0.0) -> KeepLease:
        """`async with leases.hold(name, ttl) as kept:` takes the lease (retrying for up to
        `wait` seconds, else LeaseBusy), keeps renewing it every ttl/3 in an owned task, and
        releases it on exit. `kept.lost` is set once the lease can no longer be counted on."""
        return KeepLease(self, name, ttl, wait=wait)


class KeepLease:
    """A lease held for the duration of an `async with` block.

    Work guarded by it should watch `lost` (an asyncio.Event) and stop when it is set: the
    renewal was refused (the lease expired and someone else may hold it), or no renewal could be
    confirmed before the lease's expiry minus a margin (Redis unreachable: the lease may expire
    on the server without us knowing). `lost` is also set on exit. Writes the work makes should
    carry `token` where the store can check it (fencing), since `lost` is only ever a warning
    that arrives after the fact."""

    def __init__(self, leases: Leases, name: str, ttl: float, *, wait: float = 0.0) -> None:
        self._leases = leases
        self.name = name
        self.ttl = positive("ttl", ttl)
        self.wait = max(0.0, float(wait))
        self.lost = asyncio.Event()
        self.lease: Lease | None = None
        self._tasks = TaskSet(f"cluster.lease:{name}")

    @property
    def token(self) -> int:
        if self.lease is None:
            raise RuntimeError("KeepLease not entered")
        return self.lease.token

    async def __aenter__(self) -> KeepLease:
        if self.lease is not None:
            raise RuntimeError("KeepLease already entered")
        started = time.monotonic()
        deadline = started + self.wait
        poll = min(0.05, self.ttl / 10)
        while True:
            started = time.monotonic()
            lease = await self._leases.acquire(self.name, self.ttl)
            if lease is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseBusy(self.name, await self._holder_or_none())
            # Polling: Redis pub/sub could announce releases, but an expiry announces nothing.
            await asyncio.sleep(min(poll, left))
            poll = min(poll * 2, ACQUIRE_POLL_MAX)
        self.lease = lease
        self._tasks.spawn(self._keep(started + self.ttl), name=f"cluster.keep_lease:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._tasks.cancel_all()
        lease, was_lost = self.lease, self.lost.is_set()
        self.lost.set()
        if lease is None or was_lost:
            return
        try:
            await self._leases.release(lease)
        except ClusterError as e:
            # It expires by itself within ttl; the next holder gets a higher token regardless.
            log.warning("cluster.lease_release_failed", lease=self.name, error=str(e))

    async def _holder_or_none(self) -> tuple[str, int] | None:
        try:
            return await self._leases.holder(self.name)
        except ClusterError:
            return None

    async def _keep(self, expires: float) -> None:
        """Renews every ttl/3. `expires` is when the lease ends at the latest as far as we can
        tell: the ttl counted from when the last successful call was sent (the server counts
        from a little later, so this errs early)."""
        assert self.lease is not None
        interval = self.ttl / 3
        margin = self.ttl / 10  # give up this long before `expires`: time for the work to stop
        retry = self.ttl / 10
        failing = False
        while True:
            now = time.monotonic()
            give_up = expires - margin
            await asyncio.sleep(max(0.0, min(retry if failing else interval, give_up - now)))
            sent = time.monotonic()
            left = expires - margin - sent
            if left <= 0:
                self._lose("no renewal confirmed before the lease ran out")
                return
            try:
                ok = await self._leases.renew(
                    self.lease, self.ttl, timeout=min(self._leases.timeout, left)
                )
            except ClusterError as e:
                if not failing:
                    log.warning("cluster.lease_renew_failed", lease=self.name, error=str(e))
                failing = True
                continue
            if not ok:
                self._lose("the lease was taken or expired")
                return
            failing = False
            expires = sent + self.ttl

    def _lose(self, why: str) -> None:
        log.warning("cluster.lease_lost", lease=self.name, token=self.token, reason=why)
        self.lost.set()
