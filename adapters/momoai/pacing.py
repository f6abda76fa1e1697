"""Client-side pacing for MOMO AI: at most N request starts per rolling minute, plus any pause
the API asked for with `Retry-After`.

MOMO AI limits each account by tier (free 10, basic 60, pro 300 requests a minute). Pacing on
our side keeps a burst of users from turning into a burst of RATE_LIMIT refusals: a request
waits for its slot, up to ``max_wait``, and is refused at once (RATE_LIMITED, saying when to
retry) when the wait would be longer. Waiters are served in arrival order because each one
books its slot before sleeping.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable

from bridge.errors import BridgeError, ErrorCode

WINDOW = 60.0
TIERS = {"free": 10, "basic": 60, "pro": 300, "enterprise": 0}


def rate_for(tier: str, override: int | None) -> int:
    """Requests a minute for the configured tier (0: unpaced)."""
    return override if override is not None else TIERS.get(tier, TIERS["free"])


class Pacer:
    def __init__(
        self, per_minute: int, max_wait: float, clock: Callable[[], float] | None = None
    ) -> None:
        self.per_minute = per_minute
        self.max_wait = max_wait
        self._clock = clock
        # Start times (booked, possibly in the future) within the last minute, sorted.
        self._starts: list[float] = []
        # No request starts before this (a Retry-After from the API).
        self._paused_until = 0.0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def pause(self, seconds: float) -> None:
        """The API said to retry after ``seconds``: nothing starts before then."""
        self._paused_until = max(self._paused_until, self._now() + max(0.0, seconds))

    def next_start(self, now: float | None = None) -> float:
        """When a request asking at ``now`` (default: now) could start (loop time)."""
        if now is None:
            now = self._now()
        start = max(now, self._paused_until)
        starts = self._starts
        if self.per_minute:
            # Starts older than a minute no longer count.
            drop = bisect.bisect_right(starts, now - WINDOW)
            if drop:
                del starts[:drop]
            if len(starts) >= self.per_minute:
                start = max(start, starts[len(starts) - self.per_minute] + WINDOW)
        return start

    async def acquire(self) -> None:
        """Wait for this request's slot; RATE_LIMITED when it is further than ``max_wait``
        (counted from this call, a pause that comes meanwhile included)."""
        deadline = self._now() + self.max_wait
        while True:
            now = self._now()
            start = self.next_start(now)
            if start > now and start > deadline:
                raise BridgeError(
                    ErrorCode.RATE_LIMITED,
                    f"MOMO AI requests are paced ({self._pace(now)}); "
                    f"retry in {math.ceil(start - now)} s",
                )
            if self.per_minute:
                bisect.insort(self._starts, start)
            if start <= now:
                return
            try:
                await asyncio.sleep(start - now)
            except asyncio.CancelledError:
                # A waiter that gave up frees its slot for the next one.
                self._release(start)
                raise
            if self._paused_until <= self._now():
                return
            # The API asked for a pause while this one slept: book again after it.
            self._release(start)

    def _release(self, start: float) -> None:
        if self.per_minute:
            i = bisect.bisect_left(self._starts, start)
            if i < len(self._starts) and self._starts[i] == start:
                del self._starts[i]

    def _pace(self, now: float) -> str:
        if self._paused_until > now:
            return "MOMO AI asked for a pause"
        return f"at most {self.per_minute} a minute"
