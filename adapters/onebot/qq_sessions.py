"""One QQ chat's session: its waiting messages, turned into turns of the conversation engine one
reply at a time.

Messages wait here before they become a turn: at most ``queue_size`` of them, commands included
(past that the sender gets one short busy answer, never silence). A message that is not a
command waits until its sender has been quiet for ``merge_window``: each further message of the
same sender that comes within ``merge_window`` of the previous one joins the same turn (the wait
is at most 4 × merge_window, the turn at most ``queue_size`` messages), so a burst of short
messages gets one answer (``merge_window = 0``: no wait). Messages that came while a reply ran
are merged by the same rule when it is done. A turn starts once its account has a free place: at most
``max_active`` turns of one account run at once, the others wait here, queued.

A quote without any other trigger in a group ("maybe") becomes a turn only if the quoted
message is one of the bridge's; it counts against the sender's rate limit only then, and it
never causes a busy answer (on a full queue it is dropped quietly).

A message recalled while it waits is dropped; one recalled while its turn is prepared (the
quoted message fetched, the contact looked up) is left out of the turn, and one recalled while
it is handed over is recalled as soon as its message id is known.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterable
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
        self._arrived = asyncio.Event()
        self._busy_told = False
        # The QQ ids of the turn out of the queue and not yet stored, and those of them recalled
        # meanwhile: left out before the turn is sent, or recalled once its message id is known.
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
            reoffer=edge.reoffer,
        )

    @property
    def idle(self) -> bool:
        return (
            not self.pending
            and (self._worker is None or self._worker.done())
            and (self.writer.idle)
        )

    def offer(self, item: Input) -> None:
        if len(self.pending) >= self.edge.config.queue_size and not self._make_room(item):
            return
        self.pending.append(item)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = self.edge.tasks.spawn(self._work(), name=f"qq-session-{self.owner}")

    def _make_room(self, item: Input) -> bool:
        """On a full queue: whether ``item`` may wait all the same. A quote that is most likely
        not for the bot is dropped quietly, or gives its place to a message for the bot: it
        never makes anyone be told busy. Anything else is refused, with one busy answer."""
        if item.maybe:
            log.debug("qq.queue_full", session=self.owner, dropped=item.qq_id, maybe=True)
            return False
        maybe = next((i for i in reversed(self.pending) if i.maybe), None)
        if maybe is not None:
            self.pending.remove(maybe)
            log.debug("qq.queue_full", session=self.owner, dropped=maybe.qq_id, maybe=True)
            return True
        if not self._busy_told:
            self._busy_told = True
            self.writer.say(BUSY)
        log.info("qq.queue_full", session=self.owner, dropped=item.qq_id)
        return False

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

    # ----- the queue ----------------------------------------------------------------------------

    async def _work(self) -> None:
        edge = self.edge
        while self.pending:
            first = self.pending[0]
            if not first.command and not first.maybe and edge.config.merge_window > 0:
                await self._quiet(first)
                if not self.pending or self.pending[0] is not first:
                    continue  # recalled while it waited
            async with edge.turn_slot(self.account_id):
                if not self.pending or self.pending[0] is not first:
                    continue  # recalled while it waited for its place
                batch = self._take()
                if not self.pending:
                    self._busy_told = False
                self._handing = {i.qq_id for i in batch}
                try:
                    await self._turn(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("qq.turn_failed", session=self.owner)
                finally:
                    self._handing = set()
                    self._recalled = set()

    def _chain(self, first: Input, rest: Iterable[Input]) -> list[Input]:
        """``first`` and the waiting messages that join its turn: the same sender's (others
        keep their place), each within merge_window of the previous, up to the sender's next
        command or quote, at most queue_size messages. (How long a turn waits for more is
        `_quiet`'s: at most 4 × merge_window.)"""
        chain = [first]
        if first.command or first.maybe:
            return chain
        config = self.edge.config
        window = config.merge_window
        for item in rest:
            if len(chain) >= config.queue_size:
                break
            if item.user_id != first.user_id:
                continue
            if item.command or item.maybe or item.arrived - chain[-1].arrived > window:
                break
            chain.append(item)
        return chain

    async def _quiet(self, first: Input) -> None:
        """Until ``first``'s sender has been quiet for merge_window, at most 4 × merge_window
        after ``first`` came, or until queue_size messages would be merged (see `_chain`)."""
        config = self.edge.config
        deadline = first.arrived + 4 * config.merge_window
        while self.pending and self.pending[0] is first:
            chain = self._chain(first, itertools.islice(self.pending, 1, None))
            if len(chain) >= config.queue_size:
                return
            wait = min(chain[-1].arrived + config.merge_window, deadline) - time.monotonic()
            if wait <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass

    def _take(self) -> list[Input]:
        first = self.pending.popleft()
        batch = self._chain(first, self.pending)
        for item in batch[1:]:
            self.pending.remove(item)
        return batch

    # ----- one turn -----------------------------------------------------------------------------

    async def _turn(self, batch: list[Input]) -> None:
        edge = self.edge
        first = batch[0]
        if first.maybe:
            if not await edge.replies_to_bot(self.account_id, first.quoted):
                return
            if first.qq_id not in self._recalled and edge.too_fast(
                self.account_id, first.user_id, self
            ):
                return
        try:
            contact = await edge.contact_for(self.owner)
        except BridgeError as e:
            log.warning("qq.no_contact", session=self.owner, code=e.code, reason=e.reason)
            self.writer.say(f"Sorry, no character to talk to here: {e.reason}")
            return
        texts = {} if first.command else {i.qq_id: await self._item_text(i) for i in batch}
        # Recalled while the turn was prepared: left out (none left: no turn).
        if self._recalled:
            gone = {i.qq_id for i in batch} & self._recalled
            batch = [i for i in batch if i.qq_id not in gone]
            self._handing -= gone
            self._recalled -= gone
            log.info("qq.withdrawn", session=self.owner, qq_ids=sorted(gone))
            if not batch:
                return
        last = batch[-1]
        if last.command:
            segments = last.segments
        else:
            segments = [Segment.text(self._compose(batch, texts))]
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
        try:
            accepted = await edge.sessions.send(
                UserRef(self.owner),
                contact,
                segments,
                listener=listener,
                stream_request_id=token,
                caller=self._caller(last),
            )
        except BridgeError as e:
            log.warning("qq.refused", session=self.owner, code=e.code, reason=e.reason)
            if e.code != ErrorCode.CANCELLED:
                self.writer.say(edge.refusal(e))
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

    def _caller(self, item: Input) -> UserRef:
        """Who wrote the turn. In a private chat that is the conversation's owner (so what is
        the user's own, such as /schedule, is theirs there); in a group a member of it."""
        caller = self.owner if self.chat.kind == "private" else f"qq:{item.user_id}"
        return UserRef(caller, is_admin=self.edge.is_admin(item.user_id), name=item.name)

    async def _item_text(self, item: Input) -> str:
        """What the character reads of one message: the quoted message as context first."""
        text = item.text
        if item.quoted is not None:
            context = await self.edge.quoted_context(self.account_id, item.quoted)
            if context:
                text = context + text
        return text

    def _compose(self, batch: list[Input], texts: dict[int, str]) -> str:
        """The turn's text; in a group shared by its members, with who said it."""
        text = "\n".join(texts[i.qq_id] for i in batch)
        if self.chat.kind == "group" and self.edge.config.group_isolation == "shared":
            text = f"{batch[-1].name}: {text}"
        return text


def storable(text: str) -> str:
    """``text`` without lone surrogates (JSON allows them, UTF-8 and the database do not): one
    such message must not sink the others merged into its turn."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def parse_owner(owner: str) -> tuple[int, Chat] | None:
    """(account, chat) of a session owner id (see the module docstring); None if it is not one."""
    parts = owner.split(":")
    if len(parts) not in (3, 4) or parts[0] != "qq" or not parts[1].isdigit():
        return None
    peer = parts[2]
    if len(peer) < 2 or not peer[1:].isdigit() or peer[0] not in "ug":
        return None
    if peer[0] == "u" and len(parts) == 3:
        return int(parts[1]), Chat("private", int(peer[1:]))
    if peer[0] == "g":
        return int(parts[1]), Chat("group", int(peer[1:]))
    return None
