"""The overview's reply figures, read from the bridge's /metrics counts (`app.metrics`).

The counts are cumulative since the bridge started; the console shows the last minute instead
(what an admin watching the page wants), as the difference between now and a sample taken about
WINDOW seconds ago. Samples are taken only when the overview is read (at most one per SAMPLE
seconds, so any number of open pages costs the same), and at most WINDOW / SAMPLE + 2 are kept.
A bridge younger than the window is compared with its start (all zeros), and `window_seconds`
says how long the figures really span.

Quantiles come from the histogram buckets, interpolated within the bucket as Prometheus's
histogram_quantile does: an estimate, exact only to the bucket bounds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from bridge.metrics import Metrics

WINDOW = 60.0
SAMPLE = 5.0
_BUCKETS = len(LATENCY_BUCKETS) + 1  # the last one is +Inf


@dataclass(slots=True)
class Sample:
    time: float
    first_token: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    reply: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    errors: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


def _buckets(table: dict[str, Any]) -> list[int]:
    """One target-less histogram: every target's bucket counts added up."""
    total = [0] * _BUCKETS
    for h in list(table.values()):
        for i, n in enumerate(h.counts):
            total[i] += n
    return total


def _by_last_label(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    # (target, code) -> code; (target, kind) -> kind: the console shows kinds, not targets.
    out: dict[str, int] = {}
    for (_, label), n in list(counts.items()):
        out[label] = out.get(label, 0) + n
    return out


def sample(metrics: Metrics, now: float) -> Sample:
    return Sample(
        now,
        _buckets(metrics.first_token),
        _buckets(metrics.reply_seconds),
        _by_last_label(metrics.upstream_errors),
        _by_last_label(metrics.tokens),
    )


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram (not cumulative), in seconds; None when
    empty. In the +Inf bucket it is the highest finite bound (nothing better is known)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            low = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
            return low + (LATENCY_BUCKETS[i] - low) * max(0.0, rank - seen) / n
        seen += n
    return LATENCY_BUCKETS[-1]


def _diff(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
    return {k: n - then.get(k, 0) for k, n in sorted(now.items()) if n - then.get(k, 0) > 0}


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class RecentFigures:
    """The last minute's reply figures of one bridge (one per console)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self._clock = clock
        self._samples: deque[Sample] = deque([Sample(clock())])

    def read(self) -> dict[str, Any]:
        now = self._clock()
        current = sample(self.metrics, now)
        samples = self._samples
        # The base is the newest sample at least WINDOW old; older ones are no longer needed.
        while len(samples) > 1 and samples[1].time <= now - WINDOW:
            samples.popleft()
        base = samples[0]
        if now - samples[-1].time >= SAMPLE:
            samples.append(current)
        first = [a - b for a, b in zip(current.first_token, base.first_token, strict=True)]
        reply = [a - b for a, b in zip(current.reply, base.reply, strict=True)]
        return {
            "window_seconds": round(now - base.time, 1),
            "replies": sum(reply),
            "first_token_p50": _ms(quantile(first, 0.5)),
            "first_token_p95": _ms(quantile(first, 0.95)),
            "reply_p50": _ms(quantile(reply, 0.5)),
            "reply_p95": _ms(quantile(reply, 0.95)),
            "first_tokens": sum(first),
            "errors": _diff(current.errors, base.errors),
            "tokens": _diff(current.tokens, base.tokens),
        }
