"""MomoHub's token pair shared by the nodes of a cluster (``[cluster] redis_url``).

MomoHub rotates refresh tokens: each one works once. Nodes refreshing on their own would use the
same refresh token, and all but the first would fail and sign in again (each sign-in a new
session), so the pair lives in Redis instead, one key per MomoHub account::

    <prefix>momohub:tokens:<base_url>:<account>
    {"access": ..., "refresh": ..., "access_expires_at": <epoch s or null>, "generation": n,
     "fence": <lease token of the writer>, "node": ..., "how": "sign-in" | "refresh" | "config",
     "user": <the profile as JSON text, or null>}

Every node reads its access token from there; only the holder of the lease ``momohub:auth`` (see
`bridge.cluster.leases`) signs in or refreshes, and writes the new pair. The write is one Lua
step that refuses a writer whose fencing token is below the one stored (a holder whose lease
expired while it was paused, overtaken by a newer holder), and numbers the pairs: ``generation``
goes up by one with every write. The auth layer (``auth.py``) decides when to read and when to
renew; this module only stores.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bridge.cluster.client import DEFAULT_OP_TIMEOUT, DEFAULT_PREFIX, ClusterError, call
from bridge.cluster.leases import KeepLease, Leases
from bridge.config import MomoHubConfig

__all__ = ["LEASE", "LEASE_TTL", "SharedTokens", "StaleTokenWrite", "StoredTokens", "account_of"]

LEASE = "momohub:auth"
# The lease is renewed every third of this while the holder works (KeepLease), so it only runs
# out for a holder that died or lost Redis; then the next node may take over this much later.
LEASE_TTL = 10.0

# KEYS: the tokens key. ARGV: the new record (JSON, without generation and fence), the writer's
# fencing token. The new generation, or -(stored fence) when that fence is above the writer's.
_WRITE = """
local fence = tonumber(ARGV[2])
local generation = 1
local old = redis.call('GET', KEYS[1])
if old then
    local ok, stored = pcall(cjson.decode, old)
    if ok and type(stored) == 'table' then
        local stored_fence = tonumber(stored['fence']) or 0
        if stored_fence > fence then
            return -stored_fence
        end
        generation = (tonumber(stored['generation']) or 0) + 1
    end
end
local record = cjson.decode(ARGV[1])
record['generation'] = generation
record['fence'] = fence
redis.call('SET', KEYS[1], cjson.encode(record))
return generation
"""


class StaleTokenWrite(ClusterError):
    """A write under a lease that has since been taken over (its fencing token is too low)."""

    def __init__(self, fence: int, stored_fence: int) -> None:
        super().__init__(
            f"MomoHub tokens written under lease token {stored_fence}: "
            f"a write under the older token {fence} is refused"
        )
        self.fence = fence
        self.stored_fence = stored_fence


@dataclass(frozen=True)
class StoredTokens:
    access: str
    refresh: str
    access_expires_at: float | None
    generation: int
    fence: int = 0
    node: str = ""
    how: str = ""
    user: dict[str, Any] | None = None

    def expired(self, margin: float = 0.0) -> bool:
        """Known to expire within `margin` seconds from now (unknown lifetimes never do)."""
        return self.access_expires_at is not None and self.access_expires_at <= time.time() + margin


def account_of(config: MomoHubConfig) -> str | None:
    """What names the account in the key: its email, else a digest of the configured token (the
    same tokens configured on every node), else None (no account: nothing to share)."""
    if config.email:
        return config.email.strip().lower()
    given = config.refresh_token or config.access_token
    if given:
        return "token-" + hashlib.sha256(given.encode()).hexdigest()[:16]
    return None


class SharedTokens:
    """The token pair of one MomoHub account in Redis, and the lease that guards renewing it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        *,
        base_url: str,
        account: str,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_OP_TIMEOUT,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        if not account:
            raise ValueError("SharedTokens: empty account")
        self._redis = redis
        self.node_id = node_id
        self.key = f"{prefix}momohub:tokens:{base_url.rstrip('/')}:{account}"
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.leases = Leases(redis, node_id, prefix=prefix, timeout=timeout)
        self._write = redis.register_script(_WRITE)

    async def read(self) -> StoredTokens | None:
        """The stored pair, or None when there is none (or it is unreadable: then it is as good
        as none, and the next write replaces it)."""
        raw = await call("read MomoHub tokens", self._redis.get(self.key), timeout=self.timeout)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            user = data.get("user")
            return StoredTokens(
                access=str(data["access"]),
                refresh=str(data.get("refresh") or ""),
                access_expires_at=_float_or_none(data.get("access_expires_at")),
                generation=int(data["generation"]),
                fence=int(data.get("fence") or 0),
                node=str(data.get("node") or ""),
                how=str(data.get("how") or ""),
                user=json.loads(user) if isinstance(user, str) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    async def write(
        self,
        *,
        access: str,
        refresh: str,
        access_expires_at: float | None,
        fence: int,
        how: str,
        user: dict[str, Any] | None = None,
    ) -> StoredTokens:
        """Store a new pair written under the lease holding `fence`; returns it with its
        generation. StaleTokenWrite when a newer holder has written meanwhile."""
        record = {
            "access": access,
            "refresh": refresh,
            # Milliseconds are plenty; fewer digits also survive Lua's number formatting.
            "access_expires_at": None if access_expires_at is None else round(access_expires_at, 3),
            "node": self.node_id,
            "how": how,
            "user": None if user is None else json.dumps(user),
        }
        body = json.dumps({k: v for k, v in record.items() if v is not None})
        result = int(
            await call(
                "write MomoHub tokens",
                self._write(keys=[self.key], args=[body, int(fence)]),
                timeout=self.timeout,
            )
        )
        if result < 0:
            raise StaleTokenWrite(int(fence), -result)
        return StoredTokens(
            access=access,
            refresh=refresh,
            access_expires_at=record["access_expires_at"],  # type: ignore[arg-type]
            generation=result,
            fence=int(fence),
            node=self.node_id,
            how=how,
            user=user,
        )

    def hold(self, *, wait: float) -> KeepLease:
        """``async with tokens.hold(wait=...) as kept:`` the right to renew the pair; LeaseBusy
        after `wait` seconds of another node holding it."""
        return self.leases.hold(LEASE, self.lease_ttl, wait=wait)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
