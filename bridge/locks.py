"""Per-key locks that exist only while someone holds or waits for them.

A plain ``defaultdict(asyncio.Lock)`` keyed by user or conversation grows with every key ever
seen; these entries are dropped as soon as the last holder leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, list] = {}  # key -> [lock, users]

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, key: Hashable) -> bool:
        """Whether someone holds or waits for ``key``'s lock."""
        return key in self._locks

    @asynccontextmanager
    async def hold(self, key: Hashable, timeout: float | None = None) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        lock: asyncio.Lock = entry[0]
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]
