"""Owned background tasks: every task lives in a set, failures are logged, shutdown cancels all."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")


class TaskSet:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task.failed", owner=self.name, task=task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, timeout: float = 5.0) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("task.stuck_on_cancel", owner=self.name, count=len(pending))


class Chains:
    """Work run in owned tasks, one after another per key (in the order it was given) and side
    by side across keys: a slow key holds up only its own. Keys leave when their work is done."""

    def __init__(self, tasks: TaskSet) -> None:
        self._tasks = tasks
        # Per key: the task of its latest work (the next one waits for it).
        self._last: dict[Hashable, asyncio.Task[None]] = {}
        self.running: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Pieces of work not finished yet, all keys together."""
        return len(self.running)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._last

    @property
    def keys(self) -> int:
        return len(self._last)

    def run(self, key: Hashable, work: Coroutine[Any, Any, None], *, name: str) -> None:
        before = self._last.get(key)

        async def after_before() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])  # its outcome is its own (logged by the TaskSet)
            await work

        task = self._tasks.spawn(after_before(), name=name)
        self._last[key] = task
        self.running.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self.running.discard(done)
            if self._last.get(key) is done:
                del self._last[key]

        task.add_done_callback(forget)
