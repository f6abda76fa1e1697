"""The hub: a websockets server speaking the mio-chat envelope, plus a few HTTP routes on the same port.

The socket code stays thin: frames are parsed and built by `protocol`, the work is done by the core
(`Sessions`, `Router`, `Outbox`). One `_Client` per connection; it is also that connection's push sink.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.miochat import protocol as P
from adapters.miochat.http_shim import HubConnection
from adapters.miochat.share_card import render_card
from bridge.config import Config
from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    CompletionRequest,
    Delta,
    Done,
    Failed,
    ReplyEvent,
    ToolCall,
    UserRef,
)
from bridge.outbox import Outbox, Push
from bridge.router import Router
from bridge.sessions import Accepted, Sessions
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

CLOSE_LOGIN = 4001
SEND_TIMEOUT = 10.0
WS_PATHS = {"/", "/api/gateway"}


class _StreamRenderer:
    """Turns neutral reply events into pending/update/completed frames on one request_id."""

    def __init__(self, client: _Client, request_id: P.RequestId, protocol: str, ftype: str) -> None:
        self.client = client
        self.request_id = request_id
        self.protocol = protocol
        self.type = ftype
        self.seq = 0
        self.finished = False

    async def pending(self) -> None:
        await self.client.send(P.stream_frame(self.request_id, self.protocol, self.type, "pending"))

    async def __call__(self, event: ReplyEvent) -> None:
        if self.finished:
            return
        frame: dict[str, Any]
        if isinstance(event, Delta):
            data: dict[str, Any] = {
                "index": 0,
                "seq": self.seq,
                "chunk": event.text,
                "tool_call": None,
            }
            if event.reasoning:
                data["reasoning_content"] = event.reasoning
            self.seq += 1
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "update", data)
        elif isinstance(event, ToolCall):
            call: dict[str, Any] = {
                "name": event.name,
                "action": event.action,
                "params": event.params,
            }
            if event.result is not None:
                call["result"] = event.result
            data = {"index": event.index, "seq": self.seq, "chunk": "", "tool_call": call}
            self.seq += 1
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "update", data)
        elif isinstance(event, Done):
            done: dict[str, Any] = {"finish_reason": event.finish_reason}
            if event.usage:
                done["usage"] = event.usage
            self.finished = True
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "completed", done)
        else:
            assert isinstance(event, Failed)
            self.finished = True
            frame = P.failure(self.request_id, self.protocol, self.type, event.error, event.reason)
        await self.client.send(frame)


class _Client:
    def __init__(self, hub: HubServer, ws: ServerConnection) -> None:
        self.hub = hub
        self.ws = ws
        self.user: UserRef | None = None
        self.tasks = TaskSet("hub-connection")
        self.streams: dict[P.RequestId, asyncio.Task[None]] = {}
        # Reply listeners still streaming to this connection; detached from their replies on close.
        self.listeners: set[Callable[[ReplyEvent], Awaitable[None]]] = set()
        self.peer = "%s:%s" % (ws.remote_address[:2] if ws.remote_address else ("?", "?"))

    # ----- Sink -----------------------------------------------------------------------------

    async def deliver(self, push: Push) -> bool:
        if push.kind == "recall":
            frame = P.recall_push(push.push_id, push.contact, push.message_id)
        else:
            frame = P.message_push(
                push.push_id,
                push.contact,
                push.segments,
                push.message_id,
                push.time,
                push.sender_id,
                push.sender_name,
                push.stream_request_id,
            )
        try:
            await self.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def send(self, frame: dict[str, Any]) -> None:
        data = P.dumps(frame)
        transport = self.ws.transport
        if transport is not None and not transport.get_write_buffer_size():
            # Nothing queued: this send cannot block, so skip the cost of arming a timer.
            await self.ws.send(data)
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.ws.send(data)
        except TimeoutError:
            # A client that does not read must not hold up its user's other connections.
            log.warning("hub.slow_client_dropped", peer=self.peer)
            await self.ws.close(1008, "client too slow")
            raise ConnectionClosed(None, None) from None

    async def send_safe(self, frame: dict[str, Any]) -> None:
        try:
            await self.send(frame)
        except ConnectionClosed:
            pass

    # ----- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        hub = self.hub
        creds = _upgrade_credentials(self.ws.request)
        if creds is not None:
            await self._login(creds, hub.outbox.next_push_id(), pushed=True)
            if self.user is None:
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hub.config.auth.login_timeout
        while True:
            if self.user is None:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        raw = await self.ws.recv()
                except TimeoutError:
                    log.info("hub.login_timeout", peer=self.peer)
                    await self.ws.close(CLOSE_LOGIN, "login timeout")
                    return
            else:
                raw = await self.ws.recv()
            await self.dispatch(raw)
            if self.ws.close_code is not None:
                return

    async def cleanup(self) -> None:
        if self.user is not None:
            self.hub.outbox.detach(self.user.id, self)
            self.hub.drop_client(self.user.id, self)
        for r in self.listeners:
            self.hub.sessions.detach_listener(r)
        await self.tasks.cancel_all()

    # ----- dispatch ---------------------------------------------------------------------------

    async def dispatch(self, raw: str | bytes) -> None:
        try:
            req = P.parse_frame(raw)
        except P.FrameError as e:
            await self.send(P.failure(e.request_id, e.protocol, e.type, e.code, e.reason))
            return
        if self.user is None and (req.protocol, req.type) != ("system", "login"):
            await self._fail(req, ErrorCode.UNAUTHENTICATED, "log in first (system/login)")
            return
        types = HANDLERS.get(req.protocol)
        if types is None:
            await self._fail(
                req,
                ErrorCode.UNKNOWN_PROTOCOL,
                f"unknown protocol {req.protocol!r}; expected one of {sorted(HANDLERS)}",
            )
            return
        handler = types.get(req.type)
        if handler is None:
            await self._fail(
                req,
                ErrorCode.UNKNOWN_TYPE,
                f"unknown type {req.type!r} for protocol {req.protocol!r}",
            )
            return
        try:
            await handler(self, req)
        except (BridgeError, P.FrameError) as e:
            await self._fail(req, e.code, e.reason)
        except (ValidationError, ValueError) as e:
            await self._fail(req, ErrorCode.INVALID_DATA, P.validation_reason(e))
        except TypeError as e:
            await self._fail(req, ErrorCode.INVALID_DATA, str(e))
        except ConnectionClosed:
            raise
        except Exception as e:
            log.exception("hub.handler_crashed", protocol=req.protocol, type=req.type)
            await self._fail(req, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")

    async def _fail(self, req: P.Request, code: ErrorCode, reason: str) -> None:
        await self.send(P.failure(req.request_id, req.protocol, req.type, code, reason))

    # ----- system -----------------------------------------------------------------------------

    async def _login(self, raw: Any, request_id: P.RequestId, *, pushed: bool = False) -> None:
        hub = self.hub
        auth = hub.config.auth
        try:
            if not isinstance(raw, dict):
                raise ValueError("data must be an object with mio-chat-id and mio-chat-token")
            data = P.LoginData.model_validate(raw)
        except (ValidationError, ValueError) as e:
            await self._login_failed(request_id, P.validation_reason(e))
            return
        if hub.admin_code and data.token == hub.admin_code:
            is_admin = True
        elif auth.user_code and data.token != auth.user_code:
            await self._login_failed(request_id, "invalid code")
            return
        else:
            is_admin = False
        if self.user is not None:
            hub.outbox.detach(self.user.id, self)
            hub.drop_client(self.user.id, self)
        self.user = UserRef(data.user_id, is_admin)
        structlog.contextvars.bind_contextvars(user=data.user_id)
        await hub.storage.users.touch(data.user_id, is_admin)
        hub.add_client(data.user_id, self)
        await self.send(P.success(request_id, "system", "login", hub.login_payload(self.user)))
        log.info("hub.login", peer=self.peer, user=data.user_id, admin=is_admin, pushed=pushed)
        delivered = await hub.outbox.attach(data.user_id, self)
        if delivered:
            log.info("hub.outbox_delivered", user=data.user_id, count=delivered)

    async def _login_failed(self, request_id: P.RequestId, reason: str) -> None:
        log.info("hub.login_failed", peer=self.peer, reason=reason)
        await self.send_safe(
            P.failure(request_id, "system", "login", ErrorCode.LOGIN_FAILED, reason)
        )
        await self.ws.close(CLOSE_LOGIN, "login failed")

    async def on_login(self, req: P.Request) -> None:
        await self._login(req.data, req.request_id)

    async def on_heartbeat(self, req: P.Request) -> None:
        data = P.HeartbeatData.model_validate(req.data if isinstance(req.data, dict) else {})
        now = time.time() * 1000
        sent = data.millis()
        delay = int(now - sent) if sent is not None else 0
        await self.send(
            P.success(req.request_id, "system", "heartbeat", {"delay": delay, "revTime": int(now)})
        )

    async def on_share(self, req: P.Request) -> None:
        data = P.ShareData.model_validate(_need_object(req.data))
        await self.send(
            P.success(
                req.request_id, "system", "share", await self.hub.create_share(data.contactor, None)
            )
        )

    # ----- onebot -----------------------------------------------------------------------------

    async def on_message(self, req: P.Request) -> None:
        assert self.user is not None
        msg = P.parse_send_message(req)
        await self._send_streamed(
            req,
            msg.contact,
            lambda listener: self.hub.sessions.send(
                self.user,
                msg.contact,
                msg.segments,
                listener=listener,
                stream_request_id=req.request_id,
            ),
        )

    async def on_forward(self, req: P.Request) -> None:
        assert self.user is not None
        fwd = P.parse_forward(req)
        items = [(i.message_id, i.segments) for i in fwd.items]
        await self._send_streamed(
            req,
            fwd.contact,
            lambda listener: self.hub.sessions.forward(
                self.user,
                fwd.contact,
                items,
                listener=listener,
                stream_request_id=req.request_id,
            ),
        )

    async def _send_streamed(
        self,
        req: P.Request,
        contact: str,
        submit: Callable[[Callable[[ReplyEvent], Awaitable[None]]], Awaitable[Accepted]],
    ) -> None:
        """Ack with the stored message id; a streamed reply then follows on the same request_id."""
        renderer = _StreamRenderer(self, req.request_id, req.protocol, req.type)
        gate = asyncio.Event()

        async def listener(event: ReplyEvent) -> None:
            # The ack and `pending` must precede the first update even if the reply is quick.
            if not gate.is_set():  # open after the ack: later events skip the timer entirely
                async with asyncio.timeout(SEND_TIMEOUT):
                    await gate.wait()
            if isinstance(event, Done | Failed):
                self.listeners.discard(listener)
            await renderer(event)

        self.listeners.add(listener)
        try:
            accepted = await submit(listener)
            ack = {"message_id": accepted.message_id}
            await self.send(P.success(req.request_id, req.protocol, req.type, ack))
            if accepted.streaming:
                await renderer.pending()
            else:
                self.listeners.discard(listener)
        except BaseException:
            self.listeners.discard(listener)
            raise
        finally:
            gate.set()

    async def on_del_message(self, req: P.Request) -> None:
        assert self.user is not None
        d = P.parse_del_message(req)
        await self.hub.sessions.recall(self.user, d.message_id, exclude_sink=self)
        await self.send(P.success(req.request_id, req.protocol, req.type))

    # ----- openai -----------------------------------------------------------------------------

    async def on_models(self, req: P.Request) -> None:
        hub = self.hub
        if not hub.router.has_models:
            raise BridgeError(
                ErrorCode.UNAVAILABLE,
                "no model provider is configured (add [[openai.providers]] or [momohub])",
            )
        assert self.user is not None
        characters = [
            {"id": c.id, "name": c.name, "avatar": c.avatar, "bio": c.bio}
            for c in hub.router.contacts(self.user)
            if c.kind == "character"
        ]
        await self.send(
            P.success(
                req.request_id,
                req.protocol,
                req.type,
                {
                    "models": [g.to_json() for g in hub.router.model_groups()],
                    "characters": characters,
                },
            )
        )

    async def on_completions(self, req: P.Request) -> None:
        assert self.user is not None
        hub = self.hub
        data = P.CompletionsData.model_validate(_need_object(req.data))
        model = data.model or hub.config.openai.default_model
        if not model:
            raise BridgeError(
                ErrorCode.INVALID_DATA, "model is required (no openai.default_model set)"
            )
        target = hub.router.model_target(model)
        if req.request_id in self.streams:
            raise BridgeError(
                ErrorCode.INVALID_DATA, "a stream with this request_id is already running"
            )
        if hub.active_streams[self.user.id] >= hub.config.limits.streams_per_user:
            raise BridgeError(
                ErrorCode.BUSY,
                f"at most {hub.config.limits.streams_per_user} concurrent completions per user",
            )
        request = CompletionRequest(
            user=self.user,
            model=model,
            messages=data.messages,
            conversation_id=data.conversation_id,
            temperature=data.temperature,
            top_p=data.top_p,
            presence_penalty=data.presence_penalty,
            frequency_penalty=data.frequency_penalty,
            max_tokens=data.max_tokens,
            tools=data.tools,
        )
        renderer = _StreamRenderer(self, req.request_id, req.protocol, req.type)
        hub.active_streams[self.user.id] += 1
        user_id = self.user.id

        async def run() -> None:
            stream: AsyncIterator[ReplyEvent] = target.complete(request)
            try:
                await renderer.pending()
                async for event in stream:
                    await renderer(event)
                    if renderer.finished:
                        break
                if not renderer.finished:
                    await renderer(
                        Failed(ErrorCode.UPSTREAM_ERROR, "the model stream ended without a result")
                    )
            except asyncio.CancelledError:
                if self.ws.close_code is None:
                    await self.send_safe(
                        P.failure(
                            req.request_id,
                            req.protocol,
                            req.type,
                            ErrorCode.CANCELLED,
                            "the stream was aborted",
                        )
                    )
                raise
            except ConnectionClosed:
                pass
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                hub.active_streams[user_id] -= 1
                if hub.active_streams[user_id] <= 0:
                    del hub.active_streams[user_id]
                self.streams.pop(req.request_id, None)

        self.streams[req.request_id] = self.tasks.spawn(run(), name=f"completion-{req.request_id}")

    async def on_abort(self, req: P.Request) -> None:
        assert self.user is not None
        data = P.AbortData.model_validate(_need_object(req.data))
        for client in self.hub.clients_of(self.user.id):
            task = client.streams.get(data.request_id)
            if task is not None:
                task.cancel()
                await self.send(P.success(req.request_id, req.protocol, req.type))
                return
        raise BridgeError(
            ErrorCode.NOT_FOUND, f"no running stream with request_id {data.request_id!r}"
        )


def _need_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    return data


Handler = Callable[[_Client, P.Request], Awaitable[None]]
HANDLERS: dict[str, dict[str, Handler]] = {
    "system": {
        "login": _Client.on_login,
        "heartbeat": _Client.on_heartbeat,
        "share": _Client.on_share,
    },
    "onebot": {
        "message": _Client.on_message,
        "del_message": _Client.on_del_message,
        "forward_msg": _Client.on_forward,
    },
    "openai": {
        "models": _Client.on_models,
        "completions": _Client.on_completions,
        "abort": _Client.on_abort,
    },
}


def _upgrade_credentials(request: Request | None) -> dict[str, Any] | None:
    if request is None:
        return None
    query = parse_qs(urlsplit(request.path).query)
    uid = request.headers.get("mio-chat-id") or (query.get("mio-chat-id") or [None])[0]
    if uid is None:
        return None
    token = request.headers.get("mio-chat-token") or (query.get("mio-chat-token") or [""])[0]
    return {"mio-chat-id": uid, "mio-chat-token": token}


class HubServer:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        router: Router,
        outbox: Outbox,
        sessions: Sessions,
        *,
        admin_code: str,
    ) -> None:
        self.config = config
        self.storage = storage
        self.router = router
        self.outbox = outbox
        self.sessions = sessions
        self.admin_code = admin_code
        self.active_streams: defaultdict[str, int] = defaultdict(int)
        self._clients: dict[str, set[_Client]] = {}
        self._server: Server | None = None
        self._all: set[_Client] = set()
        self._count_changed = asyncio.Condition()
        self._max_connections = config.server.max_connections

    # ----- clients ----------------------------------------------------------------------------

    def add_client(self, user_id: str, client: _Client) -> None:
        self._clients.setdefault(user_id, set()).add(client)

    def drop_client(self, user_id: str, client: _Client) -> None:
        s = self._clients.get(user_id)
        if s is not None:
            s.discard(client)
            if not s:
                del self._clients[user_id]

    def clients_of(self, user_id: str) -> list[_Client]:
        return list(self._clients.get(user_id, ()))

    @property
    def connection_count(self) -> int:
        return len(self._all)

    async def wait_connections(self, count: int) -> None:
        """Until exactly ``count`` connections are open (for tests, benchmarks, shutdown)."""
        async with self._count_changed:
            await self._count_changed.wait_for(lambda: len(self._all) == count)

    async def _counted(self, client: _Client, add: bool) -> None:
        async with self._count_changed:
            if add:
                self._all.add(client)
            else:
                self._all.discard(client)
            self._count_changed.notify_all()

    def login_payload(self, user: UserRef) -> dict[str, Any]:
        auth = self.config.auth
        return {
            "is_admin": user.is_admin,
            "admin_qq": auth.admin_qq,
            "bot_qq": auth.bot_qq,
            "default_model": self.config.openai.default_model,
            "models": [g.to_json() for g in self.router.model_groups()],
            "contacts": [c.to_json() for c in self.router.contacts(user)],
        }

    # ----- server -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def max_connections(self) -> int:
        return self._max_connections

    def _effective_max_connections(self) -> int:
        limit = self.config.server.max_connections
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except ImportError:
            return limit
        if soft != resource.RLIM_INFINITY and soft - 64 < limit:
            # Running out of descriptors makes accept() fail in a tight, log-flooding loop;
            # refusing politely below the limit keeps the server healthy.
            limit = max(1, soft - 64)
            log.warning("hub.max_connections_lowered", limit=limit, open_file_limit=soft)
        return limit

    async def start(self) -> None:
        cfg = self.config.server
        self._max_connections = self._effective_max_connections()
        HubConnection.max_body = cfg.max_frame_bytes
        # Pings every third of the idle timeout; a peer that misses them for the rest is dropped.
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            create_connection=HubConnection,
            process_request=self._http,
            max_size=cfg.max_frame_bytes,
            compression="deflate" if cfg.compression else None,
            ping_interval=cfg.idle_timeout / 3,
            ping_timeout=cfg.idle_timeout * 2 / 3,
            close_timeout=2,
            server_header="MomoBridge",
        )
        log.info("hub.listening", host=cfg.host, port=self.port, compression=cfg.compression)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=True)
        try:
            async with asyncio.timeout(5):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("hub.stop_timeout", open=len(self._all))
        self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(self, ws)
        await self._counted(client, True)
        log.info("hub.connect", peer=client.peer)
        try:
            await client.run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("hub.connection_crashed", peer=client.peer)
        finally:
            await self._counted(client, False)
            await client.cleanup()
            log.info(
                "hub.close",
                peer=client.peer,
                user=client.user.id if client.user else None,
                code=ws.close_code,
                reason=ws.close_reason,
            )
            structlog.contextvars.unbind_contextvars("user")

    # ----- HTTP -------------------------------------------------------------------------------

    def public_url(self, request: Request | None) -> str:
        if self.config.server.public_url:
            return self.config.server.public_url.rstrip("/")
        host = request.headers.get("Host") if request is not None else None
        return f"http://{host or f'{self.config.server.host}:{self.port}'}"

    async def create_share(
        self, contactor: dict[str, Any], request: Request | None
    ) -> dict[str, str]:
        share_id = await self.storage.shares.create(contactor)
        base = self.public_url(request)
        return {
            "shareUrl": f"{base}/share/{share_id}",
            "previewImg": f"{base}/share/{share_id}/preview.svg",
        }

    async def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        method = request.method
        if (
            method == "GET"
            and path in WS_PATHS
            and "upgrade" in request.headers.get("Connection", "").lower()
        ):
            if len(self._all) >= self._max_connections:
                log.warning("hub.connection_limit", limit=self._max_connections)
                return _json(conn, 503, _fail("server is full, try again later", ErrorCode.BUSY))
            return None
        try:
            return await self._route(conn, request, method, path)
        except Exception:
            log.exception("http.crashed", path=path)
            return _json(
                conn,
                500,
                {
                    "code": 1,
                    "message": "failed",
                    "data": {"reason": "internal error", "error": "INTERNAL"},
                },
            )

    async def _route(
        self, conn: ServerConnection, request: Request, method: str, path: str
    ) -> Response:
        if method == "OPTIONS":
            return _cors(conn.respond(204, ""))
        if method == "GET" and path == "/healthz":
            return _json(conn, 200, {"status": "ok", "connections": len(self._all)})
        if method == "GET" and path == "/api/base_info":
            auth = self.config.auth
            return _json(
                conn,
                200,
                {
                    "code": 0,
                    "message": "success",
                    "data": {
                        "admin_qq": auth.admin_qq,
                        "bot_qq": auth.bot_qq,
                        "title": self.config.server.title,
                    },
                },
            )
        if path == "/api/share":
            if method != "POST":
                return _json(conn, 405, _fail("use POST", ErrorCode.BAD_FRAME))
            if getattr(conn, "body_too_large", False):
                return _json(conn, 413, _fail("body too large", ErrorCode.INVALID_DATA))
            try:
                body = json.loads(getattr(conn, "http_body", b"") or b"null")
                data = P.ShareData.model_validate(_need_object(body))
            except (ValueError, ValidationError) as e:
                reason = (
                    P.validation_reason(e)
                    if isinstance(e, ValidationError)
                    else f'body must be JSON {{"contactor": {{...}}}}: {e}'
                )
                return _json(conn, 400, _fail(reason, ErrorCode.INVALID_DATA))
            return _json(
                conn,
                200,
                {
                    "code": 0,
                    "message": "success",
                    "data": await self.create_share(data.contactor, request),
                },
            )
        if method == "GET" and path.startswith("/share/"):
            rest = path[len("/share/") :]
            share_id, _, tail = rest.partition("/")
            contactor = await self.storage.shares.get(share_id) if share_id else None
            if contactor is None:
                return _json(conn, 404, _fail("no such share", ErrorCode.NOT_FOUND))
            if tail == "preview.svg":
                resp = conn.respond(200, render_card(contactor, self.config.server.title))
                return _ctype(resp, "image/svg+xml; charset=utf-8")
            if tail:
                return _json(conn, 404, _fail("no such page", ErrorCode.NOT_FOUND))
            return _json(conn, 200, contactor)
        if path in WS_PATHS and method == "GET":
            return _json(
                conn,
                426,
                _fail(
                    "this is a WebSocket endpoint: connect with a WebSocket client",
                    ErrorCode.BAD_FRAME,
                ),
            )
        return _json(conn, 404, _fail(f"no route {method} {path}", ErrorCode.NOT_FOUND))


def _fail(reason: str, error: ErrorCode) -> dict[str, Any]:
    return {"code": 1, "message": "failed", "data": {"reason": reason, "error": str(error)}}


def _ctype(resp: Response, ctype: str) -> Response:
    del resp.headers["Content-Type"]
    resp.headers["Content-Type"] = ctype
    return _cors(resp)


def _cors(resp: Response) -> Response:
    h: Headers = resp.headers
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    h["Access-Control-Allow-Headers"] = "Content-Type"
    return resp


def _json(conn: ServerConnection, status: int, body: Any) -> Response:
    return _ctype(conn.respond(status, json.dumps(body, ensure_ascii=False)), "application/json")
