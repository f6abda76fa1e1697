"""Pub/sub between bridge instances over Redis: `publish` bytes on a channel, `subscribe` a
handler to one.

Delivery is Redis pub/sub's: at most once, to the subscribers connected at the moment of the
publish, in publish order per publisher. A message published while a subscriber is reconnecting
is lost to it; what must not be lost goes through storage, with the bus as the nudge to look.

One Bus holds one PubSub connection and ONE owned reader task that does everything on it:
connects, (re)subscribes every registered channel, reads, calls handlers one at a time in
arrival order, pings when idle (a half-open TCP connection otherwise looks like a quiet
channel), and on any failure drops the connection and reconnects with a capped, jittered
backoff. Handlers' exceptions are logged and never end the reader.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub

from bridge.cluster.client import (
    DEFAULT_OP_TIMEOUT,
    DEFAULT_PREFIX,
    ClusterError,
    ClusterTimeout,
    PayloadTooLarge,
    call,
    positive,
    text,
)
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

Handler = Callable[[bytes], Awaitable[None] | None]

MAX_PAYLOAD = 1024 * 1024  # bytes; a push between bridges is a notice or a frame, not a file
MAX_CHANNELS = 4096  # per Bus: channels may be derived from ids, and each costs a server entry
READ_POLL = 1.0  # seconds one read waits before the reader checks whether to ping


class Bus:
    """Publishing and subscribing for one node. Channels are named without the prefix; the Bus
    adds `<prefix>bus:`. The Redis client must not decode responses (payloads are bytes)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_OP_TIMEOUT,
        handler_timeout: float = 30.0,
        ping_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("Bus needs a Redis client with decode_responses=False")
        self._redis = redis
        self.node_id = node_id
        self._prefix = f"{prefix}bus:"
        self.timeout = positive("timeout", timeout)
        self.handler_timeout = positive("handler_timeout", handler_timeout)
        self.ping_interval = positive("ping_interval", ping_interval)
        self.backoff_min = positive("backoff_min", backoff_min)
        self.backoff_max = max(self.backoff_min, positive("backoff_max", backoff_max))
        self._handlers: dict[str, Handler] = {}  # full channel name -> handler
        self._confirmed: dict[str, asyncio.Event] = {}  # set while the server has it subscribed
        # The live connection, set by the reader once connected and cleared when it drops.
        self._pubsub: PubSub | None = None
        # Whole commands from subscribe()/unsubscribe() and the reader's pings never interleave
        # with a reconnect the reader is making.
        self._send_lock = asyncio.Lock()
        self._tasks = TaskSet(f"cluster.bus:{node_id}")
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.connections = 0  # connections the reader has made: 1 + reconnects
        self._reconnected: list[Callable[[], Awaitable[None]]] = []
        self._hooked: Any = None  # the connection _connected_again is registered on

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """``hook()`` runs (in an owned task) each time the reader connected again after losing
        its connection: messages published meanwhile were lost to this node."""
        self._reconnected.append(hook)

    def channel_name(self, channel: str) -> str:
        """The Redis channel of ``channel`` (what a script publishing on it names)."""
        if not channel:
            raise ValueError("empty channel name")
        return self._prefix + channel

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes) -> int:
        """Sends `payload` (at most MAX_PAYLOAD bytes, else PayloadTooLarge) to the channel's
        current subscribers; returns how many Redis delivered it to (0 is no error)."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        size = memoryview(payload).nbytes
        if size > MAX_PAYLOAD:
            raise PayloadTooLarge(f"payload of {size} bytes over the bus's {MAX_PAYLOAD}")
        receivers = await call(
            f"publish on {channel!r}",
            self._redis.publish(self.channel_name(channel), bytes(payload)),
            timeout=self.timeout,
        )
        return int(receivers)

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(
        self, channel: str, handler: Handler, *, timeout: float | None = None
    ) -> None:
        """Calls `handler(payload)` for each message on `channel` (awaited if it returns an
        awaitable, at most handler_timeout each). Returns once Redis confirmed the subscription,
        so what is published after that reaches the handler; ClusterTimeout (and not
        subscribed) if that takes longer than `timeout`."""
        if self._closed:
            raise RuntimeError("Bus is closed")
        name = self.channel_name(channel)
        if name in self._handlers:
            raise ValueError(f"already subscribed to {channel!r}")
        if len(self._handlers) >= MAX_CHANNELS:
            raise ClusterError(f"a Bus subscribes to at most {MAX_CHANNELS} channels")
        self._handlers[name] = handler
        confirmed = self._confirmed[name] = asyncio.Event()
        if self._reader is None:
            self._reader = self._tasks.spawn(self._run(), name=f"cluster.bus_reader:{self.node_id}")
        else:
            # A reader that is (re)connecting subscribes every registered channel itself once
            # connected; only a live connection needs telling.
            await self._send("subscribe", name)
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                await confirmed.wait()
        except TimeoutError:
            await self.unsubscribe(channel)
            raise ClusterTimeout(
                f"subscribe to {channel!r}: not confirmed by Redis within {wait}s"
            ) from None

    async def unsubscribe(self, channel: str) -> None:
        """Stops calling the channel's handler (no error if there was none)."""
        name = self.channel_name(channel)
        if self._handlers.pop(name, None) is None:
            return
        self._confirmed.pop(name, None)
        await self._send("unsubscribe", name)

    def subscribed(self, channel: str) -> bool:
        """Whether Redis currently has this Bus subscribed to `channel` (False while the reader
        reconnects)."""
        event = self._confirmed.get(self.channel_name(channel))
        return event is not None and event.is_set()

    async def _send(self, command: str, name: str) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader is (re)connecting and will act on self._handlers
        try:
            async with self._send_lock:
                if self._pubsub is not pubsub:
                    return
                method = pubsub.subscribe if command == "subscribe" else pubsub.unsubscribe
                await call(f"bus {command} {name!r}", method(name), timeout=self.timeout)
        except ClusterError as e:
            # The reader sees the same broken connection, reconnects and resubscribes.
            log.debug("cluster.bus_send_failed", node=self.node_id, command=command, error=str(e))

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stops the reader and closes its connection. Publishing still works (it uses the
        client's pool, not the reader's connection)."""
        self._closed = True
        await self._tasks.cancel_all()
        self._reader = None
        self._handlers.clear()
        self._confirmed.clear()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the reader ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_min
        failing = False
        while True:
            began, connections = time.monotonic(), self.connections
            pubsub = self._redis.pubsub()
            try:
                await self._serve(pubsub)
            except Exception as e:
                if self.connections > connections:
                    failing = False  # it had connected: this is a new outage
                # A warning when the connection is lost, not one per failed attempt of an
                # outage that lasts (those are debug).
                (log.debug if failing else log.warning)(
                    "cluster.bus_disconnected",
                    node=self.node_id,
                    error=f"{type(e).__name__}: {e}",
                    retry_in=round(delay, 3),
                )
                failing = True
            finally:
                self._pubsub = None
                for event in self._confirmed.values():
                    event.clear()
                hooked, self._hooked = self._hooked, None
                if hooked is not None:
                    hooked.deregister_connect_callback(self._connected_again)
                await _dispose(pubsub)
            if time.monotonic() - began > self.backoff_max:
                delay = self.backoff_min  # it had been working: the first retry is quick again
            # Jitter: bridges that lost Redis together must not all come back in the same tick.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    async def _serve(self, pubsub: PubSub) -> None:
        """One connection's life: connect, subscribe, read until something fails (raises)."""
        async with self._send_lock:
            await call("bus connect", pubsub.connect(), timeout=self.timeout)
            self.connections += 1
            if self.connections > 1:
                log.info("cluster.bus_reconnected", node=self.node_id)
            # From here subscribe() sends on this connection itself; everything registered up
            # to now is subscribed below (no await in between: nothing registers unseen).
            self._pubsub = pubsub
            names = list(self._handlers)
            if names:
                await call("bus subscribe", pubsub.subscribe(*names), timeout=self.timeout)
            # redis-py also reconnects a dropped connection by itself inside a read (and
            # subscribes it again, its own callback going first): that is a reconnect too.
            assert pubsub.connection is not None
            # Taken off again when this connection is given up: the pool hands the same
            # connection out again, and a stale callback would count every reconnect twice.
            self._hooked = pubsub.connection
            self._hooked.register_connect_callback(self._connected_again)
        if self.connections > 1:
            self._missed()
        last_heard = time.monotonic()
        pinged: float | None = None
        poll = min(READ_POLL, self.ping_interval)
        while True:
            message = await call(
                "bus read", pubsub.get_message(timeout=poll), timeout=poll + self.timeout
            )
            now = time.monotonic()
            if message is None:
                if pinged is not None and now - pinged > self.timeout:
                    raise ClusterTimeout(f"no PONG within {self.timeout}s")
                if pinged is None and now - last_heard >= self.ping_interval:
                    async with self._send_lock:
                        await call("bus ping", pubsub.ping(), timeout=self.timeout)
                    pinged = now
                continue
            last_heard, pinged = now, None
            if isinstance(message, dict):
                await self._on_message(message)

    def _connected_again(self, _connection: object) -> None:
        self.connections += 1
        log.info("cluster.bus_reconnected", node=self.node_id)
        self._missed()

    def _missed(self) -> None:
        """Whatever was published while the connection was down never comes: those who keep
        state behind their messages look it up now (the subscriptions are sent, so anything
        later arrives as a message)."""
        for hook in self._reconnected:
            self._tasks.spawn(hook(), name=f"cluster.bus_reconnected:{self.node_id}")

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            name = text(message["channel"])
            handler = self._handlers.get(name)
            if handler is not None:
                await self._call_handler(name, handler, message["data"])
        elif kind == "subscribe":
            event = self._confirmed.get(text(message["channel"]))
            if event is not None:
                event.set()

    async def _call_handler(self, name: str, handler: Handler, data: Any) -> None:
        payload = data if isinstance(data, bytes) else str(data).encode()
        try:
            result = handler(payload)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.handler_timeout):
                    await result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the Bus is closing
            log.error("cluster.bus_handler_cancelled", node=self.node_id, channel=name)
        except Exception:
            log.exception("cluster.bus_handler_failed", node=self.node_id, channel=name)


async def _dispose(pubsub: PubSub) -> None:
    """Closes a PubSub, bounded: a dead connection must not hold up the reconnect or close()."""
    close = getattr(pubsub, "aclose", None) or pubsub.reset  # aclose() is redis-py >= 5.0.1
    try:
        async with asyncio.timeout(1.0):
            await close()
    except Exception as e:
        log.debug("cluster.bus_dispose_failed", error=str(e))
