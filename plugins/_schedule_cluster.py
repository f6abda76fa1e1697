"""Schedules in a cluster: one node runs them, every node knows them.

Every node keeps the schedules (they are in the shared store) so `/schedule list`, `del` and the
console work wherever the user is; only the node holding the lease ``schedules`` arms them, so
each due time fires once cluster-wide. When that node stops or dies, another takes the lease
within a few seconds, reads the store and arms them, running a missed run as a start does. Each
run first claims its due time in Redis, so a due time another node already started (one cut
short when that node died) is not run again. A change on any node is stored, then announced on
the bus: the others read the store again, and the running node also rereads it every
RELOAD_EVERY seconds (an announcement may be lost). Ids come from one counter in Redis, so two
nodes adding at once never take the same id.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from bridge.cluster import ClusterError, LeaseBusy, Leases
from bridge.cluster.client import call
from bridge.scheduler import missed_run

if TYPE_CHECKING:
    from plugins.schedule import Book

log = structlog.get_logger(__name__)

LEASE = "schedules"
CHANNEL = "schedules"
# The lease's life: a dead node's schedules wait at most about this long for another node.
LEASE_TTL = 3.0
# After Redis failed, the next try to lead.
RETRY = 1.0
# Beyond misfire_grace, how far back a run looks for the due time it serves (a run fires at its
# due time or a little after; one a takeover owes is at most misfire_grace old).
DUE_SLACK = 60.0
# The running node reads the stored schedules again this often (a lost announcement).
RELOAD_EVERY = 30.0

# KEYS: the counter. ARGV: the store's own next id (the counter never goes below it, so a Redis
# that lost its data cannot hand out an id the store already has).
_NEXT_ID = """
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v < floor then
  redis.call('SET', KEYS[1], floor)
  v = floor
end
return v
"""


class ScheduleCluster:
    def __init__(self, book: Book, node: Any) -> None:
        self._book = book
        self._node = node
        self._leases = Leases(node.redis, node.node_id, prefix=node.config.prefix)
        self._counter = f"{node.config.prefix}schedule:next_id"
        self._next_id = node.redis.register_script(_NEXT_ID)
        self._rereading: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        await self._node.bus.subscribe(CHANNEL, self._news)
        self._book.ctx.spawn(self._lead(), name="schedule-leader")

    async def changed(self) -> None:
        """Tell the other nodes the stored schedules changed. Redis out of reach is logged:
        they read the store again when they next lead, and list what they hold meanwhile."""
        try:
            await self._node.bus.publish(CHANNEL, self._node.node_id.encode())
        except ClusterError as e:
            log.warning("schedule.change_not_announced", error=str(e))

    async def next_id(self, floor: int) -> int:
        return int(
            await call("take a schedule id", self._next_id(keys=[self._counter], args=[floor]), 5.0)
        )

    async def claim(self, entry: Any, now: float, grace: float) -> bool:
        """Whether this run may go ahead: the first to claim its due time cluster-wide. A node
        that took over after a run had started elsewhere (and was cut short there) does not
        run that due time again. Redis out of reach: run (at least once beats never)."""
        lookback = grace + DUE_SLACK
        due = missed_run(entry.trigger(self._book.zone), now - lookback, now, lookback)
        if due is None:
            return True
        key = f"schedule:{entry.id}:{due:.3f}"
        try:
            return bool(await self._node.once(key, lookback + DUE_SLACK))
        except ClusterError as e:
            log.warning("schedule.claim_failed", schedule=entry.id, error=str(e))
            return True

    async def _news(self, payload: bytes) -> None:
        """Another node changed the schedules: reread them, off the bus reader (which carries
        every push too), one reread at a time however many changes come meanwhile."""
        if payload == self._node.node_id.encode():
            return
        self._again = True
        if self._rereading is None or self._rereading.done():
            self._rereading = self._book.ctx.spawn(self._reread(), name="schedule-reread")

    async def _reread(self) -> None:
        while self._again:
            self._again = False
            await self._book.reload()

    async def _lead(self) -> None:
        book = self._book
        while True:
            try:
                async with self._leases.hold(LEASE, LEASE_TTL, wait=LEASE_TTL) as held:
                    await book.lead()
                    log.info("schedule.leading", node=self._node.node_id)
                    while not held.lost.is_set():
                        try:
                            async with asyncio.timeout(RELOAD_EVERY):
                                await held.lost.wait()
                        except TimeoutError:
                            await book.reload()
                    log.warning("schedule.lead_lost", node=self._node.node_id)
            except LeaseBusy:
                continue  # another node leads; `wait` was the pause before asking again
            except Exception as e:
                # Redis or the database failing: try again, never give up leading for good.
                log.warning("schedule.lead_failed", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(RETRY)
            finally:
                book.stand_down()
