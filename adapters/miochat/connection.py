"""One hub WebSocket connection: a reader that never waits on work, and one writer.

The reader takes frames off the socket and hands each to a task (bounded per connection; past
the bound, `BUSY`), so a slow upstream never holds up a heartbeat, an abort or another
conversation. Frames that touch one conversation still run in the order they arrived.

Everything the connection sends goes through one bounded queue drained by one writer task, so
nothing that produces frames (a reply stream, a push to this user) ever waits on this peer. A
peer that stops reading for `server.send_timeout`, or lets the queue pass
`server.max_send_queue` bytes, is aborted at the transport: no closing handshake that would
itself wait behind the full buffer.

The connection is also its user's push sink: it confirms pushes to the outbox when the peer
acknowledges them (`system/ack`) or when a pong comes back for a ping sent after them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

import structlog

from adapters.miochat import protocol as P
from adapters.miochat.frame_order import FrameOrder
from adapters.miochat.transport import HubSocket, SocketClosed
from bridge.errors import ErrorCode
from bridge.models import UserRef
from bridge.outbox import Push
from bridge.tasks import TaskSet

if TYPE_CHECKING:
    from aiohttp import web

    from adapters.miochat.server import HubServer
    from bridge.engine import Turn

log = structlog.get_logger(__name__)

CLOSE_LOGIN = 4001
# The most queued bytes framed into one transport write.
WRITE_BATCH = 256 * 1024


class StreamSlot:
    """A running `openai/completions` of this connection: its turn, and its share of the
    user's stream limit, released exactly once whatever ends it."""

    __slots__ = ("_release", "aborted", "request_id", "turn")

    def __init__(self, request_id: P.RequestId, release: Callable[[], None]) -> None:
        self.request_id = request_id
        self.turn: Turn | None = None
        self.aborted = False
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Connection:
    __slots__ = (
        "_closed",
        "_confirmed_seq",
        "_confirming",
        "_deferred",
        "_drained",
        "_max_in_flight",
        "_max_queue",
        "_order",
        "_queue",
        "_queued_bytes",
        "_room",
        "_send_timeout",
        "_sent_seq",
        "_writer",
        "hub",
        "listeners",
        "peer",
        "sock",
        "streams",
        "tasks",
        "user",
    )

    def __init__(self, hub: HubServer, sock: HubSocket) -> None:
        cfg = hub.config
        self.hub = hub
        self.sock = sock
        self.user: UserRef | None = None
        self.tasks = TaskSet("hub-connection")
        self.peer = "%s:%s" % (sock.remote_address or ("?", "?"))
        self.streams: dict[P.RequestId, StreamSlot] = {}
        # Listeners this connection registered with Sessions, detached when it closes.
        self.listeners: set[Callable[..., Awaitable[None]]] = set()
        self._max_in_flight = cfg.limits.frames_in_flight
        self._order = FrameOrder(self.tasks)
        # The send queue, (text, push seq or 0), and its writer: both exist only while frames
        # wait (an idle connection costs neither), since most frames go straight out.
        self._queue: deque[tuple[bytes, int]] | None = None
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._max_queue = cfg.server.max_send_queue
        self._send_timeout = cfg.server.send_timeout
        # Set whenever the queue is at most half full (or the connection is gone).
        self._room: asyncio.Event | None = None
        self._closed = False
        # Push confirmation: the highest seq written to this peer, and the highest confirmed.
        self._sent_seq = 0
        self._confirmed_seq = 0
        self._confirming = False
        self._drained: asyncio.Future[None] | None = None
        # Flushes to run when the writer comes back for more (renderers gathering deltas).
        self._deferred: list[Callable[[], None]] = []

    # ----- sending -----------------------------------------------------------------------------

    def send_frame(self, frame: dict[str, Any], seq: int = 0) -> bool:
        """Send or queue a frame; never waits. False when the connection is (now) gone."""
        if self._closed:
            return False
        data = P.dumps_bytes(frame)
        if self._writer is None and self._write_now(data):
            if seq > self._sent_seq:
                self._sent_seq = seq
                self._kick()  # to confirm it with a ping
            return True
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((data, seq))
        self._queued_bytes += len(data)
        # One frame is always let in, however large: the send timeout guards it. A frame
        # bigger than the bound would otherwise kill every connection it is replayed to.
        if self._queued_bytes > self._max_queue and len(queue) > 1:
            self.abort("send queue overflow")
            return False
        self._kick()
        return True

    @property
    def request(self) -> web.Request:
        """The upgrade request (headers, query, the host the client reached)."""
        return self.sock.request

    def _write_now(self, data: bytes) -> bool:
        return self.sock.write_now(data)

    def busy(self) -> bool:
        """Frames are waiting for the peer (the writer is running)."""
        return self._writer is not None

    def defer(self, flush: Callable[[], None]) -> None:
        """Run ``flush`` (which sends frames) when the writer next takes frames from the queue."""
        if self._closed:
            return
        self._deferred.append(flush)
        self._kick()

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for flush in deferred:
            try:
                flush()
            except Exception:
                log.exception("hub.deferred_flush_failed", peer=self.peer)

    def _kick(self) -> None:
        if self._writer is None and not self._closed:
            self._writer = self.tasks.spawn(self._write_loop(), name="hub-writer")

    def backlogged(self) -> bool:
        """The send queue is over half full: a backlog replayed at login waits for `room`
        instead of overflowing it."""
        return self._queued_bytes > self._max_queue // 2

    async def room(self) -> bool:
        """Until the send queue is at most half full; False once the connection is gone (the
        writer aborts a peer that stops reading, which ends the wait)."""
        while not self._closed and self.backlogged():
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        return not self._closed

    async def send(self, frame: dict[str, Any]) -> None:
        self.send_frame(frame)

    def fail(self, req: P.Request, code: ErrorCode, reason: str) -> None:
        self.send_frame(P.failure(req.request_id, req.protocol, req.type, code, reason))

    def abort(self, why: str) -> None:
        """Drop the peer at once; its reader sees the connection closed."""
        if self._closed:
            return
        self._closed = True
        log.warning("hub.peer_aborted", peer=self.peer, reason=why, queued=self._queued_bytes)
        if self._queue is not None:
            self._queue.clear()
        self._queued_bytes = 0
        if self._room is not None:
            self._room.set()
        self.sock.abort()

    async def _write_loop(self) -> None:
        """Drain the queue, confirm pushes with a ping, and end: the next frame starts anew."""
        sock = self.sock
        try:
            while True:
                if self._deferred:
                    self._run_deferred()
                queue = self._queue
                while queue:
                    if self._write_now(queue[0][0]):
                        self._sent(*queue.popleft())
                        continue
                    # Behind a backlog, or large enough to fill the kernel's buffers: whatever
                    # is ready goes out in one write.
                    batch: list[bytes] = []
                    size = 0
                    while queue and (not batch or size + len(queue[0][0]) <= WRITE_BATCH):
                        data, seq = queue.popleft()
                        batch.append(data)
                        size += len(data)
                        self._sent(data, seq)
                    async with asyncio.timeout(self._send_timeout):
                        await sock.send_many(batch)
                if self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)
                if self._sent_seq > self._confirmed_seq and not self._confirming:
                    # The ping waits on the peer like any write.
                    async with asyncio.timeout(self._send_timeout):
                        await self._confirm_by_ping()
                    continue
                if not self._queue and not self._deferred:
                    return  # nothing awaited since the check: no frame can be left behind
        except TimeoutError:
            self.abort("peer stopped reading")
        except SocketClosed:
            self._closed = True
            if self._room is not None:
                self._room.set()
        finally:
            self._writer = None

    def _sent(self, data: bytes, seq: int) -> None:
        """A queued frame has left the queue (for the transport)."""
        self._queued_bytes -= len(data)
        if self._room is not None and self._queued_bytes <= self._max_queue // 2:
            self._room.set()
        if seq > self._sent_seq:
            self._sent_seq = seq

    async def _confirm_by_ping(self) -> None:
        """A pong to a ping written after the pushes means the peer read them."""
        upto = self._sent_seq
        self._confirming = True

        def done(ok: bool) -> None:
            self._confirming = False
            if not ok or self._closed:
                return
            self.tasks.spawn(self._confirmed(upto), name="hub-confirm")
            if self._sent_seq > upto:
                self._kick()  # more pushes went out meanwhile: ping again

        try:
            await self.sock.confirm(upto, done)
        except SocketClosed:
            self._confirming = False
            raise

    async def _confirmed(self, seq: int) -> None:
        if seq <= self._confirmed_seq or self.user is None:
            return
        self._confirmed_seq = seq
        await self.hub.outbox.confirm(self.user.id, seq)

    def reset_delivery(self) -> None:
        self._sent_seq = 0
        self._confirmed_seq = 0

    async def ack(self, seq: int) -> None:
        """`system/ack`: the peer has every push up to ``seq`` (capped at what it was sent)."""
        await self._confirmed(min(seq, self._sent_seq))

    # ----- the push sink ----------------------------------------------------------------------

    def offer(self, push: Push) -> bool:
        return self.send_frame(P.push_frame(push), push.seq)

    def note(self, seq: int) -> None:
        if seq > self._sent_seq and not self._closed:
            self._sent_seq = seq
            self._kick()

    # ----- reading -----------------------------------------------------------------------------

    async def run(self) -> None:
        from adapters.miochat import handlers

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hub.config.auth.login_timeout
        creds = handlers.upgrade_credentials(self.sock.request)
        if creds is not None:
            await handlers.login(self, creds, self.hub.outbox.next_push_id(), pushed=True)
        while not self._closed:
            if self.user is None:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        raw = await self.sock.recv()
                except TimeoutError:
                    log.info("hub.login_timeout", peer=self.peer)
                    await self.close(CLOSE_LOGIN, "login timeout")
                    return
            else:
                raw = await self.sock.recv()
            await handlers.dispatch(self, raw)

    def has_room(self, req: P.Request) -> bool:
        """Whether another frame may start; if not, the frame is answered with BUSY."""
        if self._order.running < self._max_in_flight:
            return True
        self.fail(
            req,
            ErrorCode.BUSY,
            f"{self._max_in_flight} requests of this connection are still being handled",
        )
        return False

    def spawn_frame(
        self, req: P.Request, work: Callable[[], Awaitable[None]], order: Hashable | None
    ) -> None:
        """Run a frame's work concurrently; after the previous frame with the same ``order``."""
        self._order.spawn(work, order, f"frame-{req.protocol}/{req.type}")

    async def close(self, code: int, reason: str) -> None:
        """A polite close, after what is queued has gone out (bounded by the send timeout)."""
        try:
            async with asyncio.timeout(self._send_timeout):
                if self._queue and not self._closed:
                    self._drained = asyncio.get_running_loop().create_future()
                    self._kick()
                    await self._drained
                await self.sock.close(code, reason)
        except TimeoutError:
            self.abort("close timed out")
        self._closed = True

    async def cleanup(self) -> None:
        self._closed = True
        self._deferred = []
        if self._room is not None:
            self._room.set()
        hub = self.hub
        if self.user is not None:
            hub.outbox.detach(self.user.id, self)
            hub.drop_client(self.user.id, self)
        for listener in self.listeners:
            hub.sessions.detach_listener(listener)
        self.listeners.clear()
        # A closed connection closes its completions' upstream requests.
        for slot in list(self.streams.values()):
            slot.aborted = True
            if slot.turn is not None:
                hub.sessions.engine.stop_nowait(slot.turn, "the connection closed")
        await self.tasks.cancel_all()
        for slot in list(self.streams.values()):
            slot.release()
        self.streams.clear()
