"""The console's overview: what the bridge is doing now, as one JSON object.

Built on request (and by each live stream every tick), from what the bridge already keeps:
the hub's connections, the health registry behind /readyz, the newest stored messages (a
bounded read) and the reply figures /metrics counts anyway (see `figures`). Nothing is counted
on the message path for it, so a bridge nobody watches pays nothing for the console.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.console.figures import RecentFigures
    from bridge.app import App

# Rates and latencies are over this window, from at most this many of the newest messages
# (past that many a minute the figures are a floor, and say so with "capped").
WINDOW = 60.0
SCAN = 5000


def _version() -> str:
    try:
        return metadata.version("momobridge")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


async def overview(
    app: App, started: float, figures: RecentFigures | None = None
) -> dict[str, Any]:
    hub = app.hub
    now = time.time()
    body: dict[str, Any] = {
        "version": VERSION,
        "uptime": round(time.monotonic() - started, 1),
        "connections": hub.connection_count if hub is not None else 0,
        "users_online": hub.users_online if hub is not None else 0,
        "health": await app.health.snapshot(),
    }
    storage = app.storage
    rows = await storage.messages.activity(now - WINDOW, SCAN) if storage is not None else []
    incoming = [t for d, t, _ in rows if d == "in"]
    replies = [(t, asked) for d, t, asked in rows if d == "out"]
    latencies = [t - asked for t, asked in replies if asked is not None and t >= asked]
    per_minute = 60.0 / WINDOW
    body["traffic"] = {
        "window_seconds": WINDOW,
        "capped": len(rows) >= SCAN,
        "messages_per_minute": round(len(incoming) * per_minute, 1),
        "replies_per_minute": round(len(replies) * per_minute, 1),
        # From stored times: a reply is stored once it is complete, so this is the whole
        # reply's latency as the user saw it end.
        "reply_p50": _ms(percentile(latencies, 0.5)),
        "reply_p95": _ms(percentile(latencies, 0.95)),
    }
    # The newest stored message's id: a live page re-reads its conversation list when it moves.
    body["newest_message"] = await storage.messages.latest_id() if storage is not None else 0
    if figures is not None:
        body["replies"] = figures.read()
    return body


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
