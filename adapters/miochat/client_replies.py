"""The web client's `llm` replies: run as conversation turns, streamed to the tabs that want
them, kept until the client confirms it has stored them.

A reply belongs to its user, not to the connection that asked for it: when that tab goes away
the reply runs on, and a tab that comes back (`enter_chat`, listed in the login frame's
`pendingTasks`) gets it as a `sync` frame, then any live updates. A reply is stored when it
starts and when it ends, before its last frame goes out, so the client's `ack_message` (sent
after that frame) always finds it and deletes it; a bridge that stops mid-reply leaves it as
`streaming`, which the next start turns into a failure the client is told about.

A conversation is (user, model or character, contactor): each contactor of the client is its
own thread. For a MomoHub character only the newest user message goes (MomoHub keeps the
history), without the client's `<message time=…>` wrapper; for a plain model the client's
history goes as given, trimmed to `[openai] history_chars` (a command line the user typed is
unwrapped so the bridge's commands still answer it).

In a cluster a tab may enter the chat on another node than the one running the reply:
`reply_relay` then has the owner send that node the reply's frames (`Running.remote`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from adapters.miochat import llm_frames as L
from bridge import completions
from bridge.engine import Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.metrics import target_kind
from bridge.model_chats import trimmed
from bridge.models import JSON, CompletionRequest, ConversationKey, ReplyEvent, UserRef
from storage.client_replies import StoredReply

if TYPE_CHECKING:
    from adapters.miochat.reply_relay import ReplyRelay
    from adapters.miochat.server import HubServer

log = structlog.get_logger(__name__)

# How often a running reply's text so far is stored (a crash then loses at most this much).
CHECKPOINT_EVERY = 2.0
RESTART_ERROR = {
    "code": str(ErrorCode.UNAVAILABLE),
    "message": "the bridge restarted before this reply finished",
}
NODE_GONE_ERROR = {
    "code": str(ErrorCode.UNAVAILABLE),
    "message": "the bridge node running this reply stopped before it finished",
}


class Tab(Protocol):
    """A live connection of the web client."""

    closed: bool

    def send_frame(self, frame: dict[str, Any], seq: int = 0) -> bool: ...


class RemoteSink(Protocol):
    """Where a reply's frames go for tabs on other cluster nodes (reply_relay)."""

    def send(self, frames: list[dict[str, Any]]) -> None: ...

    def end(self) -> None: ...


@dataclass(eq=False)
class Running:
    """A reply being made: who it goes to, its turn, its slot in the user's stream limit."""

    user: UserRef
    contactor_id: str
    log: L.ReplyLog
    origin: Tab | None
    release: Callable[[], None]
    watchers: set[Tab] = field(default_factory=set)
    remote: RemoteSink | None = None  # set once a tab on another node watches it
    turn: Turn | None = None
    interrupted: bool = False
    superseded: bool = False
    acked: bool = False
    finished: bool = False
    started: float = field(default_factory=time.time)
    checkpoint_at: float = 0.0

    def emit(self, frames: list[dict[str, Any]]) -> None:
        if self.superseded or not frames:
            return
        tabs = [t for t in (self.origin, *self.watchers) if t is not None and not t.closed]
        for tab in dict.fromkeys(tabs):
            for f in frames:
                tab.send_frame(f)
        if self.remote is not None:
            self.remote.send(frames)

    def done(self) -> None:
        release, self.release = self.release, _nothing
        release()


def _nothing() -> None:
    return None


def _lead_systems(messages: list[JSON]) -> int:
    n = 0
    while n < len(messages) and messages[n].get("role") == "system":
        n += 1
    return n


def _command_unwrapped(message: JSON, is_command: Callable[[str], bool]) -> JSON:
    """A user message that is a command line without the client's time wrapper (so the
    bridge's commands answer it); any other message as it is."""
    if message.get("role") != "user":
        return message
    bare = L.unwrapped(message)
    return bare if is_command(completions.content_text(bare.get("content"))) else message


def stored_sync(row: StoredReply) -> dict[str, Any]:
    """The `sync` frame of a stored reply."""
    meta = row.meta
    return L.sync_frame(
        meta.get("messageId", row.message_id),
        row.message_id,
        row.chunks,
        row.status,
        row.error,
        meta,
    )


def trimmed_history(messages: list[JSON], max_chars: int) -> list[JSON]:
    """The client's leading system messages, then the newest messages that fit ``max_chars``
    (the newest always kept)."""
    lead = _lead_systems(messages)
    head, rest = messages[:lead], messages[lead:]
    budget = max_chars - sum(len(str(m.get("content", ""))) for m in head)
    return head + trimmed(rest, max(budget, 0))


class ClientReplies:
    def __init__(self, hub: HubServer, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.hub = hub
        self._spawn = spawn  # runs a coroutine as a task the edge owns
        # (user id, message id) → the reply running for it.
        self._running: dict[tuple[str, str], Running] = {}
        # In a cluster: replies running on other nodes, watched for tabs here (reply_relay).
        self.relay: ReplyRelay | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def running_reply(self, user_id: str, message_id: str) -> Running | None:
        return self._running.get((user_id, message_id))

    # ----- start-up ----------------------------------------------------------------------------

    async def recover(self) -> None:
        n = await self.hub.storage.client_replies.interrupted(RESTART_ERROR)
        if n:
            log.info("client_replies.interrupted_by_restart", count=n)

    async def streaming_nodes(self) -> set[str]:
        """The cluster nodes with replies recorded as streaming."""
        return await self.hub.storage.client_replies.streaming_nodes()

    async def settle_nodes(self, nodes: set[str]) -> None:
        """The replies cluster ``nodes`` (gone) left streaming are failed: a tab that comes
        back to the chat is told (`sync` with the error), not left waiting."""
        n = await self.hub.storage.client_replies.interrupted(NODE_GONE_ERROR, nodes)
        if n:
            log.info("client_replies.interrupted_by_node", count=n, nodes=sorted(nodes))

    async def pending_contactors(self, user_id: str) -> list[str]:
        return await self.hub.storage.client_replies.contactors(user_id)

    # ----- llm/completions ---------------------------------------------------------------------

    def _model(self, provider: str, model: str) -> str:
        """The bridge's name of ``model`` as the client picked it: under a provider, as listed
        in the login frame's `models` (an OpenAI-compatible provider's models are listed bare)."""
        router = self.hub.router
        if provider and any(
            g.owner == provider and model in g.models for g in router.model_groups()
        ):
            qualified = f"{provider}/{model}"
            try:
                router.model_target(qualified)
            except BridgeError:
                return model
            return qualified
        return model

    def _request(self, user: UserRef, req: L.Completions) -> tuple[ConversationKey, Any, Any]:
        hub = self.hub
        model = self._model(req.provider, req.model)
        target = hub.router.model_target(model)
        messages = req.messages
        if hasattr(target, "conversation_key"):
            # Keeps its own history: only what the user just said.
            last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            if last is None:
                raise BridgeError(ErrorCode.INVALID_DATA, "messages has no user message")
            messages = [L.unwrapped(last)]
        else:
            plugins = hub.sessions.plugins
            if plugins is not None:
                messages = [_command_unwrapped(m, plugins.is_command) for m in messages]
            messages = trimmed_history(messages, hub.config.openai.history_chars)
        p = req.params
        request = CompletionRequest(
            user=user,
            model=model,
            messages=messages,
            conversation_id=req.contactor_id,
            temperature=p.get("temperature"),
            top_p=p.get("top_p"),
            presence_penalty=p.get("presence_penalty"),
            frequency_penalty=p.get("frequency_penalty"),
            max_tokens=int(p["max_tokens"]) if "max_tokens" in p else None,
        )
        return completions.conversation_key(target, request), request, target

    def register(self, tab: Tab, user: UserRef, req: L.Completions) -> Running | None:
        """Take a completions request as it is read, before anything awaits, so an interrupt or
        a retry right behind it finds it. None (and a `failed` frame) when the user is at the
        stream limit. `begin` then runs it."""
        rlog = L.ReplyLog(req.request_id, req.meta)
        slot_key = (user.id, req.message_id)
        old = self._running.get(slot_key)
        if old is not None and not old.finished:
            # A retry of the same message: the newest request wins, in the old one's slot.
            release, old.release = old.release, _nothing
            old.superseded = True
            self._stop(old, "superseded by a retry")
        else:
            try:
                release = self.hub.reserve_stream(user.id)
            except BridgeError as e:
                tab.send_frame(rlog.fail(e.reason, e.code))
                return None
        reply = Running(user, req.contactor_id, rlog, tab, release)
        self._running[slot_key] = reply
        return reply

    async def begin(self, reply: Running, req: L.Completions) -> None:
        """`pending`, then the reply as its turn runs."""
        rlog = reply.log
        try:
            key, request, target = self._request(reply.user, req)
            await self._save(reply)
            if reply.superseded or reply.interrupted:
                # Stopped before it was queued: nothing else ends it.
                frames = [rlog.interrupted()] if reply.interrupted else []
                await self._finish(reply, [rlog.pending(), *frames])
                return
            sessions = self.hub.sessions
            metrics, kind = self.hub.metrics, target_kind(target)

            def tracked(r: CompletionRequest) -> AsyncIterator[ReplyEvent]:
                return metrics.track(kind, target.complete(r))

            async def job(turn: Turn) -> None:
                stream = completions.answer(
                    sessions.plugins, self.hub.router, key, request, tracked, sessions.say
                )
                await self._run(reply, stream, turn)

            reply.turn = sessions.engine.submit(key, job)
        except BridgeError as e:
            await self._finish(reply, [rlog.fail(e.reason, e.code)])
            return
        except Exception as e:
            log.exception("client_replies.begin_crashed", message_id=rlog.message_id)
            await self._finish(
                reply, [rlog.fail(f"internal error: {type(e).__name__}", "INTERNAL")]
            )
            return
        except BaseException:
            self._forget(reply)
            raise
        reply.emit([rlog.pending()])

    async def _run(self, reply: Running, stream: Any, turn: Turn) -> None:
        rlog = reply.log
        try:
            turn.admit()
            async for event in stream:
                frames = rlog.feed(event)
                if rlog.status != "streaming":
                    await self._finish(reply, frames)
                    return
                reply.emit(frames)
                if time.monotonic() >= reply.checkpoint_at:
                    # What streamed so far survives a crash: the client is shown it on return.
                    await self._save(reply)
            await self._finish(
                reply,
                [rlog.fail("the model stream ended without a result", ErrorCode.UPSTREAM_ERROR)],
            )
        except BaseException as e:
            if rlog.status == "streaming":
                if isinstance(e, BridgeError):
                    frames = [rlog.fail(e.reason, e.code)]
                elif isinstance(e, Exception):
                    log.exception("client_replies.crashed", message_id=rlog.message_id)
                    frames = [rlog.fail(f"internal error: {type(e).__name__}", ErrorCode.INTERNAL)]
                elif reply.interrupted:
                    frames = [rlog.interrupted()]
                else:
                    frames = [
                        rlog.fail(turn.stop_reason or "the reply was stopped", ErrorCode.CANCELLED)
                    ]
                await self._finish(reply, frames)
            if not isinstance(e, Exception):
                raise
        finally:
            self._forget(reply)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _finish(self, reply: Running, frames: list[dict[str, Any]]) -> None:
        """Stored (or, if the client already confirmed it, deleted) before the last frame goes
        out: the client's `ack_message` follows that frame and must find it. The reply stays
        listed until then, so a tab entering the chat meanwhile is sent those frames."""
        reply.done()
        if reply.finished:
            return
        reply.finished = True
        try:
            if not reply.superseded:
                if reply.acked:
                    await self.hub.storage.client_replies.delete(
                        reply.user.id, reply.log.message_id
                    )
                else:
                    await self._save(reply)
        except Exception:
            # The tab still gets its frames; what is stored stays as it was (at worst
            # `streaming`, which the next start reports as failed).
            log.exception("client_replies.store_failed", message_id=reply.log.message_id)
        finally:
            current = self._running.get((reply.user.id, reply.log.message_id))
            if current is None or current is reply:  # not once a retry took its place
                reply.emit(frames)
            self._forget(reply)

    def _forget(self, reply: Running) -> None:
        reply.done()
        if reply.remote is not None:
            reply.remote.end()
        key = (reply.user.id, reply.log.message_id)
        if self._running.get(key) is reply:
            del self._running[key]

    async def _save(self, reply: Running) -> None:
        rlog = reply.log
        reply.checkpoint_at = time.monotonic() + CHECKPOINT_EVERY
        await self.hub.storage.client_replies.save(
            StoredReply(
                user_id=reply.user.id,
                message_id=rlog.message_id,
                contactor_id=reply.contactor_id,
                status=rlog.status,
                chunks=rlog.chunks,
                error=rlog.error,
                meta=rlog.meta,
                updated=reply.started,
            ),
            self.hub.config.limits.outbox_per_user,
        )

    # ----- interruptGeneration -----------------------------------------------------------------

    def interrupt(self, user: UserRef, it: L.Interrupt) -> bool:
        """Stop the user's reply to ``it.message_id``; it ends with `complete` and what it has.
        False when no such reply runs (it finished already: nothing to do)."""
        reply = self._running.get((user.id, it.message_id))
        if reply is None or reply.finished:
            return False
        reply.interrupted = True
        self._stop(reply, "interrupted by the user")
        return True

    def _stop(self, reply: Running, why: str) -> None:
        """Stop a reply's turn. One not queued yet is ended by `begin`, which sees the flags."""
        turn = reply.turn
        if turn is None:
            return
        outcome = self.hub.sessions.engine.stop_nowait(turn, why)
        if outcome == "dropped":  # queued, never started: nothing else will end it
            frames = (
                [reply.log.interrupted()]
                if reply.interrupted
                else [reply.log.fail(why, ErrorCode.CANCELLED)]
            )
            self._spawn(self._finish(reply, frames))

    # ----- enter_chat / ack_message ------------------------------------------------------------

    async def enter(self, tab: Tab, user: UserRef, contactor_id: str) -> int:
        """The tab shows ``contactor_id``: a `sync` for each reply of it the client has not
        confirmed, then live updates of those still running. Returns how many."""
        relay = self.relay
        if relay is not None:
            relay.entered(tab, user.id, contactor_id)
        live = {
            r.log.message_id: r
            for r in self._running.values()
            if r.user.id == user.id and r.contactor_id == contactor_id and not r.superseded
        }
        for r in live.values():
            r.watchers.add(tab)  # from now on it gets their frames, the last ones included
        stored = await self.hub.storage.client_replies.of_contactor(user.id, contactor_id)
        sent = 0
        for r in live.values():
            tab.send_frame(r.log.sync())
            sent += 1
        for row in stored:
            if row.message_id in live:
                continue
            if relay is not None and relay.elsewhere(row):
                # Running on another node: its sync from there, then its live frames.
                await relay.watch(tab, user.id, row)
            else:
                tab.send_frame(stored_sync(row))
            sent += 1
        return sent

    async def ack(self, user: UserRef, message_id: str) -> None:
        """The client has stored the reply: it is no longer kept. The client confirms a reply
        still running only after it interrupted it; any other such ack is for an earlier
        attempt of a retried message, and the retry's reply is still to be kept."""
        live = self._running.get((user.id, message_id))
        if live is not None:
            if not live.interrupted:
                return
            live.acked = True  # deleted when it ends instead of stored
        await self.hub.storage.client_replies.delete(user.id, message_id)

    def leave(self, tab: Tab) -> None:
        """A connection closed: its replies run on for whoever comes back."""
        for reply in self._running.values():
            if reply.origin is tab:
                reply.origin = None
            reply.watchers.discard(tab)
        if self.relay is not None:
            self.relay.leave(tab)
