"""Scale-out primitives: several bridge instances coordinating through one Redis.

No protocol of our own between bridges: Redis holds all shared coordination state, so a bridge
that dies takes nothing with it that the others need (its keys expire).

- `connect(url)`: a redis.asyncio client with every wait bounded;
- `NodeRegistry`: which bridges are alive (heartbeated keys with an expiry);
- `once(redis, key, ttl)`: the first caller cluster-wide wins (jobs, duplicate events);
- `Leases` / `Lease` / `KeepLease`: one holder at a time, with fencing tokens;
- `Bus`: pub/sub of bytes between bridges, with a reconnecting reader.
"""

from bridge.cluster.bus import MAX_PAYLOAD, Bus, Handler
from bridge.cluster.client import (
    DEFAULT_PREFIX,
    ClusterError,
    ClusterTimeout,
    ClusterUnavailable,
    PayloadTooLarge,
    connect,
)
from bridge.cluster.leases import KeepLease, Lease, LeaseBusy, Leases
from bridge.cluster.once import once
from bridge.cluster.registry import NodeRegistry

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_PAYLOAD",
    "Bus",
    "ClusterError",
    "ClusterTimeout",
    "ClusterUnavailable",
    "Handler",
    "KeepLease",
    "Lease",
    "LeaseBusy",
    "Leases",
    "NodeRegistry",
    "PayloadTooLarge",
    "connect",
    "once",
]
