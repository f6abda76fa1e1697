"""A connection's frames run concurrently, except those that must keep their order (a user's
messages to one contact): each such frame starts after the previous one with the same key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from bridge.tasks import TaskSet

# How long a frame waits for the one before it with the same key: a frame stuck behind a
# wedged one goes ahead rather than wait forever.
ORDER_TIMEOUT = 120.0


class FrameOrder:
    """Runs frames' work as tasks of ``tasks``, counting those still running."""

    __slots__ = ("_chains", "_tasks", "running")

    def __init__(self, tasks: TaskSet) -> None:
        self._tasks = tasks
        self._chains: dict[Hashable, asyncio.Task[None]] = {}
        self.running = 0

    def spawn(self, work: Callable[[], Awaitable[None]], order: Hashable | None, name: str) -> None:
        """Run ``work`` now, or once the previous work with the same ``order`` is done."""
        self.running += 1
        before = self._chains.get(order) if order is not None else None

        async def run() -> None:
            try:
                if before is not None and not before.done():
                    await asyncio.wait([before], timeout=ORDER_TIMEOUT)
                await work()
            finally:
                self.running -= 1

        task = self._tasks.spawn(run(), name=name)
        if order is not None:
            self._chains[order] = task
            task.add_done_callback(lambda t: self._unchain(order, t))

    def _unchain(self, order: Hashable, task: asyncio.Task[None]) -> None:
        if self._chains.get(order) is task:
            del self._chains[order]
