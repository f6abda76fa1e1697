"""This bridge as a node of a cluster (``[cluster] redis_url``): its Redis client, its entry in
the node registry, and what readiness (/readyz, /status, the console) shows of the cluster.

A node that cannot reach Redis at start does not start: the bridges' shared state would be
split without anyone noticing. Later trouble is reported (component ``cluster``) while the
registry keeps heartbeating, so a Redis that comes back is used again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from typing import Any

import redis.asyncio as aioredis
import structlog

from bridge.cluster.bus import Bus
from bridge.cluster.calls import NodeCalls
from bridge.cluster.client import ClusterError, call, connect
from bridge.cluster.departures import Departures
from bridge.cluster.once import once
from bridge.cluster.pushes import PushFanout
from bridge.cluster.registry import NodeRegistry, identity
from bridge.cluster.turns import ConversationTurns
from bridge.config import ClusterConfig
from bridge.engine import Engine
from bridge.health import OK, UNREACHABLE, Health
from bridge.outbox import Outbox

log = structlog.get_logger(__name__)

COMPONENT = "cluster"
# Nodes joining in a row get different push id slots; ids stay far below 2**53 (JSON numbers).
PUSH_ID_SLOTS = 1024
REPORT_TIMEOUT = 1.5


def default_node_id() -> str:
    """The host name, the process id and a random part: readable in /readyz, and unique even
    for containers that share a host name and all run as pid 1."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class ClusterNode:
    def __init__(self, config: ClusterConfig, info: dict[str, Any]) -> None:
        self.config = config
        self.node_id = config.node_id or default_node_id()
        self._started = time.time()
        self.redis: aioredis.Redis = connect(config.redis_url, client_name=self.node_id)
        self.registry = NodeRegistry(
            self.redis,
            self.node_id,
            {**info, "started": self._started},
            heartbeat=config.heartbeat,
            ttl=config.node_ttl,
            prefix=config.prefix,
        )
        self.bus = Bus(self.redis, self.node_id, prefix=config.prefix)
        # Request/response to other nodes (bridge.cluster.calls); features register handlers.
        self.calls = NodeCalls(self.bus, self.node_id)
        # The cluster-wide order of each conversation's turns (the engine's gate).
        self.turns = ConversationTurns(
            self.redis,
            self.bus,
            self.registry.identity,
            prefix=config.prefix,
            alive=self.registry.alive,
            tick=config.heartbeat / 2,
        )
        # Replies a dead node left running; the app adds what to settle (bridge.cluster
        # departures).
        self.departures = Departures(self._live, self.once, poll=config.heartbeat)
        self._pushes: PushFanout | None = None

    async def start(self, outbox: Outbox) -> None:
        """Join the registry and the pushes of the other nodes; ClusterError (with the reason)
        when Redis cannot be reached."""
        await self.registry.start()
        # Push ids are made from the clock on each node: a slot of its own keeps two nodes
        # from making the same id in the same millisecond.
        joined = await call("take a push id slot", self.redis.incr(f"{self.config.prefix}slots"))
        outbox.id_space(int(joined) % PUSH_ID_SLOTS, PUSH_ID_SLOTS)
        self._pushes = PushFanout(self.bus, outbox)
        await self._pushes.start()
        self.turns.before_finish = self._pushes.flushed
        await self.calls.start()
        log.info("cluster.joined", node=self.node_id)

    async def order_turns(self, engine: Engine) -> None:
        """From now on the engine runs each conversation's turns in the cluster's order."""
        await self.turns.start(engine.stop_nowait)
        engine.gate = self.turns

    @property
    def identity(self) -> str:
        """This run of this node (what its records and tickets are tagged with)."""
        return self.registry.identity

    async def _live(self) -> set[str]:
        """The live node runs."""
        return {identity(n["node_id"], n.get("run", "")) for n in await self.registry.nodes()}

    async def close(self) -> None:
        try:
            await self.departures.close()
            await self.turns.close()
            await self.calls.close()
            if self._pushes is not None:
                await self._pushes.stop()
            await self.bus.close()
            await self.registry.close()
        finally:
            await self.redis.aclose()

    async def announce(self, info: dict[str, Any]) -> None:
        """Publish this node's info now (its port, once it listens); later heartbeats carry it
        anyway, so Redis failing here is only logged."""
        try:
            await self.registry.announce({**info, "started": self._started})
        except ClusterError as e:
            log.warning("cluster.announce_failed", error=str(e))

    async def once(self, key: str, ttl: float) -> bool:
        """True for the first caller cluster-wide of ``key`` within ``ttl`` (see once)."""
        return await once(self.redis, key, ttl, prefix=self.config.prefix)

    async def report(self, health: Health) -> None:
        """A /readyz probe: the live nodes, or why they cannot be listed."""
        try:
            # Well inside the probe's own limit (PROBE_TIMEOUT), so a Redis that hangs is
            # reported here rather than cut off unreported.
            async with asyncio.timeout(REPORT_TIMEOUT):
                nodes = await self.registry.nodes()
        except TimeoutError:
            health.set(COMPONENT, UNREACHABLE, f"Redis did not answer in {REPORT_TIMEOUT:g} s")
            health.set_section("nodes", [])
            return
        except ClusterError as e:
            health.set(COMPONENT, UNREACHABLE, f"Redis: {e}")
            health.set_section("nodes", [])
            return
        names = ", ".join(n["node_id"] for n in nodes)
        if not self.registry.alive():
            # Its turns are refused meanwhile (the others may count it as gone).
            health.set(
                COMPONENT,
                UNREACHABLE,
                f"this node ({self.node_id}) could not renew its place in the cluster; "
                f"{len(nodes)} nodes listed ({names})",
            )
        else:
            health.set(COMPONENT, OK, f"{len(nodes)} nodes ({names}); this one is {self.node_id}")
        health.set_section("nodes", [_public(n, self.node_id) for n in nodes])


def _public(node: dict[str, Any], me: str) -> dict[str, Any]:
    out = {k: node[k] for k in ("node_id", "since", "seen", "host", "port", "started") if k in node}
    if node.get("node_id") == me:
        out["self"] = True
    return out
