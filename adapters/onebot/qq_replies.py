"""What a QQ chat is sent: a session's replies and the bridge's messages, as QQ messages.

One writer per session sends everything for that chat in order from one task, so two replies
are never interleaved. In ``segments`` mode a streamed reply goes out a sentence or paragraph
at a time while it streams, at least ``segment_interval`` apart; in ``whole`` mode as one
message when done. A reply longer than ``forward_threshold`` goes as a merged forward under the
character's name, and as plain messages within ``max_message_chars`` if the implementation
refuses the forward or does not answer.

The writer is also the session's outbox sink: the finished reply arrives as a push (stored
before it is offered), and is confirmed only once QQ has it all. What streamed already is not
sent again (the writer remembers how much of each reply went out, also across a reconnect of
the implementation); whatever is still unconfirmed when the account drops is offered again
when it comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from adapters.onebot.qq_link import ActionFailed, QQAccount
from adapters.onebot.qq_text import cut_ready, forward_nodes, split_for_limit
from bridge.config import QQConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import Delta, Failed, ReplyEvent, ToolCall
from bridge.outbox import Push
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

APOLOGY = "Sorry, I could not answer that just now. Please try again in a moment."
# Replies whose progress a writer remembers (a reply is forgotten once confirmed).
MAX_REPLIES = 64


@dataclass(slots=True)
class _Progress:
    """How much of one streamed reply QQ has already."""

    trigger: int | None = None  # the QQ message it answers (quoted in groups)
    streamed: str = ""  # what streamed, as shown
    consumed: int = 0  # characters of `streamed` already sent (or given up)
    overflow: bool = False  # too long for pieces: the rest goes as a forward at the end
    qq_ids: list[int] = field(default_factory=list)
    typing_sent: bool = False


@dataclass(frozen=True, slots=True)
class Chat:
    """Where a session's messages go."""

    kind: str  # "private" | "group"
    peer: int  # user id or group id


class QQWriter:
    def __init__(
        self,
        owner: str,
        chat: Chat,
        config: QQConfig,
        account: Callable[[], QQAccount | None],
        storage: Storage,
        confirm: Callable[[str, int], Any],
        tasks: TaskSet,
        sender_name: Callable[[str], str],
    ) -> None:
        self.owner = owner
        self.chat = chat
        self._config = config
        self._account = account
        self._storage = storage
        self._confirm = confirm
        self._tasks = tasks
        self._name = sender_name
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._replies: OrderedDict[str, _Progress] = OrderedDict()
        self._last_send = 0.0
        self.last_used = time.monotonic()
        # Set when the account dropped mid-send: later pushes wait (unconfirmed) for the
        # account to come back, so a confirmation never covers one that was not sent.
        self.broken = False

    # ----- the outbox sink ----------------------------------------------------------------------

    def offer(self, push: Push) -> bool:
        account = self._account()
        if account is None or not account.connected or self.broken:
            return False
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
        self.last_used = time.monotonic()
        self._queue.put_nowait((kind, item))
        if self._worker is None or self._worker.done():
            self._worker = self._tasks.spawn(self._work(), name=f"qq-writer-{self.owner}")

    @property
    def idle(self) -> bool:
        return self._queue.empty() and (self._worker is None or self._worker.done())

    # ----- the one task that sends --------------------------------------------------------------

    async def _work(self) -> None:
        while not self._queue.empty():
            kind, item = self._queue.get_nowait()
            if self.broken and kind in ("push", "confirm", "delta"):
                continue
            try:
                await self._handle(kind, item)
            except asyncio.CancelledError:
                raise
            except BridgeError as e:
                if e.code == ErrorCode.UNAVAILABLE:
                    self.broken = True
                log.info("qq.writer_stopped", session=self.owner, reason=e.reason)
            except Exception:
                log.exception("qq.writer_failed", session=self.owner, kind=kind)

    async def _handle(self, kind: str, item: Any) -> None:
        if kind == "delta":
            token, text = item
            await self._streamed(token, text)
        elif kind == "push":
            await self._pushed(item)
        elif kind == "confirm":
            await self._confirm(self.owner, item)
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
                await self._send_text(APOLOGY)
        elif kind == "say":
            await self._send_text(item)
        elif kind == "typing":
            account = self._account()
            if account is not None:
                try:
                    await account.call(
                        "set_input_status", {"user_id": self.chat.peer, "event_type": 1}, 5
                    )
                except BridgeError:
                    pass  # only NapCat and LLBot know it; nothing lost without it

    async def _streamed(self, token: str, text: str) -> None:
        progress = self._progress(token)
        progress.streamed += text
        if self._config.reply_mode != "segments" or progress.overflow:
            return
        pending = progress.streamed[progress.consumed :]
        pieces, rest = cut_ready(pending)
        if not pieces:
            return
        if progress.consumed + len(pending) - len(rest) > self._config.forward_threshold:
            progress.overflow = True  # long: what has not gone yet goes as a forward
            return
        progress.consumed += len(pending) - len(rest)
        for piece in pieces:
            await self._pace()
            ids = await self._send_plain(piece, quote=self._quote(progress))
            progress.qq_ids += ids

    async def _pushed(self, push: Push) -> None:
        if push.kind == "recall":
            if self._config.recall_follows:
                await self._recall(push.message_id)
            await self._confirm(self.owner, push.seq)
            return
        text = "".join(
            str((s.get("data") or {}).get("text", ""))
            for s in push.segments
            if s.get("type") == "text"
        )
        token = str(push.stream_request_id) if push.stream_request_id is not None else ""
        progress = self._replies.pop(token, None) if token else None
        if progress is None:
            progress = _Progress()
        done = progress.streamed[: progress.consumed]
        rest = text[len(done) :] if text.startswith(done) else text
        sent = list(progress.qq_ids)
        try:
            # A reply goes in pieces; the bridge's own answers (a command's) as they are.
            sent += await self._deliver(rest, progress, pieces=bool(token))
        except BridgeError as e:
            if e.code == ErrorCode.UNAVAILABLE:
                # The account dropped: unconfirmed, so it is offered again when it is back;
                # what went out already is remembered.
                progress.consumed = len(progress.streamed)
                progress.qq_ids = sent
                if token:
                    self._replies[token] = progress
                raise
            log.warning("qq.send_refused", session=self.owner, reason=e.reason)
        account = self._account()
        if account is not None and sent:
            await self._storage.qq.link(account.self_id, sent, push.message_id, outgoing=True)
        await self._confirm(self.owner, push.seq)

    async def _deliver(self, text: str, progress: _Progress, *, pieces: bool) -> list[int]:
        text = text.strip()
        if not text:
            return []
        quote = self._quote(progress)
        if progress.overflow or len(text) > self._config.forward_threshold:
            ids = await self._forward(text)
            if ids is not None:
                return ids
        segmented = pieces and self._config.reply_mode == "segments"
        parts = cut_ready(text, final=True)[0] if segmented else [text]
        ids: list[int] = []
        for piece in parts:
            for part in split_for_limit(piece, self._config.max_message_chars):
                if segmented:
                    await self._pace()
                ids += await self._send_plain(part, quote=quote if not ids else None)
        return ids

    def _quote(self, progress: _Progress) -> int | None:
        """Groups: the first message of a reply quotes what it answers."""
        if self.chat.kind != "group" or progress.trigger is None or progress.qq_ids:
            return None
        return progress.trigger

    async def _pace(self) -> None:
        wait = self._last_send + self._config.segment_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _send_text(self, text: str) -> None:
        try:
            for part in split_for_limit(text, self._config.max_message_chars):
                await self._send_plain(part)
        except BridgeError as e:
            log.warning("qq.send_failed", session=self.owner, reason=e.reason)

    async def _send_plain(self, text: str, quote: int | None = None) -> list[int]:
        account = self._account()
        if account is None:
            raise BridgeError(ErrorCode.UNAVAILABLE, "the QQ account is not connected")
        message: list[dict[str, Any]] = []
        if quote is not None:
            message.append({"type": "reply", "data": {"id": str(quote)}})
        message.append({"type": "text", "data": {"text": text}})
        if self.chat.kind == "group":
            action, params = "send_group_msg", {"group_id": self.chat.peer, "message": message}
        else:
            action, params = "send_private_msg", {"user_id": self.chat.peer, "message": message}
        data = await account.call(action, params)
        self._last_send = time.monotonic()
        account.messages_out += 1
        qq_id = data.get("message_id") if isinstance(data, dict) else None
        return (
            [int(qq_id)]
            if isinstance(qq_id, int | str) and str(qq_id).lstrip("-").isdigit()
            else []
        )

    async def _forward(self, text: str) -> list[int] | None:
        """The text as one merged forward; None when the implementation would not take it."""
        account = self._account()
        if account is None:
            raise BridgeError(ErrorCode.UNAVAILABLE, "the QQ account is not connected")
        nodes = forward_nodes(text, name=self._name(self.owner), uin=account.self_id)
        if self.chat.kind == "group":
            action, params = (
                "send_group_forward_msg",
                {"group_id": self.chat.peer, "messages": nodes},
            )
        else:
            action, params = (
                "send_private_forward_msg",
                {"user_id": self.chat.peer, "messages": nodes},
            )
        try:
            data = await account.call(action, params)
        except (ActionFailed, BridgeError) as e:
            if e.code == ErrorCode.UNAVAILABLE:
                raise
            log.info("qq.forward_refused", session=self.owner, reason=e.reason)
            return None
        self._last_send = time.monotonic()
        account.messages_out += 1
        qq_id = data.get("message_id") if isinstance(data, dict) else None
        return (
            [int(qq_id)]
            if isinstance(qq_id, int | str) and str(qq_id).lstrip("-").isdigit()
            else []
        )

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
