"""Per-key sliding-window rate limits by tier (the documented requests per minute)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

TIER_LIMITS: dict[str, int | None] = {"free": 10, "basic": 60, "pro": 300, "enterprise": None}
WINDOW = 60.0


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, tier: str) -> float | None:
        """Count one request; None if allowed, else seconds (>= 1, whole) until a slot frees.

        A refused request takes no slot: a client retrying too early is refused again but does not
        push its own lockout further out.
        """
        limit = TIER_LIMITS[tier]
        if limit is None:
            return None
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        if len(hits) >= limit:
            return float(max(1, math.ceil(hits[0] + WINDOW - now)))
        hits.append(now)
        return None

    def clear(self) -> None:
        self._hits.clear()
