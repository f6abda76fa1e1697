"""Client-side pacing for MOMO AI: at most N request starts per rolling minute, plus any pause
the API asked for with `Retry-After`.

MOMO AI limits each account by tier (free 10, basic 60, pro 300 requests a minute). Pacing on
our side keeps a burst of users from turning into a burst of RATE_LIMIT refusals: a request
waits for its slot, up to ``max_wait``, and is refused at once (RATE_LIMITED, saying when to
retry) when the wait would be longer. Each waiter books its slot before sleeping, so waiters
are served in arrival order; a pause that comes meanwhile moves every booked slot past it, in
the same order.
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


class _Booking:
    """A request's start time; a pause may move it later while its request sleeps."""

    __slots__ = ("start",)

    def __init__(self, start: float) -> None:
        self.start = start


def _start_of(booking: _Booking) -> float:
    return booking.start


class Pacer:
    def __init__(
        self, per_minute: int, max_wait: float, clock: Callable[[], float] | None = None
    ) -> None:
        self.per_minute = per_minute
        self.max_wait = max_wait
        self._clock = clock
        # Starts (past, or booked in the future) within the last minute, in order.
        self._booked: list[_Booking] = []
        # No request starts before this (a Retry-After from the API).
        self._paused_until = 0.0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _prune(self, now: float) -> None:
        # Starts older than a minute no longer count.
        drop = bisect.bisect_right(self._booked, now - WINDOW, key=_start_of)
        if drop:
            del self._booked[:drop]

    def pause(self, seconds: float) -> None:
        """The API said to retry after ``seconds``: nothing starts before then, and the slots
        already booked move past it, keeping their order and the pace."""
        now = self._now()
        until = max(self._paused_until, now + max(0.0, seconds))
        self._paused_until = until
        self._prune(now)
        booked, n = self._booked, self.per_minute
        for i, booking in enumerate(booked):
            if booking.start <= now:
                continue  # already started
            start = max(booking.start, until)
            if n and i >= n:
                start = max(start, booked[i - n].start + WINDOW)
            booking.start = start

    def next_start(self, now: float | None = None) -> float:
        """When a request asking at ``now`` (default: now) could start (loop time)."""
        if now is None:
            now = self._now()
        start = max(now, self._paused_until)
        if self.per_minute:
            self._prune(now)
            booked = self._booked
            if len(booked) >= self.per_minute:
                start = max(start, booked[len(booked) - self.per_minute].start + WINDOW)
        return start

    async def acquire(self) -> None:
        """Wait for this request's slot; RATE_LIMITED when it is further than ``max_wait``
        (counted from this call, a pause that comes meanwhile included)."""
        now = self._now()
        deadline = now + self.max_wait
        booking = _Booking(self.next_start(now))
        if booking.start > deadline:
            raise self._refusal(booking.start - now, now)
        if self.per_minute:
            bisect.insort(self._booked, booking, key=_start_of)
        while True:
            now = self._now()
            # A pause moved the tracked bookings already; an unpaced one is moved here.
            booking.start = max(booking.start, self._paused_until)
            if booking.start <= now:
                return
            if booking.start > deadline:
                self._release(booking)
                raise self._refusal(booking.start - now, now)
            try:
                await asyncio.sleep(booking.start - now)
            except asyncio.CancelledError:
                # A waiter that gave up frees its slot for the next one.
                self._release(booking)
                raise

    def _release(self, booking: _Booking) -> None:
        try:
            self._booked.remove(booking)
        except ValueError:
            pass  # aged out, or never tracked (unpaced)

    def _refusal(self, wait: float, now: float) -> BridgeError:
        pace = (
            "MOMO AI asked for a pause"
            if self._paused_until > now
            else f"at most {self.per_minute} a minute"
        )
        return BridgeError(
            ErrorCode.RATE_LIMITED,
            f"MOMO AI requests are paced ({pace}); retry in {max(1, math.ceil(wait))} s",
        )
