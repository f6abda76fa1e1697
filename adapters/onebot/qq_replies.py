"""What a QQ chat is sent: a session's replies and the bridge's messages, as QQ messages.

One writer per session sends everything for that chat in order from one task, so two replies
are never interleaved. In ``segments`` mode a streamed reply goes out a sentence or paragraph
at a time while it streams, at least ``segment_interval`` apart; in ``whole`` mode as one
message when done. A reply longer than ``forward_threshold`` goes as a merged forward under the
character's name, and as plain messages within ``max_message_chars`` if the implementation
refuses the forward or does not answer.

The writer is the session's outbox sink: the finished reply arrives as a push (stored before it
is offered) and is confirmed only once QQ has all of it, pushes strictly in order. How much of
each reply QQ has is counted in characters of the reply, advanced only by sends that succeeded,
and kept in storage as well, so nothing is sent twice and nothing is skipped, whether the
implementation drops and comes back or the bridge restarts in between. When the account drops,
the writer stops sending (what streams meanwhile is still recorded) and forgets the pushes it
had queued: the outbox offers them again, in order, when the account is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import structlog

from adapters.onebot.qq_link import ActionFailed, QQAccount
from adapters.onebot.qq_text import cut_ready, forward_nodes, split_for_limit
from bridge.config import QQConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import Delta, Failed, ReplyEvent, Segment, ToolCall, plain_text
from bridge.outbox import Push
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

APOLOGY = "Sorry, I could not answer that just now. Please try again in a moment."
# Replies whose progress a writer keeps in memory (each is also in storage until confirmed).
MAX_REPLIES = 64
# Seqs of pushes sent, kept to tell a replayed one (a few per chat a minute: generous).
SENT_KEPT = 1024
# A plain message the implementation refused is tried once more in parts this long.
SMALLER = 500
# Refused sends after which a reply is given up (the account muted, or no longer a friend):
# sending on would be a storm of refused calls.
REFUSALS = 3

_BOOT = secrets.token_hex(3)
_count = count(1)


def new_token() -> str:
    """A reply's name for the push that finishes it: unique across restarts, since a reply's
    progress outlives the process."""
    return f"qq{_BOOT}-{next(_count)}"


@dataclass(slots=True)
class _Progress:
    """How much of one reply QQ has."""

    trigger: int | None = None  # the QQ message it answers (quoted in groups)
    streamed: str = ""  # what streamed, as shown
    sent: int = 0  # characters of the reply QQ has (streamed, then the final text)
    overflow: bool = False  # too long for pieces: the rest goes as a forward at the end
    qq_ids: list[int] = field(default_factory=list)
    saved: bool = False  # in storage (qq_progress) until the reply is confirmed
    refused: int = 0  # sends the implementation refused (past REFUSALS: it is given up)


@dataclass(frozen=True, slots=True)
class Chat:
    """Where a session's messages go."""

    kind: str  # "private" | "group"
    peer: int  # user id or group id


class _Stopped(Exception):
    """The account dropped (or was replaced) while this was being sent."""


class QQWriter:
    def __init__(
        self,
        owner: str,
        chat: Chat,
        config: QQConfig,
        account: Callable[[], QQAccount | None],
        storage: Storage,
        confirm: Callable[..., Any],
        tasks: TaskSet,
        sender_name: Callable[[str], str],
        reoffer: Callable[[QQWriter], None] = lambda writer: None,
    ) -> None:
        self.owner = owner
        self.chat = chat
        self._config = config
        self._account = account
        self._storage = storage
        self._confirm = confirm
        self._tasks = tasks
        self._name = sender_name
        # Called when a send stopped although the account may still be there (a write on a
        # closing socket): the outbox offers the unsent pushes again, in order.
        self._reoffer = reoffer
        self._queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._replies: OrderedDict[str, _Progress] = OrderedDict()
        self._last_send = 0.0
        # Bumped whenever the account drops: what was queued before is not sent (pushes come
        # again from the outbox, in order) and a send under way stops.
        self._generation = 0
        # Sessions are made for events of a connected account (or to serve its pushes).
        current = account()
        self._live = current is not None and current.connected
        # Pushes queued or done in this generation, so an offer twice is sent once; and the
        # newest ones sent (by seq, not a high-water mark: in a cluster an older push may come
        # after a newer one, and is then still to be sent).
        self._seqs: set[int] = set()
        self._sent: OrderedDict[int, None] = OrderedDict()

    # ----- the account coming and going (the edge calls these) ---------------------------------

    def attach(self) -> None:
        """The account is connected: sending may go on."""
        self._live = True

    def detach(self) -> None:
        """The account is gone: stop sending; whatever is queued is offered again later."""
        self._live = False
        self._generation += 1
        self._seqs.clear()

    # ----- the outbox sink ----------------------------------------------------------------------

    def offer(self, push: Push) -> bool:
        if not self._live:
            return False
        if push.seq and push.seq in self._sent:
            # Sent already: confirmed again, in case the first confirmation did not get through.
            self._put("confirm", push.seq)
            return True
        if push.seq and push.seq in self._seqs:
            return True  # already queued (offered again by a replay)
        if push.seq:
            self._seqs.add(push.seq)
        self._put("push", push)
        return True

    def note(self, seq: int) -> None:
        self._put("confirm", seq)

    # ----- a reply while it streams -------------------------------------------------------------

    def listener(self, token: str, trigger: int | None) -> Callable[[ReplyEvent], Any]:
        """The reply stream's listener for the reply the push will name ``token``."""
        self._progress(token).trigger = trigger

        async def listen(event: ReplyEvent) -> None:
            if isinstance(event, Delta) and event.text:
                self._put("delta", (token, event.text))
            elif isinstance(event, ToolCall) and self._config.show_tool_calls:
                if event.action == "started":
                    self._put("say", f"[{event.name}…]")
            elif isinstance(event, Failed):
                self._put("failed", (token, event))

        return listen

    def typing(self) -> None:
        """Show "typing" in a private chat while a reply is made (where supported)."""
        if self._config.typing and self.chat.kind == "private":
            self._put("typing", None)

    def say(self, text: str) -> None:
        """A short message from the bridge (busy, rate limited): not stored, best effort."""
        self._put("say", text)

    def _progress(self, token: str) -> _Progress:
        progress = self._replies.get(token)
        if progress is None:
            progress = self._replies[token] = _Progress()
            while len(self._replies) > MAX_REPLIES:
                self._replies.popitem(last=False)
        return progress

    def _put(self, kind: str, item: Any) -> None:
        self._queue.put_nowait((self._generation, kind, item))
        if self._worker is None or self._worker.done():
            self._worker = self._tasks.spawn(self._work(), name=f"qq-writer-{self.owner}")

    @property
    def idle(self) -> bool:
        return self._queue.empty() and (self._worker is None or self._worker.done())

    # ----- the one task that sends --------------------------------------------------------------

    async def _work(self) -> None:
        while not self._queue.empty():
            generation, kind, item = self._queue.get_nowait()
            if kind == "delta":
                token, text = item
                self._progress(token).streamed += text  # recorded even while not sending
            if generation != self._generation and kind in ("push", "confirm", "delta"):
                continue
            if kind == "push" and item.seq and item.seq in self._sent:
                continue  # a copy offered again while the first was finishing
            try:
                await self._handle(generation, kind, item)
            except asyncio.CancelledError:
                raise
            except _Stopped:
                log.info("qq.writer_paused", session=self.owner)
                if generation == self._generation:
                    # Nothing queued behind the stopped push may be sent (or confirmed) before
                    # it: they all come again from the outbox.
                    self._generation += 1
                    self._seqs.clear()
                    self._reoffer(self)
            except Exception:
                log.exception("qq.writer_failed", session=self.owner, kind=kind)
                if kind == "push" and item.seq:
                    self._seqs.discard(item.seq)  # offered again later, not skipped for good

    async def _handle(self, generation: int, kind: str, item: Any) -> None:
        if kind == "delta":
            await self._streamed(generation, item[0])
        elif kind == "push":
            await self._pushed(generation, item)
        elif kind == "confirm":
            await self._done(item)
        elif kind == "failed":
            token, failed = item
            progress = self._replies.pop(token, None)
            if failed.error == ErrorCode.CANCELLED:
                if "recalled" in failed.reason and self._config.recall_follows and progress:
                    await self._delete(progress.qq_ids)
            else:
                log.warning(
                    "qq.reply_failed", session=self.owner, error=failed.error, reason=failed.reason
                )
                await self._notice(APOLOGY)
            if progress is not None and progress.saved:
                await self._storage.qq.drop_progress(token)
        elif kind == "say":
            await self._notice(item)
        elif kind == "typing":
            account = self._account()
            if account is not None and self._live:
                try:
                    await account.call(
                        "set_input_status", {"user_id": self.chat.peer, "event_type": 1}, 5
                    )
                except BridgeError:
                    pass  # only NapCat and LLBot know it; nothing lost without it

    async def _streamed(self, generation: int, token: str) -> None:
        """Send the pieces of ``token``'s reply that are complete."""
        if self._config.reply_mode != "segments":
            return
        progress = self._progress(token)
        if progress.overflow or progress.refused >= REFUSALS:
            return
        base = progress.sent
        pending = progress.streamed[base:]
        pieces, _ = cut_ready(pending)
        cursor = 0
        for piece in pieces:
            start = pending.find(piece, cursor)
            cursor = (start if start >= 0 else cursor) + len(piece)
            if base + cursor > self._config.forward_threshold:
                progress.overflow = True  # long: what has not gone yet goes as a forward
                return
            await self._pace(generation)
            await self._piece(generation, piece, progress)
            progress.sent = base + cursor
            await self._save(token, progress, text=progress.streamed)
            if progress.refused >= REFUSALS:
                return

    async def _pushed(self, generation: int, push: Push) -> None:
        if push.kind == "recall":
            if self._config.recall_follows:
                await self._recall(push.message_id)
            await self._done(push.seq)
            return
        text = plain_text([Segment(str(s.get("type")), s.get("data") or {}) for s in push.segments])
        token = str(push.stream_request_id) if push.stream_request_id is not None else ""
        progress = self._replies.get(token) if token else None
        if progress is None:
            progress = _Progress()
            if token:  # a reply that streamed before a restart: what QQ has of it
                stored = await self._storage.qq.progress(token)
                if stored is not None:
                    progress.sent, progress.qq_ids, head = stored
                    progress.saved = True
                    # What went out must be how this text begins (a filter may have changed it).
                    progress.streamed = (
                        text[: progress.sent] if _head(text, progress.sent) == head else ""
                    )
                self._replies[token] = progress
        if not text.startswith(progress.streamed[: progress.sent]):
            # A reply filter changed what streamed (a blocked word): the final text goes whole.
            progress.sent = 0
        if progress.refused >= REFUSALS:
            log.warning("qq.reply_undeliverable", session=self.owner, message_id=push.message_id)
        else:
            await self._deliver(generation, text, progress, token, name=push.sender_name)
        account = self._account()
        if account is not None and progress.qq_ids:
            await self._storage.qq.link(
                account.self_id, progress.qq_ids, push.message_id, outgoing=True
            )
        if token:
            self._replies.pop(token, None)
            if progress.saved:
                await self._storage.qq.drop_progress(token)
        await self._done(push.seq)

    async def _deliver(
        self, generation: int, text: str, progress: _Progress, token: str, *, name: str
    ) -> None:
        base = progress.sent
        rest = text[base:]
        if not rest.strip():
            return
        if progress.overflow or len(rest.strip()) > self._config.forward_threshold:
            ids = await self._forward(generation, rest.strip(), name)
            if ids is not None:
                progress.qq_ids += ids
                progress.sent = len(text)
                return
        # A reply goes in pieces; the bridge's own answers (a command's) as they are.
        segmented = bool(token) and self._config.reply_mode == "segments"
        pieces = cut_ready(rest, final=True)[0] if segmented else [rest.strip()]
        cursor = 0
        for piece in pieces:
            start = rest.find(piece, cursor)
            cursor = (start if start >= 0 else cursor) + len(piece)
            if segmented:
                await self._pace(generation)
            await self._piece(generation, piece, progress)
            progress.sent = base + cursor
            if token and piece is not pieces[-1]:
                await self._save(token, progress, text=text)
            if progress.refused >= REFUSALS:
                log.warning("qq.reply_undeliverable", session=self.owner)
                break
        progress.sent = len(text)

    async def _save(self, token: str, progress: _Progress, *, text: str) -> None:
        progress.saved = True
        await self._storage.qq.save_progress(
            token, progress.sent, progress.qq_ids, _head(text, progress.sent)
        )

    async def _piece(self, generation: int, piece: str, progress: _Progress) -> None:
        """One piece of a reply: sent (its QQ ids kept) or, refused, skipped and counted."""
        ids, refused = await self._plain(generation, piece, self._quote(progress))
        progress.qq_ids += ids
        if refused:
            progress.refused += 1

    async def _done(self, seq: int) -> None:
        if seq:
            self._sent[seq] = None
            while len(self._sent) > SENT_KEPT:
                self._sent.popitem(last=False)
            self._seqs.discard(seq)
            await self._confirm(self.owner, seq, exact=True)

    def _quote(self, progress: _Progress) -> int | None:
        """Groups: the first message of a reply quotes what it answers."""
        if self.chat.kind != "group" or progress.trigger is None or progress.qq_ids:
            return None
        return progress.trigger

    async def _pace(self, generation: int) -> None:
        wait = self._last_send + self._config.segment_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if generation != self._generation:
            raise _Stopped

    # ----- sending ------------------------------------------------------------------------------

    def _target(self, action: str) -> tuple[str, dict[str, Any]]:
        if self.chat.kind == "group":
            return f"send_group_{action}", {"group_id": self.chat.peer}
        return f"send_private_{action}", {"user_id": self.chat.peer}

    async def _call(self, generation: int, action: str, params: dict[str, Any]) -> Any:
        account = self._account()
        if account is None or generation != self._generation or not self._live:
            raise _Stopped
        try:
            data = await account.call(action, params)
        except BridgeError as e:
            if isinstance(e, ActionFailed):
                self._last_send = time.monotonic()  # refusals are paced like sends
                raise
            if e.code == ErrorCode.UNAVAILABLE:
                raise _Stopped from None
            # No answer in time: most likely sent and the answer is late. Sending it again
            # could show it twice; going on loses nothing that QQ did not already take.
            log.warning("qq.send_unconfirmed", session=self.owner, action=action, reason=e.reason)
            return None
        self._last_send = time.monotonic()
        account.messages_out += 1
        return data

    async def _plain(self, generation: int, text: str, quote: int | None) -> tuple[list[int], bool]:
        """``text`` as plain messages within the implementation's limit: the QQ ids of those
        sent, and whether any part was refused (a refused part is tried once more in smaller
        parts, then skipped)."""
        ids: list[int] = []
        refused = False
        for part in split_for_limit(text, self._config.max_message_chars):
            try:
                ids += await self._one(generation, part, quote if not ids else None)
                continue
            except ActionFailed as e:
                log.info("qq.send_refused", session=self.owner, reason=e.reason)
                if len(part) <= SMALLER:
                    refused = True
                    continue
            for small in split_for_limit(part, SMALLER):
                try:
                    ids += await self._one(generation, small, None)
                except ActionFailed as e:
                    log.info("qq.send_refused", session=self.owner, reason=e.reason)
                    refused = True
        return ids, refused

    async def _one(self, generation: int, text: str, quote: int | None) -> list[int]:
        message: list[dict[str, Any]] = []
        if quote is not None:
            message.append({"type": "reply", "data": {"id": str(quote)}})
        message.append({"type": "text", "data": {"text": text}})
        action, params = self._target("msg")
        data = await self._call(generation, action, {**params, "message": message})
        return _message_ids(data)

    async def _forward(self, generation: int, text: str, name: str) -> list[int] | None:
        """The text as one merged forward; None when the implementation would not take it."""
        account = self._account()
        if account is None:
            raise _Stopped
        sender = name or self._name(self.owner)
        nodes = forward_nodes(text, name=sender, uin=account.self_id)
        action, params = self._target("forward_msg")
        try:
            data = await self._call(generation, action, {**params, "messages": nodes})
        except ActionFailed as e:
            log.info("qq.forward_refused", session=self.owner, reason=e.reason)
            return None
        if data is None:  # timed out: fall back rather than risk nothing arriving
            log.info("qq.forward_timed_out", session=self.owner)
            return None
        return _message_ids(data)

    async def _notice(self, text: str) -> None:
        try:
            await self._plain(self._generation, text, None)
        except (_Stopped, BridgeError) as e:
            log.info("qq.notice_not_sent", session=self.owner, reason=str(e))

    async def _recall(self, message_id: int) -> None:
        account = self._account()
        if account is not None:
            await self._delete(await self._storage.qq.qq_ids(account.self_id, message_id))

    async def _delete(self, qq_ids: list[int]) -> None:
        account = self._account()
        if account is None:
            return
        for qq_id in qq_ids:
            try:
                await account.call("delete_msg", {"message_id": qq_id})
            except BridgeError as e:
                log.info("qq.recall_failed", session=self.owner, qq_id=qq_id, reason=e.reason)


def _head(text: str, n: int) -> str:
    """A short fingerprint of what a reply's first ``n`` characters were."""
    return hashlib.sha1(text[:n].encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _message_ids(data: Any) -> list[int]:
    qq_id = data.get("message_id") if isinstance(data, dict) else None
    if isinstance(qq_id, bool) or not isinstance(qq_id, int | str):
        return []
    text = str(qq_id).strip()
    return [int(text)] if text.lstrip("-").isdigit() else []
