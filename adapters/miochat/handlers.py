"""What the hub does with each request frame, dispatched by (protocol, type).

Handlers that answer from memory (login, heartbeat, ack, abort) run as the frame is read, so they
are answered at once whatever else is going on. The rest run as tasks of their connection;
frames that touch one conversation are ordered by a key.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from adapters.miochat import protocol as P
from adapters.miochat.connection import CLOSE_LOGIN, StreamSlot
from adapters.miochat.streams import StreamRenderer
from bridge import completions
from bridge.engine import Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.metrics import target_kind
from bridge.models import CompletionRequest, Failed, ReplyEvent, UserRef
from bridge.sessions import Accepted

if TYPE_CHECKING:
    from aiohttp import web

    from adapters.miochat.connection import Connection

Frame = Any  # one of the typed request models of `protocol` (P.RequestFrame)

log = structlog.get_logger(__name__)


def upgrade_credentials(request: web.Request | None) -> dict[str, Any] | None:
    if request is None:
        return None
    query = request.query
    # A blank value (`?mio-chat-id=`) means no upgrade login, as if the parameter were absent.
    uid = request.headers.get("mio-chat-id") or query.get("mio-chat-id") or None
    if uid is None:
        return None
    token = request.headers.get("mio-chat-token") or query.get("mio-chat-token") or ""
    return {"mio-chat-id": uid, "mio-chat-token": token}


def _same(a: str, b: str) -> bool:
    """Constant time, so a token cannot be guessed byte by byte from response times."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def code_rights(admin_code: str, user_code: str, token: str) -> bool | None:
    """The login rule for every hub transport: True admin, False user, None refused."""
    if admin_code and _same(token, admin_code):
        return True
    if user_code and not _same(token, user_code):
        return None
    return False


# ----- dispatch ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    handler: Callable[..., Awaitable[None]] | None
    # Answered from memory as the frame is read (never waits on storage or an upstream).
    inline: bool = False
    # A synchronous answer that cannot fail (built from the frame alone): called in place, no
    # handler coroutine nor guard around it (heartbeats, the most frequent frame).
    answer: Callable[[Connection, Any], None] | None = None
    # Run as the frame is read; returns the ordering key (frames with the same key run in
    # arrival order; None: no ordering) and what the handler gets as its third argument.
    prepare: Callable[[Connection, Any], tuple[Hashable | None, Any]] | None = None


# Before login a peer is anonymous: a bigger frame is refused unread (a login frame is well
# under 1 KiB), so an anonymous peer cannot make the hub spend time parsing.
MAX_FRAME_BEFORE_LOGIN = 64 * 1024
# Parsing a frame this large takes long enough to hold up other connections: off the loop.
PARSE_IN_THREAD = 128 * 1024


async def dispatch(conn: Connection, raw: str | bytes) -> None:
    logged_in = conn.user is not None
    if not logged_in and len(raw) > MAX_FRAME_BEFORE_LOGIN:
        reason = f"frames before login are limited to {MAX_FRAME_BEFORE_LOGIN} bytes"
        conn.send_frame(P.failure(None, None, None, ErrorCode.BAD_FRAME, reason))
        return
    if len(raw) > PARSE_IN_THREAD:
        frame = await asyncio.to_thread(P.parse_request, raw, logged_in=logged_in)
    else:
        frame = P.parse_request(raw, logged_in=logged_in)
    conn.hub.metrics.frame(frame)
    if isinstance(frame, P.FrameError):
        if frame.code == ErrorCode.LOGIN_FAILED:
            await _login_failed(conn, frame.request_id, frame.reason)
        else:
            conn.send_frame(P.failure_from(frame))
        return
    route = ROUTES[type(frame)]
    if route.answer is not None:
        route.answer(conn, frame)
        return
    assert route.handler is not None
    if route.inline:
        await guarded(conn, frame, route.handler)
        return
    if not conn.has_room(frame):
        return
    if route.prepare is None:
        conn.spawn_frame(frame, lambda: guarded(conn, frame, route.handler), None)
        return
    try:
        order, extra = route.prepare(conn, frame)
    except BridgeError as e:
        conn.fail(frame, e.code, e.reason)
        return
    conn.spawn_frame(frame, lambda: guarded(conn, frame, route.handler, extra), order)


async def guarded(
    conn: Connection, req: Frame, handler: Callable[..., Awaitable[None]], *extra: Any
) -> None:
    try:
        await handler(conn, req, *extra)
    except (BridgeError, P.FrameError) as e:
        conn.fail(req, e.code, e.reason)
    except (ValidationError, ValueError) as e:
        conn.fail(req, ErrorCode.INVALID_DATA, P.validation_reason(e))
    except TypeError as e:
        conn.fail(req, ErrorCode.INVALID_DATA, str(e))
    except TimeoutError:
        conn.fail(req, ErrorCode.UPSTREAM_TIMEOUT, "timed out")
    except Exception as e:
        log.exception("hub.handler_crashed", protocol=req.protocol, type=req.type)
        conn.fail(req, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")


# ----- system --------------------------------------------------------------------------------


async def login(
    conn: Connection, raw: Any, request_id: P.RequestId, *, pushed: bool = False
) -> None:
    hub = conn.hub
    auth = hub.config.auth
    if isinstance(raw, P.LoginData):
        data = raw
    else:
        try:
            if not isinstance(raw, dict):
                raise ValueError("data must be an object with mio-chat-id and mio-chat-token")
            data = P.LoginData.model_validate(raw)
        except (ValidationError, ValueError) as e:
            await _login_failed(conn, request_id, P.validation_reason(e))
            return
    is_admin = code_rights(hub.admin_code, auth.user_code, data.token)
    if is_admin is None:
        await _login_failed(conn, request_id, "invalid code")
        return
    if conn.user is not None:
        hub.outbox.detach(conn.user.id, conn)
        hub.drop_client(conn.user.id, conn)
        if conn.user.id != data.user_id:
            conn.reset_delivery()  # what the peer confirmed was the other user's
    conn.user = UserRef(data.user_id, is_admin)
    structlog.contextvars.bind_contextvars(user=data.user_id)
    await hub.storage.users.touch(data.user_id, is_admin)
    hub.add_client(data.user_id, conn)
    conn.send_frame(P.success(request_id, "system", "login", hub.login_payload(conn.user)))
    hub.metrics.login("websocket", True)
    log.info("hub.login", peer=conn.peer, user=data.user_id, admin=is_admin, pushed=pushed)
    replayed = await hub.outbox.attach(data.user_id, conn)
    if replayed:
        log.info("hub.outbox_replayed", user=data.user_id, count=replayed)


async def _login_failed(conn: Connection, request_id: P.RequestId, reason: str) -> None:
    log.info("hub.login_failed", peer=conn.peer, reason=reason)
    conn.hub.metrics.login("websocket", False)
    conn.send_frame(P.failure(request_id, "system", "login", ErrorCode.LOGIN_FAILED, reason))
    await conn.close(CLOSE_LOGIN, "login failed")


async def on_login(conn: Connection, f: P.LoginRequest) -> None:
    await login(conn, f.data, f.request_id)


def on_heartbeat(conn: Connection, f: P.HeartbeatRequest) -> None:
    conn.send_frame(P.heartbeat_reply(f.request_id, f.data, time.time() * 1000))


async def on_ack(conn: Connection, f: P.AckRequest) -> None:
    conn.send_frame(P.success(f.request_id, "system", "ack"))
    await conn.ack(f.data.seq)


async def on_share(conn: Connection, f: P.ShareRequest) -> None:
    result = await conn.hub.http.create_share(f.data.contactor, conn.request, conn.peer)
    conn.send_frame(P.success(f.request_id, "system", "share", result))


# ----- onebot --------------------------------------------------------------------------------


def _contact_order(
    conn: Connection, f: P.MessageRequest | P.ForwardRequest
) -> tuple[Hashable, None]:
    return ("contact", f.data.contact), None


async def on_message(conn: Connection, req: P.MessageRequest, _: None = None) -> None:
    user = conn.user
    assert user is not None
    msg = req.data
    await _send_streamed(
        conn,
        req,
        lambda listener: conn.hub.sessions.send(
            user, msg.contact, msg.segments, listener=listener, stream_request_id=req.request_id
        ),
    )


async def on_forward(conn: Connection, req: P.ForwardRequest, _: None = None) -> None:
    user = conn.user
    assert user is not None
    fwd = req.data
    items = [(i.message_id, i.segments) for i in fwd.items]
    await _send_streamed(
        conn,
        req,
        lambda listener: conn.hub.sessions.forward(
            user, fwd.contact, items, listener=listener, stream_request_id=req.request_id
        ),
    )


async def _send_streamed(
    conn: Connection,
    req: P.MessageRequest | P.ForwardRequest,
    submit: Callable[[Callable[[ReplyEvent], Awaitable[None]]], Awaitable[Accepted]],
) -> None:
    """Ack with the stored message id; a streamed reply then follows on the same request_id."""
    renderer = StreamRenderer(conn, req.request_id, req.protocol, req.type, held=True)
    conn.listeners.add(renderer)
    try:
        accepted = await submit(renderer)
    except BaseException:
        conn.listeners.discard(renderer)
        raise
    conn.send_frame(
        P.success(req.request_id, req.protocol, req.type, {"message_id": accepted.message_id})
    )
    renderer.open(pending=accepted.streaming)
    if not accepted.streaming:
        conn.listeners.discard(renderer)


async def on_del_message(conn: Connection, req: P.DeleteMessageRequest) -> None:
    assert conn.user is not None
    await conn.hub.sessions.recall(conn.user, req.data.message_id, exclude_sink=conn)
    conn.send_frame(P.success(req.request_id, req.protocol, req.type))


# ----- openai --------------------------------------------------------------------------------


async def on_models(conn: Connection, req: P.ModelsRequest) -> None:
    hub = conn.hub
    if not hub.router.has_models:
        raise BridgeError(
            ErrorCode.UNAVAILABLE,
            "no model provider is configured (add [[openai.providers]], [momohub] or [momoai])",
        )
    assert conn.user is not None
    characters = [
        {"id": c.id, "name": c.name, "avatar": c.avatar, "bio": c.bio}
        for c in hub.router.contacts(conn.user)
        if c.kind == "character"
    ]
    conn.send_frame(
        P.success(
            req.request_id,
            req.protocol,
            req.type,
            {"models": [g.to_json() for g in hub.router.model_groups()], "characters": characters},
        )
    )


def _reserve_stream(conn: Connection, req: P.CompletionsRequest) -> tuple[Hashable, StreamSlot]:
    """Reserve the stream as the frame is read, so an abort in the same read finds it."""
    assert conn.user is not None
    hub = conn.hub
    user_id = conn.user.id
    if req.request_id in conn.streams:
        raise BridgeError(
            ErrorCode.INVALID_DATA, "a stream with this request_id is already running"
        )
    release = hub.reserve_stream(user_id)
    slot = conn.streams[req.request_id] = StreamSlot(req.request_id, release)
    return ("completion", req.data.model, req.data.conversation_id), slot


async def on_completions(conn: Connection, req: P.CompletionsRequest, slot: StreamSlot) -> None:
    assert conn.user is not None
    hub = conn.hub
    renderer = StreamRenderer(conn, req.request_id, req.protocol, req.type, held=False)
    try:
        if slot.aborted:
            renderer.render(Failed(ErrorCode.CANCELLED, "the stream was aborted"))
            return
        data = req.data
        model = data.model or hub.config.openai.default_model
        if not model:
            raise BridgeError(
                ErrorCode.INVALID_DATA, "model is required (no openai.default_model set)"
            )
        target = hub.router.model_target(model)
        request = CompletionRequest(
            user=conn.user,
            model=model,
            messages=data.messages,
            conversation_id=data.conversation_id,
            temperature=data.temperature,
            top_p=data.top_p,
            presence_penalty=data.presence_penalty,
            frequency_penalty=data.frequency_penalty,
            max_tokens=data.max_tokens,
            tools=data.tools,
            stream=data.stream,
        )
        key = completions.conversation_key(target, request)

        sessions = hub.sessions
        kind = target_kind(target)

        def tracked(r: CompletionRequest) -> AsyncIterator[ReplyEvent]:
            return hub.metrics.track(kind, target.complete(r))

        async def job(turn: Turn) -> None:
            # Planned as the conversation's turn, in order: a `/persona set` sent just before
            # applies, and an abort meanwhile stops it like any turn.
            stream = completions.answer(
                sessions.plugins, hub.router, key, request, tracked, sessions.say
            )
            await _run_completion(conn, slot, renderer, stream, turn)

        slot.turn = hub.sessions.engine.submit(key, job)
        renderer.open()
    finally:
        if slot.turn is None:  # refused or aborted before it was queued: nothing else ends it
            if conn.streams.get(req.request_id) is slot:
                del conn.streams[req.request_id]
            slot.release()


async def _run_completion(
    conn: Connection, slot: StreamSlot, renderer: StreamRenderer, stream: Any, turn: Turn
) -> None:
    try:
        turn.admit()
        async for event in stream:
            renderer.render(event)
            if renderer.finished:
                break
        if not renderer.finished:
            renderer.render(
                Failed(ErrorCode.UPSTREAM_ERROR, "the model stream ended without a result")
            )
    except BaseException as e:
        if isinstance(e, BridgeError):
            renderer.render(Failed(e.code, e.reason))
        elif isinstance(e, Exception):
            log.exception("hub.completion_crashed", request_id=str(slot.request_id))
            renderer.render(Failed(ErrorCode.INTERNAL, f"internal error: {type(e).__name__}"))
        else:
            renderer.render(
                Failed(ErrorCode.CANCELLED, turn.stop_reason or "the stream was aborted")
            )
            raise
    finally:
        # The slot goes whatever closing the upstream does (raise, or be cancelled itself).
        if conn.streams.get(slot.request_id) is slot:
            del conn.streams[slot.request_id]
        slot.release()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def on_abort(conn: Connection, req: P.AbortRequest) -> None:
    assert conn.user is not None
    data = req.data
    slot = conn.streams.get(data.request_id)
    if slot is None:
        # Another tab of the same user may own it; never another user's.
        for other in conn.hub.clients_of(conn.user.id):
            slot = other.streams.get(data.request_id)
            if slot is not None:
                break
    if slot is None:
        raise BridgeError(
            ErrorCode.NOT_FOUND, f"no running stream with request_id {data.request_id!r}"
        )
    slot.aborted = True
    if slot.turn is not None:
        outcome = conn.hub.sessions.engine.stop_nowait(slot.turn, "the stream was aborted")
        if outcome == "dropped":
            owner = next(
                (
                    c
                    for c in conn.hub.clients_of(conn.user.id)
                    if c.streams.get(data.request_id) is slot
                ),
                conn,
            )
            owner.send_frame(
                P.failure(
                    data.request_id,
                    "openai",
                    "completions",
                    ErrorCode.CANCELLED,
                    "the stream was aborted",
                )
            )
            owner.streams.pop(data.request_id, None)
            slot.release()
    conn.send_frame(P.success(req.request_id, req.protocol, req.type))


ROUTES: dict[type, Route] = {
    P.LoginRequest: Route(on_login, inline=True),
    P.HeartbeatRequest: Route(None, answer=on_heartbeat),
    P.AckRequest: Route(on_ack, inline=True),
    P.AbortRequest: Route(on_abort, inline=True),
    P.ModelsRequest: Route(on_models, inline=True),
    P.ShareRequest: Route(on_share),
    P.MessageRequest: Route(on_message, prepare=_contact_order),
    P.ForwardRequest: Route(on_forward, prepare=_contact_order),
    P.DeleteMessageRequest: Route(on_del_message),
    P.CompletionsRequest: Route(on_completions, prepare=_reserve_stream),
}
