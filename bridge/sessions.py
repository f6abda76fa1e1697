"""Conversations: a user's message is stored, handed to its target, and the reply is run to the end.

A reply to a chat message belongs to the conversation, not to the connection that asked: it keeps
running when that connection closes, is stored, and reaches the user as a push (live or outbox).
The requesting connection may watch the stream while it lasts (a listener).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    ChatMessage,
    ConversationKey,
    Delta,
    Done,
    Failed,
    ReplyEvent,
    Segment,
    UserRef,
)
from bridge.outbox import Outbox, Push
from bridge.router import Router
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

Listener = Callable[[ReplyEvent], Awaitable[None]]


@dataclass(slots=True)
class _Reply:
    user: UserRef
    contact: str
    message_id: int
    task: asyncio.Task[None] | None = None
    listener: Listener | None = None
    stream_request_id: str | int | float | None = None
    cancelled_by_recall: bool = False
    text: list[str] = field(default_factory=list)
    # Set once the user's message is stored (the reply may start before that; see send()).
    stored: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: int
    streaming: bool


class Sessions:
    def __init__(self, storage: Storage, router: Router, outbox: Outbox) -> None:
        self._storage = storage
        self._router = router
        self._outbox = outbox
        self._tasks = TaskSet("sessions")
        self._replies: dict[int, _Reply] = {}

    async def send(
        self,
        user: UserRef,
        contact: str,
        segments: list[Segment],
        *,
        listener: Listener | None = None,
        stream_request_id: str | int | float | None = None,
        thread: str = "default",
    ) -> Accepted:
        target = self._router.contact_target(contact)
        contact = target.canonical(contact)
        await target.check_available(contact)
        key = ConversationKey(user.id, contact, thread)
        content = [s.to_json() for s in segments]
        if getattr(target, "replies_need_message_id", True):
            row = await self._storage.messages.add(user.id, contact, "in", content)
            msg = ChatMessage(key, user, segments, message_id=row.id, time=row.time)
            stream = await target.deliver(msg)
            if stream is None:
                return Accepted(row.id, streaming=False)
            self._start_reply(user, contact, row.id, stream, listener, stream_request_id)
            return Accepted(row.id, streaming=True)
        # The target's reply does not depend on our message id: start it first and store the
        # message meanwhile, so the upstream request is not kept waiting on the database.
        msg = ChatMessage(key, user, segments, message_id=0, time=time.time())
        stream = await target.deliver(msg)
        if stream is None:
            row = await self._storage.messages.add(user.id, contact, "in", content)
            return Accepted(row.id, streaming=False)
        reply = self._start_reply(user, contact, 0, stream, listener, stream_request_id)
        try:
            row = await self._storage.messages.add(user.id, contact, "in", content)
        except BaseException:
            assert reply.task is not None
            reply.task.cancel()
            raise
        reply.message_id = row.id
        assert reply.task is not None
        if not reply.task.done():  # a reply that already failed must not linger in the table
            self._replies[row.id] = reply
        reply.stored.set()
        return Accepted(row.id, streaming=True)

    async def forward(
        self,
        user: UserRef,
        contact: str,
        items: list[tuple[int | None, list[Segment]]],
        *,
        listener: Listener | None = None,
        stream_request_id: str | int | float | None = None,
    ) -> Accepted:
        """Several messages sent on as one: a single `nodes` segment quoting each of them."""
        nodes = []
        for message_id, segments in items:
            if not segments and message_id is not None:
                row = await self._storage.messages.get(message_id)
                if row is None or row.user_id != user.id:
                    raise BridgeError(ErrorCode.NOT_FOUND, f"no message {message_id} to forward")
                segments = [Segment(s["type"], s.get("data", {})) for s in row.content]
            nodes.append({"message_id": message_id, "message": [s.to_json() for s in segments]})
        return await self.send(
            user,
            contact,
            [Segment("nodes", {"messages": nodes})],
            listener=listener,
            stream_request_id=stream_request_id,
        )

    def _start_reply(
        self,
        user: UserRef,
        contact: str,
        message_id: int,
        stream: AsyncIterator[ReplyEvent],
        listener: Listener | None,
        stream_request_id: str | int | float | None,
    ) -> _Reply:
        reply = _Reply(
            user, contact, message_id, listener=listener, stream_request_id=stream_request_id
        )
        if message_id:
            self._replies[message_id] = reply
            reply.stored.set()
        reply.task = self._tasks.spawn(self._run(reply, stream), name=f"reply-{message_id}")
        return reply

    def detach_listener(self, listener: Listener) -> None:
        for r in self._replies.values():
            if r.listener is listener:
                r.listener = None

    async def _notify(self, reply: _Reply, event: ReplyEvent) -> None:
        if reply.listener is None:
            return
        try:
            await reply.listener(event)
        except Exception:
            # A listener failing (its socket closed) must not stop the reply itself.
            log.warning("reply.listener_failed", message_id=reply.message_id, exc_info=True)
            reply.listener = None

    async def _run(self, reply: _Reply, stream: AsyncIterator[ReplyEvent]) -> None:
        structlog.contextvars.bind_contextvars(user=reply.user.id, conversation=reply.contact)
        outcome: ReplyEvent | None = None
        try:
            async for event in stream:
                if isinstance(event, Delta) and event.text:
                    reply.text.append(event.text)
                if isinstance(event, Done | Failed):
                    outcome = event
                    break
                await self._notify(reply, event)
            if outcome is None:
                outcome = Failed(
                    ErrorCode.UPSTREAM_ERROR, "the reply stream ended without a result"
                )
            if isinstance(outcome, Done):
                await self._finish(reply, outcome)
            else:
                await self._notify(reply, outcome)
        except asyncio.CancelledError:
            why = (
                "the message was recalled"
                if reply.cancelled_by_recall
                else "the bridge is shutting down"
            )
            await self._notify(reply, Failed(ErrorCode.CANCELLED, why))
            raise
        except BridgeError as e:
            await self._notify(reply, Failed(e.code, e.reason))
        except Exception as e:
            log.exception("reply.crashed", message_id=reply.message_id)
            await self._notify(reply, Failed(ErrorCode.INTERNAL, f"internal error: {e}"))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            self._replies.pop(reply.message_id, None)

    async def _finish(self, reply: _Reply, done: Done) -> None:
        async with asyncio.timeout(30):  # the reply is stored after (and linked to) the request
            await reply.stored.wait()
        text = "".join(reply.text)
        segs = [Segment.text(text).to_json()] if text else []
        row = await self._storage.messages.add(
            reply.user.id, reply.contact, "out", segs, reply_to=reply.message_id
        )
        if done.ref_system:
            if done.request_ref:
                await self._storage.messages.link(
                    reply.message_id, done.ref_system, done.request_ref
                )
            if done.reply_ref:
                await self._storage.messages.link(row.id, done.ref_system, done.reply_ref)
        await self._notify(reply, done)
        await self._outbox.push(
            reply.user.id,
            Push(
                kind="message",
                contact=reply.contact,
                message_id=row.id,
                segments=segs,
                time=int(row.time),
                sender_id=reply.contact,
                sender_name=done.sender_name or reply.contact,
                stream_request_id=reply.stream_request_id,
            ),
        )

    async def recall(self, user: UserRef, message_id: int, *, exclude_sink: object = None) -> str:
        """Recall a message everywhere; recalling a user's message also recalls its replies and
        stops a reply still being generated. Returns the contact it belonged to."""
        row = await self._storage.messages.get(message_id)
        if row is None or row.user_id != user.id or row.deleted:
            raise BridgeError(ErrorCode.NOT_FOUND, f"no message {message_id} to recall")
        running = self._replies.get(message_id)
        if running is not None and running.task is not None:
            running.cancelled_by_recall = True
            running.task.cancel()
            # Let it finish unwinding so the upstream request is closed before we delete there.
            await asyncio.wait([running.task], timeout=10)
        rows = [row]
        if row.direction == "in":
            rows += [
                r for r in await self._storage.messages.replies_to(message_id) if not r.deleted
            ]
        try:
            target = self._router.contact_target(row.contact)
        except BridgeError:
            target = None
        for r in rows:
            await self._storage.messages.mark_deleted(r.id)
            if target is not None:
                segs = [Segment(s["type"], s.get("data", {})) for s in r.content]
                try:
                    await target.recall(user, r.contact, r.id, segs, r.direction == "out")
                except BridgeError as e:
                    log.warning("recall.upstream_failed", message_id=r.id, reason=e.reason)
            await self._outbox.push(
                user.id,
                Push(kind="recall", contact=r.contact, message_id=r.id),
                # The connection that asked knows about its own message; replies it may not.
                exclude=exclude_sink if r.id == message_id else None,  # type: ignore[arg-type]
            )
        return row.contact

    async def close(self) -> None:
        await self._tasks.cancel_all()
