"""Which bridge instances are alive: each heartbeats a key that expires unless renewed.

Layout under the prefix:

- `node:<node_id>`: a hash {info: JSON, since: ms, seen: ms} with a PX expiry of `ttl`, renewed
  every `heartbeat`. Redis drops it by itself when the node stops renewing, so a crashed node
  disappears after at most `ttl` without anyone cleaning up after it.
- `nodes`: a sorted set of node ids scored by when their key expires (ms), so listing needs no
  SCAN over the keyspace. Every heartbeat prunes members already past their expiry, and `nodes()`
  drops members whose key is gone; the set stays as small as the set of live nodes.

Times are Redis's clock (TIME, inside the heartbeat script), not each node's: nodes whose clocks
disagree still agree on who was seen when.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import orjson
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

MAX_INFO_BYTES = 64 * 1024  # a node's info is a few fields (address, version), not a payload
MAX_NODES = 1000  # listed at most: far above any real deployment, a bound on one reply

# KEYS: node hash, nodes zset. ARGV: node id, info JSON, ttl ms, run. Returns Redis's now in ms,
# or -1 (and nothing written) when another live process holds the node id.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local run = redis.call('HGET', KEYS[1], 'run')
if run and run ~= ARGV[4] then return -1 end
redis.call('HSET', KEYS[1], 'info', ARGV[2], 'seen', now, 'run', ARGV[4])
redis.call('HSETNX', KEYS[1], 'since', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
return now
"""


# KEYS: node hash, nodes zset. ARGV: node id, run. Removes the node only if it is this run's.
_UNREGISTER = """
if redis.call('HGET', KEYS[1], 'run') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


class NodeRegistry:
    """This node's entry in the registry (`start()` / `close()`, or `async with`), and the list
    of all live nodes (`nodes()`, usable without starting).

    `heartbeat` must be well under `ttl` (at most half of it): a node is listed while its last
    heartbeat is younger than `ttl`, so one late or lost heartbeat must not drop it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        info: dict[str, Any] | None = None,
        heartbeat: float = 1.0,
        ttl: float = 5.0,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_OP_TIMEOUT,
        run: str = "",
    ) -> None:
        if not node_id:
            raise ValueError("NodeRegistry: empty node_id")
        # This process's run of the node id: a restart under the same id is another run, and
        # what the earlier run held (its conversations' tickets) counts as gone.
        self.run = run or secrets.token_hex(6)
        self.heartbeat = positive("heartbeat", heartbeat)
        self.ttl = positive("ttl", ttl)
        if self.heartbeat * 2 > self.ttl:
            raise ValueError(f"heartbeat ({heartbeat}s) must be at most half of ttl ({ttl}s)")
        self._redis = redis
        self.node_id = node_id
        self._prefix = prefix
        self._timeout = timeout
        self._key = f"{prefix}node:{node_id}"
        self._set_key = f"{prefix}nodes"
        self._info = self._encode(info or {})
        self._script = redis.register_script(_HEARTBEAT)
        self._unregister = redis.register_script(_UNREGISTER)
        self._tasks = TaskSet(f"cluster.registry:{node_id}")
        self._started = False
        self._last_beat = 0.0  # monotonic time of the last heartbeat Redis took

    @staticmethod
    def _encode(info: dict[str, Any]) -> bytes:
        data = orjson.dumps(info)
        if len(data) > MAX_INFO_BYTES:
            raise ValueError(f"node info is {len(data)} bytes, more than {MAX_INFO_BYTES}")
        return data

    def set_info(self, info: dict[str, Any]) -> None:
        """Replaces this node's info; the next heartbeat publishes it."""
        self._info = self._encode(info)

    async def announce(self, info: dict[str, Any]) -> None:
        """Replaces this node's info and publishes it now (ClusterError if Redis cannot)."""
        self.set_info(info)
        await self._beat()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Registers the node (the first heartbeat is awaited, so the node is listed when this
        returns, and a Redis that cannot be reached raises ClusterUnavailable here), then keeps
        heartbeating in an owned task.

        An entry of the same node id left by an earlier run (a restart after a crash) is waited
        out, up to the ttl; one still renewed after that is another live process with the same
        id, and ClusterError says so."""
        if self._started:
            raise RuntimeError("NodeRegistry already started")
        deadline = time.monotonic() + self.ttl + self.heartbeat
        while not await self._beat():
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"node id {self.node_id!r} is in use by another running bridge; give each "
                    "node its own [cluster] node_id"
                )
            await asyncio.sleep(self.heartbeat / 2)
        self._started = True
        self._tasks.spawn(self._beat_forever(), name=f"cluster.heartbeat:{self.node_id}")

    async def close(self) -> None:
        """Stops heartbeating and removes the node at once (others need not wait for the ttl).
        A Redis that cannot be reached is logged: the entry then expires by itself."""
        if not self._started:
            return
        self._started = False
        await self._tasks.cancel_all()
        try:
            # Not the entry of another process that took the id after this one lapsed.
            await call(
                f"unregister {self.node_id}",
                self._unregister(keys=[self._key, self._set_key], args=[self.node_id, self.run]),
                timeout=self._timeout,
            )
        except ClusterError as e:
            log.warning("cluster.unregister_failed", node=self.node_id, error=str(e))

    async def __aenter__(self) -> NodeRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def identity(self) -> str:
        """This run of this node, as other records name it (`<node id>#<run>`)."""
        return identity(self.node_id, self.run)

    def alive(self) -> bool:
        """Whether the others still count this node as alive, with a heartbeat of margin: past
        that its registry key may be gone, and its leases and tickets given up."""
        return time.monotonic() - self._last_beat < self.ttl - self.heartbeat

    async def _beat(self) -> bool:
        """One heartbeat; False when another process holds the node id."""
        started = time.monotonic()
        now = await call(
            f"heartbeat {self.node_id}",
            self._script(
                keys=[self._key, self._set_key],
                args=[self.node_id, self._info, millis(self.ttl), self.run],
            ),
            timeout=self._timeout,
        )
        if int(now) < 0:
            return False
        # From when it was sent: the key's expiry counts from Redis's clock near that moment.
        self._last_beat = started
        return True

    async def _beat_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                if not await self._beat():
                    raise ClusterError(f"another bridge took the node id {self.node_id!r}")
            except ClusterError as e:
                # Keep trying: Redis may be back before the ttl runs out, and then no other
                # node ever saw this one go. Logged once per outage, not once per beat.
                if not failing:
                    log.warning("cluster.heartbeat_failed", node=self.node_id, error=str(e))
                failing = True
            else:
                if failing:
                    log.info("cluster.heartbeat_recovered", node=self.node_id)
                failing = False

    # -- listing ------------------------------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, oldest first: each node's info plus `node_id`, `since` and `seen`
        (Unix seconds, Redis's clock). A node whose key expired is never listed."""
        ids = await call(
            "list nodes",
            self._redis.zrange(self._set_key, 0, MAX_NODES - 1),
            timeout=self._timeout,
        )
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(f"{self._prefix}node:{text(node_id)}")
            entries = await call("read nodes", pipe.execute(), timeout=self._timeout)
        live: list[dict[str, Any]] = []
        gone: list[bytes | str] = []
        for node_id, entry in zip(ids, entries, strict=True):
            node = _node(text(node_id), entry)
            # An expired key reads as empty: Redis never returns it, whatever the sorted set says.
            if node is None:
                gone.append(node_id)
            else:
                live.append(node)
        if gone:
            try:
                await call(
                    "prune nodes", self._redis.zrem(self._set_key, *gone), timeout=self._timeout
                )
            except ClusterError as e:
                log.debug("cluster.prune_failed", error=str(e))  # the next heartbeat prunes too
        live.sort(key=lambda n: (n["since"], n["node_id"]))
        return live


def identity(node_id: str, run: str) -> str:
    """One run of a node (see NodeRegistry.identity)."""
    return f"{node_id}#{run}"


def _node(node_id: str, entry: dict[Any, Any] | None) -> dict[str, Any] | None:
    fields = {text(k): v for k, v in (entry or {}).items()}
    if "since" not in fields:
        return None
    try:
        info = orjson.loads(fields.get("info", b"{}"))
    except orjson.JSONDecodeError:
        info = {}
    if not isinstance(info, dict):
        info = {"info": info}
    # The registry's own fields win over the node's info of the same name.
    return {
        **info,
        "node_id": node_id,
        "run": text(fields.get("run", b"")),
        "since": int(fields["since"]) / 1000,
        "seen": int(fields.get("seen", fields["since"])) / 1000,
    }
