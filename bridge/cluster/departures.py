"""Replies a dead node left running: one survivor settles them, so no user is left in silence.

A reply in flight is recorded with the node run running it (storage's `node` columns,
`<node id>#<run>`: a node restarted under the same id is a new run, and what its earlier run
left counts as gone). When a run is gone from the registry, its records are still there: one
survivor (the first to claim the run) settles them like a restart would: a reply its upstream
finished is fetched and pushed, anything else is answered with an explicit "interrupted"
failure.

What is gone is judged from the records first and the registry second: a node writes records
only once it is registered, so a record read before the listing belongs to a listed node
unless that node is really gone (never to a node that joined in between).

Looked at when the registry shows a node leaving (every `poll` seconds), at start, and every
`sweep` seconds (a survivor that died while settling leaves its claim to expire, and then the
next sweep settles what is left).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from bridge.cluster.client import ClusterError
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

# Given the nodes whose records to settle; returns nothing. Each settles one kind of record.
Settle = Callable[[set[str]], Awaitable[None]]
# Which nodes have records of this kind (read before the registry is listed).
Recorded = Callable[[], Awaitable[set[str]]]

# Seconds before another node may look at a gone run again. Only a first filter: each record
# is claimed in the database before it is settled (see Recovery), so none is settled twice.
CLAIM_TTL = 30.0
SWEEP = 60.0


class Departures:
    def __init__(
        self,
        live: Callable[[], Awaitable[set[str]]],
        claim: Callable[[str, float], Awaitable[bool]],
        *,
        poll: float = 1.0,
        sweep: float = SWEEP,
    ) -> None:
        self._live = live
        self._claim = claim
        self._poll = poll
        self._sweep = sweep
        self._parts: list[tuple[str, Recorded, Settle]] = []
        self._gone_hooks: list[Callable[[set[str]], Awaitable[None]]] = []
        self._tasks = TaskSet("cluster.departures")
        self._lock = asyncio.Lock()  # one look at a time (the loop's and start's)

    def add(self, name: str, recorded: Recorded, settle: Settle) -> None:
        self._parts.append((name, recorded, settle))

    def on_gone(self, hook: Callable[[set[str]], Awaitable[None]]) -> None:
        """``hook(runs)`` when node runs leave the registry (after what they left is settled,
        if this node settled it)."""
        self._gone_hooks.append(hook)

    async def settle_now(self) -> int:
        """Settle what every gone node run left; returns how many runs this node settled."""
        async with self._lock:
            recorded: set[str] = set()
            for _, nodes, _ in self._parts:
                recorded |= await nodes()
            if not recorded:
                return 0
            gone = recorded - await self._live()
            mine = {n for n in sorted(gone) if await self._claim(f"settle:{n}", CLAIM_TTL)}
            if not mine:
                return 0
            for name, _, settle in self._parts:
                try:
                    await settle(mine)
                except Exception:
                    log.exception("cluster.settle_failed", part=name, nodes=sorted(mine))
            log.info("cluster.settled_gone_nodes", nodes=sorted(mine))
            return len(mine)

    def start(self) -> None:
        self._tasks.spawn(self._watch(), name="cluster.departures")

    async def close(self) -> None:
        await self._tasks.cancel_all()

    async def _watch(self) -> None:
        known: set[str] | None = None
        swept = time.monotonic()
        while True:  # the first look at once: a node leaving before it must count as leaving
            try:
                live = await self._live()
                left = (known - live) if known else set()
                known = live
                if left:
                    log.info("cluster.nodes_left", runs=sorted(left))
                if left or time.monotonic() - swept >= self._sweep:
                    swept = time.monotonic()
                    await self.settle_now()
                for hook in self._gone_hooks if left else ():
                    try:
                        await hook(left)
                    except Exception:
                        log.exception("cluster.gone_hook_failed")
            except ClusterError as e:
                log.debug("cluster.departures_unavailable", error=str(e))
            except Exception:
                # The database failing, say: the next look tries again.
                log.exception("cluster.departures_failed")
            await asyncio.sleep(self._poll)
