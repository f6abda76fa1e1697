"""Prometheus metrics at /metrics (`[console] metrics`).

`Metrics` is plain bookkeeping (ints in dicts, fixed-bucket histograms): the hub calls it on
every frame, so a count there is one dict lookup and an add, with no lock and no label
resolution. prometheus_client is imported only when /metrics is first scraped (it costs ~35 ms
of imports the hub must not wait for before it listens); a collector then turns the counts into
metric families, and live values (connections, stream slots, the outbox) are read at that moment
instead of being kept up to date on the hot path.

Each App has its own Metrics and registry (never prometheus_client's global one), so several
bridges in one process (the tests) never count into each other.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.errors import BridgeError, ErrorCode
from bridge.models import Delta, Done, Failed, ReplyEvent

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from adapters.miochat.http_routes import Pages
    from adapters.miochat.server import HubServer
    from bridge.app import App
    from storage import Storage

log = structlog.get_logger(__name__)

PATH = "/metrics"
# The text format every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The outbox's COUNT(*) may not hold a scrape longer than this (a busy database): the gauge is
# then NaN for that scrape rather than a stale number.
OUTBOX_COUNT_TIMEOUT = 1.0
OUTBOX_COUNT_EVERY = 10.0
# Seconds; replies from a model take from well under a second to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Target kinds (the `target` label), read from the target's `metrics_kind`.
UNKNOWN_TARGET = "other"

Reader = Callable[[], int]


def _zero() -> int:
    return 0


class _Histogram:
    """Cumulative buckets as Prometheus wants them, filled with a bisect and two adds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def target_kind(target: Any) -> str:
    """The `target` label of a contact or model target: its `metrics_kind`, looking through a
    PendingTarget (which holds the place of a target still loading) to the target it holds."""
    inner = getattr(target, "target", None)
    if inner is not None:
        target = inner
    return str(getattr(target, "metrics_kind", UNKNOWN_TARGET))


class Metrics:
    """The bridge's counts. Every method is safe on any path: it cannot raise."""

    def __init__(self) -> None:
        # Frames by transport, keyed by the frame's class (cheaper to hash than its labels);
        # the labels are read once, from the first frame of each class.
        self.websocket_frames: dict[type, int] = {}
        self.socketio_frames: dict[type, int] = {}
        self._frame_labels: dict[type, tuple[str, str]] = {}
        self.logins: dict[tuple[str, str], int] = {}
        self.pushes: dict[str, int] = {"stored": 0, "offered": 0, "confirmed": 0}
        self.replies: dict[tuple[str, str], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.first_token: dict[str, _Histogram] = {}
        self.reply_seconds: dict[str, _Histogram] = {}
        # Live values, read at scrape time (set by attach).
        self.websocket_connections: Reader = _zero
        self.socketio_connections: Reader = _zero
        self.stream_slots: Reader = _zero
        self._storage: Storage | None = None
        self.outbox_pending = math.nan
        self._counted_until = 0.0
        self._counting: asyncio.Future[None] | None = None
        self._registry: CollectorRegistry | None = None

    def attach(self, hub: HubServer) -> None:
        """Read the hub's live values at scrape time."""
        self.websocket_connections = lambda: hub.websocket_count
        # Everything else on the port is a mounted edge's (Socket.IO is the only one).
        self.socketio_connections = lambda: hub.connection_count - hub.websocket_count
        self.stream_slots = lambda: sum(hub.active_streams.values())
        self._storage = hub.storage

    # ----- the hot path ----------------------------------------------------------------------

    def frame(self, frame: object) -> None:
        """A frame read on the plain WebSocket hub."""
        self._count_frame(self.websocket_frames, frame)

    def socketio_frame(self, frame: object) -> None:
        self._count_frame(self.socketio_frames, frame)

    def _count_frame(self, counts: dict[type, int], frame: object) -> None:
        # Keyed by the frame's class: one dict lookup per frame; labels are learnt once.
        cls = type(frame)
        n = counts.get(cls)
        if n is None:
            self._learn(frame)
            n = 0
        counts[cls] = n + 1

    def _learn(self, frame: object) -> None:
        # Frames that failed to parse share one class (FrameError), whatever they claimed to be.
        if isinstance(frame, Exception):
            self._frame_labels[type(frame)] = ("invalid", "invalid")
        else:
            labels = (str(getattr(frame, "protocol", "")), str(getattr(frame, "type", "")))
            self._frame_labels[type(frame)] = labels

    # ----- events ----------------------------------------------------------------------------

    def login(self, transport: str, ok: bool) -> None:
        key = (transport, "ok" if ok else "refused")
        self.logins[key] = self.logins.get(key, 0) + 1

    def push(self, event: str, n: int = 1) -> None:
        """``stored`` in the outbox, ``offered`` to a connection, ``confirmed`` by a peer."""
        self.pushes[event] = self.pushes.get(event, 0) + n

    def reply_ended(self, target: str, result: str, code: ErrorCode | None = None) -> None:
        key = (target, result)
        self.replies[key] = self.replies.get(key, 0) + 1
        if code is not None and code != ErrorCode.CANCELLED:
            err = (target, str(code))
            self.upstream_errors[err] = self.upstream_errors.get(err, 0) + 1

    def observe(self, table: dict[str, _Histogram], target: str, seconds: float) -> None:
        h = table.get(target)
        if h is None:
            h = table[target] = _Histogram()
        h.observe(seconds)

    def usage(self, target: str, usage: Any) -> None:
        """Tokens an upstream reported in its Done (prompt and completion)."""
        if not isinstance(usage, dict):
            return
        for kind in ("prompt", "completion"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                key = (target, kind)
                self.tokens[key] = self.tokens.get(key, 0) + n

    async def track(
        self, target: str, stream: AsyncIterator[ReplyEvent]
    ) -> AsyncIterator[ReplyEvent]:
        """``stream`` as is, counting its result, latencies and tokens. The result is counted
        before the last event is passed on (a consumer stops at it)."""
        started = time.monotonic()
        first = True
        ended = False
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    if first and (event.text or event.reasoning):
                        first = False
                        self.observe(self.first_token, target, time.monotonic() - started)
                elif isinstance(event, Done):
                    ended = True
                    self.observe(self.reply_seconds, target, time.monotonic() - started)
                    self.usage(target, event.usage)
                    self.reply_ended(target, "completed")
                elif isinstance(event, Failed):
                    ended = True
                    cancelled = event.error == ErrorCode.CANCELLED
                    self.reply_ended(target, "cancelled" if cancelled else "failed", event.error)
                yield event
        except BridgeError as e:
            if not ended:
                ended = True
                self.reply_ended(target, "failed", e.code)
            raise
        except Exception:
            if not ended:
                ended = True
                self.reply_ended(target, "failed", ErrorCode.INTERNAL)
            raise
        finally:
            # Stopped without a result: a recall, an abort, shutdown, or a stream that just ended.
            if not ended:
                self.reply_ended(target, "cancelled")
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    # ----- scraping --------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Values that need a query: the outbox's pending pushes. Counted at most once per
        `OUTBOX_COUNT_EVERY` and by one scrape at a time: the count shares the database's one
        connection with the hub, so scrapes must not queue work in front of it."""
        storage = self._storage
        if storage is None or time.monotonic() < self._counted_until:
            return
        if self._counting is not None:
            await asyncio.shield(self._counting)
            return
        self._counting = asyncio.ensure_future(self._count(storage))
        try:
            await asyncio.shield(self._counting)
        finally:
            self._counting = None

    async def _count(self, storage: Any) -> None:
        self._counted_until = time.monotonic() + OUTBOX_COUNT_EVERY
        try:
            async with asyncio.timeout(OUTBOX_COUNT_TIMEOUT):
                self.outbox_pending = float(await storage.outbox.total())
        except Exception as e:
            log.warning("metrics.outbox_count_failed", error=f"{type(e).__name__}: {e}")
            self.outbox_pending = math.nan

    @property
    def registry(self) -> CollectorRegistry:
        """This bridge's registry: its counts and the process's (CPU, memory, open files)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(self))
            ProcessCollector(registry=registry)
            self._registry = registry
        return self._registry

    def exposition(self) -> bytes:
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """Turns a Metrics' counts into metric families at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.m
        conns = GaugeMetricFamily(
            "momobridge_hub_connections",
            "Connections open on the hub's port, by transport.",
            labels=["transport"],
        )
        conns.add_metric(["websocket"], _read(m.websocket_connections))
        conns.add_metric(["socketio"], _read(m.socketio_connections))
        yield conns

        slots = GaugeMetricFamily(
            "momobridge_stream_slots_in_use",
            "Replies streaming now, counted against limits.streams_per_user.",
        )
        slots.add_metric([], _read(m.stream_slots))
        yield slots

        outbox = GaugeMetricFamily(
            "momobridge_outbox_pending",
            "Pushes stored and not yet confirmed by a peer (NaN: the count timed out).",
        )
        outbox.add_metric([], m.outbox_pending)
        yield outbox

        frames = CounterMetricFamily(
            "momobridge_frames_received",
            "Frames read from clients, by transport, protocol and type.",
            labels=["transport", "protocol", "type"],
        )
        for transport, counts in (
            ("websocket", m.websocket_frames),
            ("socketio", m.socketio_frames),
        ):
            for cls, n in list(counts.items()):
                frames.add_metric([transport, *m._frame_labels[cls]], n)
        yield frames

        yield _counter(
            "momobridge_logins",
            "Logins, by transport and result.",
            ["transport", "result"],
            m.logins,
        )
        pushes = CounterMetricFamily(
            "momobridge_pushes",
            "Pushes stored in the outbox, offered to connections, confirmed by peers.",
            labels=["event"],
        )
        for event, n in list(m.pushes.items()):
            pushes.add_metric([event], n)
        yield pushes
        yield _counter(
            "momobridge_replies",
            "Replies from targets (momohub, openai, model_chat, ...), by result.",
            ["target", "result"],
            m.replies,
        )
        yield _counter(
            "momobridge_upstream_errors",
            "Replies that failed, by target and error code.",
            ["target", "code"],
            m.upstream_errors,
        )
        yield _counter(
            "momobridge_tokens",
            "Tokens upstreams reported using, by target and kind (prompt, completion).",
            ["target", "kind"],
            m.tokens,
        )
        for name, doc, table in (
            (
                "momobridge_reply_first_token_seconds",
                "From a reply's start to its first text.",
                m.first_token,
            ),
            ("momobridge_reply_seconds", "From a reply's start to its end.", m.reply_seconds),
        ):
            family = HistogramMetricFamily(name, doc, labels=["target"])
            for target, h in list(table.items()):
                family.add_metric([target], h.cumulative(), sum_value=h.sum)
            yield family

    def describe(self) -> list[Metric]:
        return []


def _counter(name: str, doc: str, labels: list[str], counts: dict[tuple[str, str], int]) -> Metric:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in list(counts.items()):
        family.add_metric(list(key), n)
    return family


def _read(reader: Reader) -> float:
    # A scrape must not fail on one value (a hub that is shutting down).
    try:
        return float(reader())
    except Exception:
        return math.nan


def _authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time: how much of a guess matched must not show in the answer's timing.
    return hmac.compare_digest(
        value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def _loopback(request: web.Request) -> bool:
    """The scrape comes from this host, and not through a proxy on it (which would forward
    anyone's request from loopback)."""
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    peer = request.remote or ""
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


def metrics_pages(app: App) -> Pages | None:
    """/metrics, or None when it is off."""
    console = app.config.console
    if not console.metrics:
        return None
    token = console.metrics_token
    metrics = app.metrics

    async def pages(request: web.Request) -> web.StreamResponse | None:
        if request.path != PATH:
            return None
        if token and not _authorized(request, token):
            return web.Response(
                status=401,
                text="a bearer token is required\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        if not token and not _loopback(request):
            # Without a token only this host may scrape: what the bridge counts (users online,
            # errors, memory) is not for whoever reaches the hub's port.
            return web.Response(
                status=403, text="set [console] metrics_token to scrape from another host\n"
            )
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        await metrics.refresh()
        # The first scrape imports prometheus_client: off the loop, so it holds up no frame.
        body = await asyncio.to_thread(metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return pages


# What components count into until the app gives them its own (one built alone, in a test):
# never scraped.
UNSCRAPED = Metrics()
