"""Conversations: a user's message is stored, handed to its target as a turn, and the reply is
run to the end.

Turns go through the conversation engine, so one conversation's messages reach its target one
at a time in order. A reply belongs to the conversation, not to the connection that asked: it
keeps running when that connection closes, is stored, and reaches the user as a push. The
requesting connection may watch the stream while it lasts (a listener).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from bridge.engine import Engine, Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.metrics import UNSCRAPED, Metrics, target_kind
from bridge.models import (
    ChatMessage,
    ConversationKey,
    Delta,
    Done,
    Failed,
    ReplyEvent,
    Segment,
    UserRef,
    plain_text,
)
from bridge.outbox import Outbox, Push, Sink
from bridge.recall import Recall
from bridge.router import ContactTarget, Router
from bridge.session_plugins import PluginGlue, with_text
from bridge.tasks import TaskSet
from storage import Storage

if TYPE_CHECKING:
    from bridge.plugins import PluginHost

log = structlog.get_logger(__name__)

Listener = Callable[[ReplyEvent], Awaitable[None]]

# How long an edge waits for a turn that answers without streaming (a bot framework hand-off).
HANDOFF_TIMEOUT = 30.0
# How long a finished reply waits for its request to be stored (they are written concurrently).
STORE_TIMEOUT = 30.0


@dataclass(slots=True)
class _Reply:
    user: UserRef
    key: ConversationKey
    message_id: int = 0
    listener: Listener | None = None
    stream_request_id: str | int | float | None = None
    text: list[str] = field(default_factory=list)
    # Set once the user's message is stored (the reply may start before that; see send()).
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    # A failure before the message was stored withdraws it: nothing half-stored.
    withdrawn: bool = False
    # The reply's run is over (whatever the outcome).
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: int
    streaming: bool


async def _outcome(coro: Awaitable[Accepted]) -> tuple[Accepted | None, Exception | None]:
    """The result or the error, as a value: the caller re-raises it, so the task itself does
    not end in an exception that would be logged as a crash."""
    try:
        return await coro, None
    except Exception as e:
        return None, e


def _rid(value: str | int | float | None) -> str | None:
    return None if value is None else str(value)


class Sessions:
    def __init__(
        self,
        storage: Storage,
        router: Router,
        outbox: Outbox,
        engine: Engine | None = None,
    ) -> None:
        self._storage = storage
        self._router = router
        self._outbox = outbox
        self.engine = engine or Engine()
        self._tasks = TaskSet("sessions")
        # Replies a connection watches, so it can stop watching when it closes.
        self._watched: dict[int, _Reply] = {}
        # Commands and filters (set by the app; None: messages go straight to their target).
        self.plugins: PluginHost | None = None
        self._glue = PluginGlue(storage, router, outbox, self.engine)
        self._recall = Recall(storage, router, outbox, self.engine, self._dropped)
        # The app's (see App.start); counted into and never scraped when built alone.
        self.metrics: Metrics = UNSCRAPED

    # ----- sending ---------------------------------------------------------------------------

    async def send(
        self,
        user: UserRef,
        contact: str,
        segments: list[Segment],
        *,
        listener: Listener | None = None,
        stream_request_id: str | int | float | None = None,
        thread: str = "default",
        caller: UserRef | None = None,
    ) -> Accepted:
        """Store a user's message and queue its turn; returns once it is stored (or refused).

        ``user`` owns the conversation; ``caller`` is who wrote the message when that is
        someone else (a member of a QQ group whose conversation the group owns): commands
        answer to the caller's rights, and the target sees the caller as the sender.

        Runs to its end even if the caller is cancelled (its connection closed): a message
        whose storing began is either stored with its turn queued, or not stored at all.
        """
        task = self._tasks.spawn(
            _outcome(
                self._send(
                    user, contact, segments, listener, stream_request_id, thread, caller or user
                )
            ),
            name="sessions-send",
        )
        accepted, error = await asyncio.shield(task)
        if error is not None:
            raise error
        assert accepted is not None
        return accepted

    async def _send(
        self,
        user: UserRef,
        contact: str,
        segments: list[Segment],
        listener: Listener | None,
        stream_request_id: str | int | float | None,
        thread: str,
        caller: UserRef,
    ) -> Accepted:
        target = self._router.contact_target(contact)
        contact = target.canonical(contact)
        key = ConversationKey(user.id, contact, thread)
        plugins = self.plugins
        # Bot frameworks have commands of their own: their messages pass through untouched.
        if plugins is not None and getattr(target, "replies_stream", True):
            text = plain_text(segments)
            if plugins.input_filters and text:
                filtered = await plugins.filter_input(key, caller, text, self.say)
                if not isinstance(filtered, str):
                    return Accepted(await self._glue.settled(key, segments), streaming=False)
                if filtered != text:
                    segments = with_text(segments, filtered)
                    text = filtered
            if plugins.is_command(text):
                message_id = await self._glue.command(plugins, caller, key, segments, text)
                return Accepted(message_id, streaming=False)
        await target.check_available(contact)
        content = [s.to_json() for s in segments]
        msg = ChatMessage(key, caller, segments, message_id=0, time=time.time())
        if not getattr(target, "replies_stream", True):
            return await self._hand_off(target, msg, content)
        reply = _Reply(user, key, listener=listener, stream_request_id=stream_request_id)

        async def job(turn: Turn) -> None:
            await self._run(turn, reply, target, msg)

        store = self._storage.messages.add
        store_args: dict[str, Any] = {
            "thread": thread,
            "inflight": True,
            "stream_request_id": _rid(stream_request_id),
        }
        if getattr(target, "replies_need_message_id", True):
            row = await store(user.id, contact, "in", content, **store_args)
            msg.message_id = reply.message_id = row.id
            reply.stored.set()
            try:
                self.engine.submit(key, job, message_id=row.id)
            except BaseException:
                await self._storage.withdraw(row.id)
                raise
            self._watch(reply)
            return Accepted(row.id, streaming=True)
        # The target's reply does not depend on our message id: queue it first and store the
        # message meanwhile, so an idle conversation's upstream request is not kept waiting.
        turn = self.engine.submit(key, job)
        try:
            row = await store(user.id, contact, "in", content, **store_args)
        except BaseException:
            reply.withdrawn = True
            reply.stored.set()
            await self.engine.stop(turn, "the message could not be stored")
            raise
        turn.message_id = msg.message_id = reply.message_id = row.id
        self._watch(reply)
        reply.stored.set()
        if reply.ended:  # it failed before the message was stored: nothing in flight
            await self._storage.inflight.remove(row.id)
        return Accepted(row.id, streaming=True)

    async def say(self, key: ConversationKey, text: str) -> None:
        """A message from the conversation's contact to its user: stored, then pushed (a
        command's answer, a filter's notice)."""
        await self._glue.say(key, text)

    async def prompt(self, key: ConversationKey, text: str) -> Turn:
        """A turn the bridge starts itself (a scheduled message): ``text`` goes to the
        conversation's target as a turn, behind a reply still running. It is stored as a
        prompt (a model's context includes it; `/history` and the user do not see it), and the
        reply is delivered like any reply (a push to every tab, or the outbox). Returns the
        queued turn; raises BridgeError when the target cannot take it now (unavailable, busy,
        or a bot framework, which answers on its own)."""
        target = self._router.contact_target(key.contact)
        key = ConversationKey(key.user_id, target.canonical(key.contact), key.thread)
        if not getattr(target, "replies_stream", True):
            raise BridgeError(ErrorCode.INVALID_DATA, f"{key.contact} takes no prompts")
        await target.check_available(key.contact)
        user = UserRef(key.user_id)
        segments = [Segment.text(text)]
        row = await self._storage.messages.add(
            key.user_id,
            key.contact,
            "in",
            [s.to_json() for s in segments],
            thread=key.thread,
            kind="prompt",
        )
        msg = ChatMessage(key, user, segments, message_id=row.id, time=row.time)
        reply = _Reply(user, key)
        reply.message_id = row.id
        reply.stored.set()

        async def job(turn: Turn) -> None:
            await self._run(turn, reply, target, msg)

        try:
            return self.engine.submit(key, job, message_id=row.id)
        except BaseException:
            await self._storage.withdraw(row.id)
            raise

    async def _hand_off(
        self, target: ContactTarget, msg: ChatMessage, content: list[dict[str, Any]]
    ) -> Accepted:
        """A target that answers later on its own: the turn is the hand-off itself."""
        key = msg.conversation
        row = await self._storage.messages.add(key.user_id, key.contact, "in", content)
        msg.message_id = row.id

        async def job(turn: Turn) -> None:
            turn.admit()
            await target.deliver(msg)

        try:
            turn = self.engine.submit(key, job, message_id=row.id)
        except BaseException:
            await self._storage.messages.mark_deleted(row.id)  # refused: nothing half-stored
            raise
        try:
            await turn.wait(HANDOFF_TIMEOUT)
        except TimeoutError:
            await self.engine.stop(turn, "the hand-off timed out")
            await self._storage.messages.mark_deleted(row.id)
            raise BridgeError(ErrorCode.UPSTREAM_TIMEOUT, "the hand-off timed out") from None
        if turn.state == "dropped" or turn.task is None or turn.task.cancelled():
            await self._storage.messages.mark_deleted(row.id)
            raise BridgeError(ErrorCode.CANCELLED, turn.stop_reason or "the send was cancelled")
        if turn.error is not None:
            await self._storage.messages.mark_deleted(row.id)
            if isinstance(turn.error, BridgeError):
                raise turn.error
            raise BridgeError(ErrorCode.INTERNAL, f"internal error: {type(turn.error).__name__}")
        return Accepted(row.id, streaming=False)

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
                if row is None or row.user_id != user.id or row.deleted:
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

    # ----- listeners -------------------------------------------------------------------------

    def _watch(self, reply: _Reply) -> None:
        if reply.listener is not None:
            self._watched[reply.message_id] = reply

    def detach_listener(self, listener: Listener) -> None:
        for message_id, r in list(self._watched.items()):
            if r.listener is listener:
                r.listener = None
                del self._watched[message_id]

    async def _notify(self, reply: _Reply, event: ReplyEvent) -> None:
        if reply.listener is None:
            return
        try:
            await reply.listener(event)
        except Exception:
            # A listener failing (its socket closed) must not stop the reply itself.
            log.warning("reply.listener_failed", message_id=reply.message_id, exc_info=True)
            reply.listener = None

    # ----- the reply -------------------------------------------------------------------------

    async def _run(
        self, turn: Turn, reply: _Reply, target: ContactTarget, msg: ChatMessage
    ) -> None:
        structlog.contextvars.bind_contextvars(
            user=reply.user.id, conversation=str(reply.key), message_id=reply.message_id
        )
        outcome: ReplyEvent | None = None
        stream: AsyncIterator[ReplyEvent] | None = None
        forget = True  # the in-flight record goes, unless a restart must pick this reply up
        # What the user may see while it streams (plugins' stream filters), if anything hides.
        guard = self.plugins.stream_guard(reply.key) if self.plugins is not None else None
        kind = target_kind(target)
        try:
            turn.admit()
            stream = await target.deliver(msg)
            if stream is None:
                raise BridgeError(ErrorCode.INTERNAL, "the target returned no reply stream")
            stream = self.metrics.track(kind, stream)
            async for event in stream:
                if isinstance(event, Delta) and event.text:
                    reply.text.append(event.text)
                    if guard is not None:
                        shown = guard.feed(event.text)
                        if not shown and not event.reasoning:
                            continue
                        event = Delta(shown, event.reasoning)
                if isinstance(event, Done | Failed):
                    outcome = event
                    break
                await self._notify(reply, event)
            if guard is not None and isinstance(outcome, Done) and (rest := guard.end()):
                await self._notify(reply, Delta(rest))
            if outcome is None:
                outcome = Failed(
                    ErrorCode.UPSTREAM_ERROR, "the reply stream ended without a result"
                )
            if isinstance(outcome, Done):
                forget = False  # _finish clears it once the reply is safely in the outbox
                await self._finish(reply, outcome)
            else:
                await self._notify(reply, outcome)
        except asyncio.CancelledError:
            # A recall says why; otherwise it is shutdown, and the next start reports the reply
            # as interrupted.
            forget = bool(turn.stop_reason)
            why = turn.stop_reason or "the bridge is shutting down"
            await self._notify(reply, Failed(ErrorCode.CANCELLED, why))
            raise
        except BridgeError as e:
            if stream is None:  # refused before it streamed: the tracked stream counts the rest
                self.metrics.reply_ended(kind, "failed", e.code)
            await self._notify(reply, Failed(e.code, e.reason))
        except Exception as e:
            log.exception("reply.crashed", message_id=reply.message_id)
            await self._notify(reply, Failed(ErrorCode.INTERNAL, f"internal error: {e}"))
        finally:
            reply.ended = True
            self._watched.pop(reply.message_id, None)
            reply.listener = None
            try:
                aclose = getattr(stream, "aclose", None) if stream is not None else None
                if aclose is not None:
                    await aclose()
            finally:
                if forget and reply.message_id:
                    await asyncio.shield(self._storage.inflight.remove(reply.message_id))

    async def _finish(self, reply: _Reply, done: Done) -> None:
        async with asyncio.timeout(STORE_TIMEOUT):
            await reply.stored.wait()
        if reply.withdrawn:
            return
        text = "".join(reply.text)
        key = reply.key
        if self.plugins is not None and self.plugins.reply_filters and text:
            text = await self.plugins.filter_reply(key, text)
        segs = [Segment.text(text).to_json()] if text else []
        refs: list[tuple[int | None, str, str]] = []
        if done.ref_system:
            if done.request_ref and reply.message_id:
                refs.append((reply.message_id, done.ref_system, done.request_ref))
            if done.reply_ref:
                refs.append((None, done.ref_system, done.reply_ref))
        # The reply and the upstream ids a recall deletes by, in one commit (one storage hop).
        row = await self._storage.messages.add(
            key.user_id,
            key.contact,
            "out",
            segs,
            reply_to=reply.message_id or None,
            thread=key.thread,
            refs=refs,
        )
        await self._notify(reply, done)
        await self._outbox.push(
            key.user_id,
            Push(
                kind="message",
                contact=key.contact,
                message_id=row.id,
                segments=segs,
                time=int(row.time),
                sender_id=key.contact,
                sender_name=done.sender_name or key.contact,
                stream_request_id=reply.stream_request_id,
            ),
        )
        if reply.message_id:
            await self._storage.inflight.remove(reply.message_id)

    # ----- recall ----------------------------------------------------------------------------

    async def recall(
        self, user: UserRef, message_id: int, *, exclude_sink: Sink | None = None
    ) -> str:
        """Recall a message everywhere (see `bridge.recall`). Returns its contact."""
        return await self._recall.recall(user, message_id, exclude_sink=exclude_sink)

    async def _dropped(self, message_id: int, never_started: bool) -> None:
        watched = self._watched.pop(message_id, None)
        if never_started and watched is not None:
            # It never started, so nothing else will end its stream.
            await self._notify(watched, Failed(ErrorCode.CANCELLED, "the message was recalled"))

    async def schedule_recovery(
        self, *, attempts: int = 5, backoff: float = 2.0, nodes: set[str] | None = None
    ) -> list[Turn]:
        """Queue the settling of replies a previous run left in flight (see `bridge.recovery`):
        all of them, or in a cluster those of ``nodes`` (gone). Reads only the database."""
        from bridge.recovery import Recovery

        recovery = Recovery(self._storage, self._router, self._outbox)
        return await recovery.schedule(self.engine, attempts=attempts, backoff=backoff, nodes=nodes)

    async def inflight_nodes(self) -> set[str]:
        """The cluster nodes with replies recorded in flight."""
        return await self._storage.inflight.nodes()

    async def recover(
        self, *, attempts: int = 5, backoff: float = 2.0, timeout: float = 120.0
    ) -> int:
        """Settle them and wait until done; returns how many there were."""
        turns = await self.schedule_recovery(attempts=attempts, backoff=backoff)
        for turn in turns:
            await turn.wait(timeout)
        return len(turns)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self.engine.close()
