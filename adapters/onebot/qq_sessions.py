"""One QQ chat's session: its waiting messages, turned into turns of the conversation engine one
reply at a time.

A message that arrives while the session's reply runs waits here (at most ``queue_size``; past
that the sender gets one short busy answer, never silence). When the reply is done, waiting
messages from the same sender that came within ``merge_window`` of each other become one turn,
so a burst of short messages gets one answer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from adapters.onebot.qq_replies import Chat, QQWriter, new_token
from bridge.errors import BridgeError, ErrorCode
from bridge.models import Done, Failed, ReplyEvent, Segment, UserRef

if TYPE_CHECKING:
    from adapters.onebot.qq_edge import QQEdge

log = structlog.get_logger(__name__)

# The longest a session waits for its reply before taking the next message anyway (the reply
# still arrives; the engine keeps the conversation's order).
REPLY_WAIT = 600.0
BUSY = "I'm still answering the earlier messages; please wait a moment and send that again."
_tokens = itertools.count(1)


@dataclass(slots=True)
class Input:
    """One QQ message on its way to the session's conversation."""

    qq_id: int
    user_id: int
    name: str
    segments: list[Segment]
    text: str  # what the character reads (placeholders for images, no @ of the account)
    command: bool = False
    # Only a reply to some message: a turn if that message is one of the bridge's.
    maybe: bool = False
    quoted: str | None = None  # the id of a quoted message
    arrived: float = field(default_factory=time.monotonic)


class QQSession:
    def __init__(self, edge: QQEdge, owner: str, account_id: int, chat: Chat) -> None:
        self.edge = edge
        self.owner = owner
        self.account_id = account_id
        self.chat = chat
        self.contact = ""  # what it last talked to (for the forward's sender name)
        self.pending: deque[Input] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._busy_told = False
        # The QQ ids of the turn being handed over (not yet stored), and those of them recalled
        # meanwhile: the recall is carried out once the turn's message id is known.
        self._handing: set[int] = set()
        self._recalled: set[int] = set()
        self.writer = QQWriter(
            owner,
            chat,
            edge.config,
            lambda: edge.link.accounts.get(account_id),
            edge.storage,
            edge.outbox.confirm,
            edge.tasks,
            lambda _: edge.contact_name(self),
        )

    @property
    def idle(self) -> bool:
        return (
            not self.pending
            and (self._worker is None or self._worker.done())
            and (self.writer.idle)
        )

    def offer(self, item: Input) -> None:
        if len(self.pending) >= self.edge.config.queue_size and not item.command:
            if not self._busy_told:
                self._busy_told = True
                self.writer.say(BUSY)
            log.info("qq.queue_full", session=self.owner, dropped=item.qq_id)
            return
        self.pending.append(item)
        if self._worker is None or self._worker.done():
            self._worker = self.edge.tasks.spawn(self._work(), name=f"qq-session-{self.owner}")

    def withdraw(self, qq_id: int) -> bool:
        """A message recalled before its turn was stored: it never goes anywhere, or its turn
        is recalled as soon as it is stored."""
        for item in self.pending:
            if item.qq_id == qq_id:
                self.pending.remove(item)
                return True
        if qq_id in self._handing:
            self._recalled.add(qq_id)
            return True
        return False

    async def _work(self) -> None:
        while self.pending:
            first = self.pending.popleft()
            if first.maybe and not await self.edge.replies_to_bot(self.account_id, first.quoted):
                continue
            batch = [first]
            window = self.edge.config.merge_window
            while (
                not first.command
                and self.pending
                and not self.pending[0].command
                and not self.pending[0].maybe
                and self.pending[0].user_id == first.user_id
                and self.pending[0].arrived - batch[-1].arrived <= window
            ):
                batch.append(self.pending.popleft())
            if not self.pending:
                self._busy_told = False
            try:
                await self._turn(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("qq.turn_failed", session=self.owner)

    async def _turn(self, batch: list[Input]) -> None:
        edge = self.edge
        last = batch[-1]
        caller = UserRef(f"qq:{last.user_id}", is_admin=edge.is_admin(last.user_id), name=last.name)
        if last.command:
            segments = last.segments
        else:
            segments = [Segment.text(await self._text(batch))]
        try:
            contact = await edge.contact_for(self.owner)
        except BridgeError as e:
            self.writer.say(f"Sorry, no character to talk to here: {e.reason}")
            return
        self.contact = contact
        token = new_token()
        ended = asyncio.Event()
        listen = self.writer.listener(token, last.qq_id)

        async def listener(event: ReplyEvent) -> None:
            await listen(event)
            if isinstance(event, Done | Failed):
                ended.set()

        if not last.command:
            self.writer.typing()
        self._handing = {i.qq_id for i in batch}
        try:
            accepted = await edge.sessions.send(
                UserRef(self.owner),
                contact,
                segments,
                listener=listener,
                stream_request_id=token,
                caller=caller,
            )
        except BridgeError as e:
            log.warning("qq.refused", session=self.owner, code=e.code, reason=e.reason)
            if e.code != ErrorCode.CANCELLED:
                self.writer.say(edge.refusal(e))
            self._handing = set()
            return
        account = edge.link.accounts.get(self.account_id)
        if account is not None:
            account.messages_in += len(batch)
        try:
            await edge.storage.qq.link(
                self.account_id, [i.qq_id for i in batch], accepted.message_id, outgoing=False
            )
        finally:
            # From here a recall finds the message by its QQ id.
            handed, self._handing = self._handing, set()
        if handed & self._recalled:
            self._recalled -= handed
            try:
                await edge.sessions.recall(UserRef(self.owner), accepted.message_id)
            except BridgeError as e:
                log.info("qq.recall_failed", session=self.owner, reason=e.reason)
            return
        if accepted.streaming:
            try:
                async with asyncio.timeout(REPLY_WAIT):
                    await ended.wait()
            except TimeoutError:
                log.warning("qq.reply_slow", session=self.owner)

    async def _text(self, batch: list[Input]) -> str:
        """What the character reads for these messages: the quoted message as context, and in a
        group shared by its members, who said it."""
        parts = []
        for item in batch:
            text = item.text
            if item.quoted is not None:
                context = await self.edge.quoted_context(self.account_id, item.quoted)
                if context:
                    text = context + text
            parts.append(text)
        text = "\n".join(parts)
        if self.chat.kind == "group" and self.edge.config.group_isolation == "shared":
            text = f"{batch[-1].name}: {text}"
        return text
