"""Pushes across a cluster: a push stored by one node reaches the user's connections on every
node.

The push is in the shared outbox (PostgreSQL) before it is announced, so the bus only has to
say "offer this": each node hands it to its own connections of that user (bridge.outbox
`deliver`), or drops it when it has none. Pub/sub is at most once; a node that missed an
announcement (its bus reconnecting) loses nothing, the push waits in the store for the user's
next login. A push too big for the bus is announced by its seq and read from the store.

Neither side waits on the other: announcements leave through one owned sender (in the order
they were made; a push never waits on Redis), and arrivals are handed to one owned task per
user (in arrival order for that user; one user's slow login never holds up the others, nor the
bus reader).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog

from bridge.cluster.bus import MAX_PAYLOAD, Bus
from bridge.cluster.client import ClusterError
from bridge.outbox import Outbox, Push
from bridge.tasks import Chains, TaskSet

log = structlog.get_logger(__name__)

CHANNEL = "pushes"
# Announcements waiting for the sender; past it they are dropped (the pushes stay stored).
MAX_QUEUED = 10_000
# Users whose arrivals are being handed over at once; past it an arrival waits its turn in the
# reader (a bound on tasks, not on correctness).
MAX_USERS_BUSY = 1000
# A push Redis did not take is tried again a few times (in order: later ones wait) before the
# store alone keeps it for the next login.
SEND_ATTEMPTS = 4
SEND_RETRY = 0.25
FLUSH_TIMEOUT = 1.0


class PushFanout:
    def __init__(self, bus: Bus, outbox: Outbox) -> None:
        self._bus = bus
        self._outbox = outbox
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED)
        self._tasks = TaskSet("cluster-pushes")
        # Arrivals handed over per user, in order.
        self._users = Chains(self._tasks)
        self._dropped = 0
        # Announcements made and those done with (published, or given up): see flushed().
        self._made = 0
        self._done = 0
        self._progress = asyncio.Condition()
        self._catching = False
        self._catch_again = False

    async def start(self) -> None:
        await self._bus.subscribe(CHANNEL, self._arrived)
        self._bus.on_reconnect(self._catch_up)
        self._tasks.spawn(self._send_forever(), name="cluster-push-sender")
        self._outbox.fanout = self.announce

    async def stop(self) -> None:
        self._outbox.fanout = None
        await self._tasks.cancel_all()

    async def announce(self, user_id: str, push: Push) -> None:
        """Queue the announcement of a stored push (never waits on Redis)."""
        message: dict[str, Any] = {"o": self._bus.node_id, "u": user_id, "s": push.seq}
        payload = orjson.dumps({**message, "p": push.to_json()})
        if len(payload) > MAX_PAYLOAD:
            payload = orjson.dumps(message)
        try:
            self._queue.put_nowait(payload)
            self._made += 1
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("cluster.push_announcements_dropped", dropped=self._dropped)

    async def _send_forever(self) -> None:
        while True:
            payload = await self._queue.get()
            for attempt in range(SEND_ATTEMPTS):
                try:
                    await self._bus.publish(CHANNEL, payload)
                    break
                except ClusterError as e:
                    if attempt + 1 == SEND_ATTEMPTS:
                        # Stored: the user's other tabs get it at their next login.
                        log.warning("cluster.push_not_announced", error=str(e))
                    else:
                        await asyncio.sleep(SEND_RETRY * (attempt + 1))
                except Exception:
                    # Never the end of the sender: the announcements behind it still go.
                    log.exception("cluster.push_announce_crashed")
                    break
            async with self._progress:
                self._done += 1
                self._progress.notify_all()

    async def flushed(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Until every announcement made so far has left (or was given up), at most
        ``timeout``. A conversation's next turn may run on another node: what this one pushed
        reaches Redis first, so every node hands the user the replies in conversation order."""
        target = self._made
        if self._done >= target:
            return
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self._done >= target)
        except TimeoutError:
            log.warning("cluster.push_flush_slow", waiting=target - self._done)

    async def _catch_up(self) -> None:
        """After the bus came back: pushes the other nodes announced meanwhile. One look at a
        time: reconnects meanwhile (a flapping connection) make one more look, not one each."""
        if self._catching:
            self._catch_again = True
            return
        self._catching = True
        try:
            again = True
            while again:
                self._catch_again = False
                try:
                    n = await self._outbox.catch_up()
                except Exception:
                    log.exception("cluster.push_catch_up_failed")
                else:
                    if n:
                        log.info("cluster.push_caught_up", pushes=n)
                again = self._catch_again
        finally:
            self._catching = False

    async def _arrived(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            origin, user_id, seq = message["o"], message["u"], int(message["s"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.push_unreadable", size=len(payload))
            return
        if origin == self._bus.node_id or not isinstance(user_id, str):
            return
        if not self._outbox.expects(user_id):
            return  # nobody of this user here: the common case, decided without the store
        data = message.get("p")
        work = self._hand_over(user_id, seq, data if isinstance(data, dict) else None)
        if self._users.keys >= MAX_USERS_BUSY and user_id not in self._users:
            await work  # too many users at once: this one in the reader, in order
            return
        self._users.run(user_id, work, name="cluster-push")

    async def _hand_over(self, user_id: str, seq: int, data: dict[str, Any] | None) -> None:
        push = (
            Push.from_json(data, seq)
            if data is not None
            else await self._outbox.stored(user_id, seq)
        )
        if push is not None:
            await self._outbox.deliver(user_id, push)
