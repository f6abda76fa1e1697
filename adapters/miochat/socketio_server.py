"""The Socket.IO transport of the hub: today's mio-chat web client, on the hub's port.

python-socketio (Engine.IO v4, websocket and long-polling) serves `/socket.io/` through the
hub's mount. A connection authenticates in the handshake with the same rule as the plain hub's
`system/login`, gets the login frame pushed as soon as the handshake completes, then exchanges
frames as JSON strings in the `message` event. Frames go into the same core as the plain hub's
(`Sessions`, the outbox); `socketio_frames` does the parsing and building.

Each connection is a push sink of its user. Frames it sends leave through one writer task in
order; reading is in order too (a frame's work runs as a task of the connection, so nothing
read waits on an upstream).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, NoReturn

import socketio
import structlog
from aiohttp import web
from engineio import packet

from adapters.miochat import handlers
from adapters.miochat import llm_frames as L
from adapters.miochat import protocol as P
from adapters.miochat import socketio_frames as S
from adapters.miochat.client_replies import ClientReplies
from adapters.miochat.frame_order import FrameOrder
from bridge.errors import BridgeError, ErrorCode
from bridge.models import UserRef
from bridge.outbox import Push
from bridge.tasks import TaskSet

if TYPE_CHECKING:
    from adapters.miochat.reply_relay import ReplyRelay
    from adapters.miochat.server import HubServer
    from bridge.cluster.node import ClusterNode

log = structlog.get_logger(__name__)

# How long closing an Engine.IO session waits for the peer to fetch the close packet.
ENGINE_CLOSE_TIMEOUT = 5.0
# How often the model list is compared with what the tabs were told.
MODELS_CHECK_INTERVAL = 2.0


def serves(path: str) -> bool:
    return path == S.PATH or path.startswith(S.PATH + "/")


class _Manager(socketio.AsyncManager):
    """Tells the edge when a connection is fully connected (the CONNECT packet has gone out),
    the first moment a frame sent to it arrives after the handshake's answer."""

    def __init__(
        self, on_connected: Callable[[str], None], on_disconnected: Callable[[str], None]
    ) -> None:
        super().__init__()
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        result = await super().disconnect(sid, namespace, **kwargs)
        self._on_disconnected(sid)
        return result

    async def connect(self, sid: str, namespace: str) -> Any:
        sid = await super().connect(sid, namespace)
        if namespace == "/":
            self._on_connected(sid)
        return sid


class SioConnection:
    """One Socket.IO connection of a logged-in user: its sender and its frames' work."""

    def __init__(self, edge: SocketIOEdge, sid: str, user: UserRef) -> None:
        cfg = edge.hub.config
        self.edge = edge
        self.hub = edge.hub
        self.sid = sid
        self.user = user
        self.tasks = TaskSet("socketio-connection")
        self.closed = False
        self._queue: deque[tuple[str, int]] = deque()
        self._queued_bytes = 0
        self._max_queue = cfg.server.max_send_queue
        self._send_timeout = cfg.server.send_timeout
        self._writer: asyncio.Task[None] | None = None
        self._max_in_flight = cfg.limits.frames_in_flight
        self._order = FrameOrder(self.tasks)
        # Push confirmation: the highest seq emitted, confirmed, and for each ping in flight
        # the highest seq emitted before it.
        self._written_seq = 0
        self._confirmed_seq = 0
        self._pings: deque[int] = deque()
        self._engine: Any = None
        # A push the peer caused while earlier ones still wait in the queue: confirmed with
        # them once they are out (confirming it now would confirm them too).
        self._noted_later = 0
        # Set whenever the queue is at most half full (or the connection is gone).
        self._room = asyncio.Event()
        self._room.set()
        # Contactors with replies the client has not confirmed, for the login frame.
        self.pending_tasks: list[str] = []

    # ----- sending (what `handlers` and the outbox call) ---------------------------------------

    def send_frame(self, frame: dict[str, Any], seq: int = 0) -> bool:
        """Queue a frame for the writer; never waits. False when the connection is gone."""
        if self.closed:
            return False
        text = S.encode(frame)
        self._queue.append((text, seq))
        self._queued_bytes += len(text)
        if self._queued_bytes > self._max_queue and len(self._queue) > 1:
            self.abort("send queue overflow")
            return False
        if self._queued_bytes > self._max_queue // 2:
            self._room.clear()
        if self._writer is None:
            self._writer = self.tasks.spawn(self._write_loop(), name="socketio-writer")
        return True

    def fail(self, req: P.Request, code: ErrorCode, reason: str) -> None:
        self.send_frame(P.failure(req.request_id, req.protocol, req.type, code, reason))

    async def _write_loop(self) -> None:
        try:
            while self._queue and not self.closed:
                text, seq = self._queue.popleft()
                self._queued_bytes -= len(text)
                if self._queued_bytes <= self._max_queue // 2:
                    self._room.set()
                async with asyncio.timeout(self._send_timeout):
                    await self.edge.sio.emit(S.EVENT, text, to=self.sid)
                if seq:
                    self._written(seq)
            if self._noted_later and not self._queue:
                self._written(self._noted_later)
                self._noted_later = 0
        except TimeoutError:
            self.abort("peer stopped reading")
        finally:
            self._writer = None
        if self._queue and not self.closed:  # queued while the last emit ran
            self._writer = self.tasks.spawn(self._write_loop(), name="socketio-writer")

    def abort(self, why: str) -> None:
        if self.closed:
            return
        log.warning("socketio.peer_aborted", sid=self.sid, reason=why)
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._room.set()
        self.edge.spawn(self.edge.sio.disconnect(self.sid), name="socketio-abort")

    # ----- the push sink -----------------------------------------------------------------------

    def offer(self, push: Push) -> bool:
        return self.send_frame(P.push_frame(push), push.seq)

    def backlogged(self) -> bool:
        """The queue is past half full: a replayed backlog waits for `room`."""
        return self._queued_bytes > self._max_queue // 2

    async def room(self) -> bool:
        """Until the queue has room again; False once the connection is gone (the writer
        aborts a peer that stops reading, which ends the wait)."""
        while not self.closed and self.backlogged():
            await self._room.wait()
        return not self.closed

    def note(self, seq: int) -> None:
        """The peer knows push ``seq`` already (it caused it)."""
        if any(s for _, s in self._queue):
            self._noted_later = max(self._noted_later, seq)
        else:
            self._written(seq)

    def _written(self, seq: int) -> None:
        """Push ``seq`` is out. The web client never acknowledges pushes, so they are confirmed
        by Engine.IO's heartbeat: a pong to a ping queued after the push means the client has
        read it (one transport, in order). A ping is sent for it at once rather than at the
        next heartbeat."""
        if seq <= self._written_seq or self.closed:
            return
        self._written_seq = seq
        self._probe()

    def _probe(self) -> None:
        """A ping now, unless one is in flight (its pong sends the next if more went out)."""
        sock = self._engine
        if sock is not None and not self._pings and not sock.closed and not self.closed:
            self.tasks.spawn(sock.send(packet.Packet(packet.PING)), name="socketio-probe")

    def watch_engine(self, sock: Any) -> None:
        """Follow the Engine.IO session's pings and pongs (python-engineio tells nobody of a
        pong, so its socket's send and receive are wrapped)."""
        self._engine = sock
        send, receive = sock.send, sock.receive
        if sock.last_ping:
            # A heartbeat ping went out before this: its pong confirms nothing of ours.
            self._pings.append(0)

        async def sending(pkt: packet.Packet) -> None:
            if pkt.packet_type == packet.PING:
                self._pings.append(self._written_seq)
            await send(pkt)

        async def receiving(pkt: packet.Packet) -> None:
            if pkt.packet_type == packet.PONG and self._pings:
                self._confirm(self._pings.popleft())
                if self._written_seq > self._confirmed_seq:
                    self._probe()
            await receive(pkt)

        sock.send, sock.receive = sending, receiving

    def _confirm(self, seq: int) -> None:
        if seq > self._confirmed_seq and not self.closed:
            self._confirmed_seq = seq
            self.tasks.spawn(self.hub.outbox.confirm(self.user.id, seq), name="socketio-confirm")

    # ----- frames' work ------------------------------------------------------------------------

    def spawn_frame(
        self, req: P.Request, work: Callable[[], Awaitable[None]], order: Hashable | None
    ) -> bool:
        """Run a frame's work as a task; after the previous one with the same ``order``;
        past `limits.frames_in_flight` the frame is answered BUSY (and False returned)."""
        if self._order.running >= self._max_in_flight:
            self.fail(
                req,
                ErrorCode.BUSY,
                f"{self._max_in_flight} requests of this connection are still being handled",
            )
            return False
        self._order.spawn(
            lambda: handlers.guarded(self, req, lambda *_: work()),
            order,
            f"socketio-{req.protocol}/{req.type}",
        )
        return True

    async def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._room.set()
        self.hub.outbox.detach(self.user.id, self)
        await self.tasks.cancel_all()


class SocketIOEdge:
    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.boot_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(4)}"
        self._conns: dict[str, SioConnection] = {}
        # Refused handshakes (sid → Engine.IO session) whose session ends once the refusal is out.
        self._refused: dict[str, str] = {}
        self._tasks = TaskSet("socketio")
        self.replies = ClientReplies(hub, lambda coro: self.spawn(coro, name="client-reply"))
        self.relay: ReplyRelay | None = None  # in a cluster (join_cluster)
        self._models: dict[str, list[dict[str, Any]]] = {}
        self._begins = FrameOrder(self._tasks)
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            client_manager=_Manager(self._connected, self._refusal_sent),
            max_http_buffer_size=S.MAX_MESSAGE_BYTES,
            transports=["websocket", "polling"],
            # Frames are read in order; their work runs as the connection's own tasks.
            async_handlers=False,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on(S.EVENT, self._message)
        self.sio.on("interruptGeneration", self._interrupt)
        hub.count_also(lambda: len(self._conns))

    async def start(self) -> None:
        """Replies a previous run left streaming are failed (their client is told on return)."""
        if not self.hub.config.cluster.redis_url:
            # In a cluster, replies are settled per node, once it is gone (bridge.cluster).
            await self.replies.recover()
        self._models = self._model_list()
        self.spawn(self._watch_models(), name="socketio-models")

    async def join_cluster(self, node: ClusterNode) -> None:
        """A tab here entering a chat whose reply runs on another node gets its live frames
        (reply_relay). Before the hub takes connections."""
        from adapters.miochat.reply_relay import ReplyRelay

        relay = ReplyRelay(self.replies, node)
        await relay.start()
        self.relay = relay
        # A reply's node that stops or dies sends no end: its watches end from the store.
        node.departures.on_gone(relay.owners_gone)

    def _model_list(self) -> dict[str, list[dict[str, Any]]]:
        return S.providers(self.hub.router.model_groups())

    async def _watch_models(self) -> None:
        """Tell the open tabs when the model list changes (the targets refresh it in the
        background; a tab reads it at login only)."""
        while True:
            await asyncio.sleep(MODELS_CHECK_INTERVAL)
            try:
                self.check_models()
            except Exception:
                log.exception("socketio.models_check_failed")

    def check_models(self) -> bool:
        """Push `models_updated` to every tab if the list changed since the last check."""
        now = self._model_list()
        if now == self._models:
            return False
        self._models = now
        api = self.hub.http.client
        info = api.base_info()
        frame = S.models_updated(
            self.hub.outbox.next_push_id(),
            groups=self.hub.router.model_groups(),
            llm_providers=info.get("llm_providers", []),
            default_model=info.get("default_model", {}),
            timestamp=int(time.time() * 1000),
        )
        for conn in list(self._conns.values()):
            conn.send_frame(frame)
        log.info("socketio.models_updated", tabs=len(self._conns))
        return True

    def spawn(self, coro: Any, *, name: str) -> None:
        self._tasks.spawn(coro, name=name)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.sio.handle_request(request)

    async def stop(self) -> None:
        for sid in list(self._conns):
            await self.sio.disconnect(sid)
        if self.sio.eio.sockets:
            try:
                # Ends the Engine.IO sessions, long-polls included (bounded: a peer that is gone
                # never fetches its close packet).
                async with asyncio.timeout(ENGINE_CLOSE_TIMEOUT):
                    await self.sio.eio.disconnect()
            except TimeoutError:
                log.warning("socketio.stop_timeout", open=len(self.sio.eio.sockets))
        if self.relay is not None:
            await self.relay.close()
            self.relay = None
        await self._tasks.cancel_all()
        await self.sio.shutdown()

    # ----- handshake ---------------------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        hub = self.hub
        try:
            a = S.parse_auth(auth)
        except ValueError as e:
            self._refuse(sid, str(e))
        is_admin = handlers.code_rights(hub.admin_code, hub.config.auth.user_code, a.token)
        if is_admin is None:
            self._refuse(sid, "invalid code")
        if hub.connection_count >= hub.max_connections:
            log.warning("hub.connection_limit", limit=hub.max_connections)
            self._refuse(sid, "server is full, try again later")
        # A client without an id (its first setup failed) still gets in, as a new user.
        user_id = a.user_id or f"sio-{secrets.token_hex(8)}"
        await hub.storage.users.touch(user_id, is_admin)
        conn = SioConnection(self, sid, UserRef(user_id, is_admin))
        conn.pending_tasks = await self.replies.pending_contactors(user_id)
        self._conns[sid] = conn
        hub.metrics.login("socketio", True)
        log.info("socketio.login", user=user_id, admin=is_admin, generated=a.user_id is None)
        return True

    def _refuse(self, sid: str, reason: str) -> NoReturn:
        """A connect error carrying ``reason`` (the web client shows its message)."""
        log.info("socketio.login_failed", reason=reason)
        self.hub.metrics.login("socketio", False)
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self._refused[sid] = eio_sid
        raise socketio.exceptions.ConnectionRefusedError(reason)

    def _refusal_sent(self, sid: str) -> None:
        """A refused handshake's session has nothing left to do: it ends now rather than at
        its next ping (a long-poll held open by nobody's login)."""
        eio_sid = self._refused.pop(sid, None)
        if eio_sid is not None:
            self.spawn(self._close_engine(eio_sid), name="socketio-close-refused")

    async def _close_engine(self, eio_sid: str) -> None:
        try:
            async with asyncio.timeout(ENGINE_CLOSE_TIMEOUT):
                await self.sio.eio.disconnect(eio_sid)
        except TimeoutError:
            pass

    def _connected(self, sid: str) -> None:
        conn = self._conns.get(sid)
        if conn is None:
            return
        hub = self.hub
        sock = self.sio.eio.sockets.get(self.sio.manager.eio_sid_from_sid(sid, "/"))
        if sock is not None:
            conn.watch_engine(sock)
        conn.send_frame(
            S.login_frame(
                hub.outbox.next_push_id(),
                boot_id=self.boot_id,
                is_admin=conn.user.is_admin,
                groups=hub.router.model_groups(),
                onebot_enabled=bool(hub.config.onebot.frameworks),
                user_id=conn.user.id,
                pending_tasks=conn.pending_tasks,
            )
        )
        conn.tasks.spawn(self._attach(conn), name="socketio-attach")

    async def _attach(self, conn: SioConnection) -> None:
        replayed = await self.hub.outbox.attach(conn.user.id, conn)
        if replayed:
            log.info("socketio.outbox_replayed", user=conn.user.id, count=replayed)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._conns.pop(sid, None)
        if conn is not None:
            log.info("socketio.close", user=conn.user.id, reason=str(reason))
            self.replies.leave(conn)
            await conn.close()

    # ----- frames ------------------------------------------------------------------------------

    async def _message(self, sid: str, data: Any) -> None:
        conn = self._conns.get(sid)
        if conn is None or conn.closed:
            return
        frame = S.parse(data)
        self.hub.metrics.socketio_frame(frame)
        if isinstance(frame, P.FrameError):
            conn.send_frame(P.failure_from(frame))
            return
        if isinstance(frame, P.HeartbeatRequest):
            handlers.on_heartbeat(conn, frame)  # type: ignore[arg-type]
        elif isinstance(frame, P.MessageRequest):
            conn.spawn_frame(
                frame, lambda: self._send(conn, frame), ("contact", frame.data.contact)
            )
        elif isinstance(frame, P.DeleteMessageRequest):
            conn.spawn_frame(frame, lambda: handlers.on_del_message(conn, frame), None)  # type: ignore[arg-type]
        elif isinstance(frame, L.Completions):
            # Registered as it is read: an interrupt or a retry right behind it finds it. The
            # reply is the user's, not the tab's: it begins as the edge's task (in order per
            # contactor), so closing the tab cannot cancel it half-begun.
            reply = self.replies.register(conn, conn.user, frame)
            if reply is not None:
                self._begins.spawn(
                    lambda: self.replies.begin(reply, frame),
                    (conn.user.id, frame.contactor_id),
                    "client-reply-begin",
                )
        elif isinstance(frame, L.EnterChat):
            conn.spawn_frame(
                frame,  # type: ignore[arg-type]
                lambda: self.replies.enter(conn, conn.user, frame.contactor_id),
                ("llm", frame.contactor_id),
            )
        elif isinstance(frame, L.AckMessage):
            conn.spawn_frame(
                frame,  # type: ignore[arg-type]
                lambda: self.replies.ack(conn.user, frame.message_id),
                ("llm", frame.contactor_id),
            )
        elif isinstance(frame, L.Interrupt):
            self.replies.interrupt(conn.user, frame)
        elif isinstance(frame, P.LoginRequest):
            conn.fail(frame, ErrorCode.INVALID_DATA, "log in with the Socket.IO auth object")
        else:
            conn.fail(
                frame,
                ErrorCode.UNKNOWN_TYPE,
                f"{frame.protocol}/{frame.type} is not served on the Socket.IO transport yet",
            )

    def _contact(self, conn: SioConnection, contact: str) -> str:
        """The bridge contact a message is for. The web client's OneBot contact has an id of
        the client's own making (it talks to "the bot", as the reference server has one): a
        contact the bridge does not know goes to the bot framework's account, if one is linked."""
        router = self.hub.router
        try:
            router.contact_target(contact)
        except BridgeError:
            bot = next((c.id for c in router.contacts(conn.user) if c.kind == "onebot"), None)
            if bot is not None:
                return bot
        return contact

    async def _interrupt(self, sid: str, data: Any = None) -> None:
        """`interruptGeneration {contactorId, messageId}`: a plain object, not a frame; nothing
        answers it but the reply's own `complete`."""
        conn = self._conns.get(sid)
        it = L.parse_interrupt(data)
        if conn is None or conn.closed or it is None:
            return
        stopped = self.replies.interrupt(conn.user, it)
        log.info("socketio.interrupt", user=conn.user.id, message=it.message_id, stopped=stopped)

    async def _send(self, conn: SioConnection, req: P.MessageRequest) -> None:
        """onebot/message: stored and queued by the core; the reply comes as a push."""
        msg = req.data
        accepted = await self.hub.sessions.send(
            conn.user,
            self._contact(conn, msg.contact),
            msg.segments,
            stream_request_id=req.request_id,
        )
        conn.send_frame(S.onebot_ack(req.request_id, accepted.message_id))
