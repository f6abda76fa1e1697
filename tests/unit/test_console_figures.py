"""The console's last-minute reply figures from a real Metrics, with a clock the test sets."""

from __future__ import annotations

from adapters.console.figures import WINDOW, RecentFigures, quantile
from bridge.errors import ErrorCode
from bridge.metrics import LATENCY_BUCKETS, Metrics


def test_quantile_interpolates_within_a_bucket() -> None:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[LATENCY_BUCKETS.index(1.0)] = 4  # four replies in (0.5, 1.0]
    assert quantile(counts, 0.5) == 0.75
    assert quantile(counts, 1.0) == 1.0
    counts[-1] = 100  # past the last bound: nothing better than it is known
    assert quantile(counts, 0.95) == LATENCY_BUCKETS[-1]


def test_figures_cover_the_last_minute_only() -> None:
    now = [1000.0]
    m = Metrics()
    figures = RecentFigures(m, clock=lambda: now[0])
    m.observe(m.reply_seconds, "openai", 0.2)
    m.observe(m.first_token, "openai", 0.07)
    m.reply_ended("openai", "failed", ErrorCode.UPSTREAM_ERROR)
    m.usage("momohub", {"prompt_tokens": 3, "completion_tokens": 4})
    now[0] += 10
    first = figures.read()
    assert first["window_seconds"] == 10.0  # younger than the window: since the start
    assert first["replies"] == 1 and first["first_tokens"] == 1
    assert 100 < first["reply_p50"] <= 250 and 50 < first["first_token_p95"] <= 100
    assert first["errors"] == {"UPSTREAM_ERROR": 1}
    assert first["tokens"] == {"prompt": 3, "completion": 4}
    # A minute later the old reply has left the window; a new one is in it.
    now[0] += WINDOW
    figures.read()
    m.observe(m.reply_seconds, "momohub", 3.0)
    now[0] += 5
    later = figures.read()
    assert later["replies"] == 1 and 2500 < later["reply_p50"] <= 5000
    assert later["errors"] == {} and later["tokens"] == {}
    assert WINDOW <= later["window_seconds"] <= WINDOW + 10
