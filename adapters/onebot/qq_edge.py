"""The QQ edge: events from linked QQ accounts become turns of conversations with characters or
models, and what the conversations say goes back to the QQ chats.

A session is a private chat (account, user) or a group (account, group) — or (account, group,
member) with ``group_isolation = "member"``; its conversation is owned by the id
``qq:<account>:u<user>`` / ``qq:<account>:g<group>[:<member>]`` and talks to the session's
contact (`/char use`, else ``default_target``). Everything before a session's queue is cheap
and synchronous, in the order events arrive: too old (a replay after a reconnect), already seen
(the same event twice), not allowed, not for the bot (no trigger; in a group a command the
bridge does not know is another bot's), no room (MAX_SESSIONS sessions, none idle), too fast
(rate limit; a quote that may not be for the bot is counted once it is known to be).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from adapters.onebot.events import (
    Event,
    FriendRecallNotice,
    GroupMessageEvent,
    GroupRecallNotice,
    PrivateMessageEvent,
)
from adapters.onebot.qq_link import QQAccount, QQLink
from adapters.onebot.qq_replies import Chat, QQWriter
from adapters.onebot.qq_sessions import Input, QQSession, parse_owner, storable
from adapters.onebot.qq_text import quote_context, reply_id, strip_trigger, to_model_text
from bridge.commands import parse_line
from bridge.config import QQConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.health import Health
from bridge.models import ConversationKey, Segment, UserRef, plain_text
from bridge.outbox import Outbox
from bridge.router import Router
from bridge.tasks import Chains, TaskSet
from storage import Storage

if TYPE_CHECKING:
    from adapters.onebot.qq_cluster import QQCluster
    from bridge.cluster.node import ClusterNode
    from bridge.sessions import Sessions

log = structlog.get_logger(__name__)

# Bounds on what is keyed by QQ users, groups and messages.
MAX_SESSIONS = 5000
# Sessions looked at for an idle one to evict when MAX_SESSIONS are open (busy ones go last).
EVICT_SCAN = 64
SEEN_EVENTS = 20_000
# In a cluster: the longest an event's claim may take, and how many may wait at once.
CLAIM_TIMEOUT = 0.5
MAX_CLAIMING = 1000
RATE_KEYS = 10_000
TOO_FAST = "You're sending messages too fast; please wait a minute."
# QQ lets a message be recalled for two minutes and quoted for longer: links are kept a week.
LINK_DAYS = 7
# The longest wait for a quoted message (`get_msg`); `action_timeout` when that is shorter.
GET_MSG_WAIT = 10.0


class QQEdge:
    def __init__(
        self,
        config: QQConfig,
        sessions: Sessions,
        router: Router,
        storage: Storage,
        outbox: Outbox,
        health: Health,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.router = router
        self.storage = storage
        self.outbox = outbox
        self.tasks = TaskSet("qq")
        self.link = QQLink(config, self._on_event, self._on_account, health)
        self._sessions: OrderedDict[str, QQSession] = OrderedDict()
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        # In a cluster (set by the app): `await dedupe(key, ttl)` is True for the first node
        # to claim an event; the per-account chain of those claims keeps their order.
        self.dedupe: Callable[[str, float], Awaitable[bool]] | None = None
        self._claims = Chains(self.tasks)
        # In a cluster (join_cluster): where accounts are, and calls to those on other nodes.
        self.cluster: QQCluster | None = None
        self._rates: OrderedDict[tuple[int, int], deque[float]] = OrderedDict()
        # Per account: turns running at once (`max_active`).
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._full_logged = -60.0
        self._admins = {int(q) for q in config.admins}
        self._allow_users = {int(q) for q in config.allow_users}
        self._deny_users = {int(q) for q in config.deny_users}
        self._allow_groups = {int(q) for q in config.allow_groups}
        self._deny_groups = {int(q) for q in config.deny_groups}

    async def close(self) -> None:
        await self.link.close()
        if self.cluster is not None:
            await self.cluster.close()  # after the link: its accounts' entries are released
        await self.tasks.cancel_all()

    def join_cluster(self, node: ClusterNode) -> None:
        from adapters.onebot.qq_cluster import QQCluster

        self.dedupe = node.once
        self.cluster = QQCluster(self.link, node)
        self.cluster.start()

    async def call(
        self, self_id: int, action: str, params: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """An action of QQ account ``self_id``, on whichever node it is connected to (see
        QQAccount.call for the errors)."""
        account = self.link.accounts.get(self_id)
        local = account is not None and account.connected
        if self.cluster is None or (local and not self.cluster.moved(self_id)):
            if account is None:
                raise BridgeError(ErrorCode.UNAVAILABLE, f"QQ account {self_id} is not connected")
            return await account.call(action, params, timeout)
        wait = timeout or self.config.action_timeout
        return await self.cluster.call(self_id, action, params, wait)

    # ----- Binder: `/char use` in a QQ chat -----------------------------------------------------

    def binds(self, key: ConversationKey) -> bool:
        return key.user_id.startswith("qq:")

    async def bind(self, key: ConversationKey, contact: str) -> None:
        target = self.router.contact_target(contact)
        contact = target.canonical(contact)
        if not getattr(target, "replies_stream", True):
            raise BridgeError(ErrorCode.INVALID_DATA, f"{contact} does not talk to QQ chats")
        await target.check_available(contact)
        await self.storage.qq.bind(key.user_id, contact)

    async def contact_for(self, owner: str) -> str:
        contact = await self.storage.qq.binding(owner) or self.config.default_target
        if not contact:
            # The character the hub marks as default (`[momohub] default_character`).
            contact = next((c.id for c in self.router.contacts(UserRef(owner)) if c.default), "")
        if not contact:
            raise BridgeError(
                ErrorCode.NOT_FOUND,
                "set [onebot.qq] default_target or [momohub] default_character",
            )
        target = self.router.contact_target(contact)
        if not getattr(target, "replies_stream", True):
            # A bot framework's account answers on its own, never as a QQ chat's reply.
            raise BridgeError(ErrorCode.INVALID_DATA, f"{contact} does not talk to QQ chats")
        return target.canonical(contact)

    def contact_name(self, session: QQSession) -> str:
        if not session.contact:
            return "Reply"
        return self.router.contact_name(UserRef(session.owner), session.contact)

    def is_admin(self, user_id: int) -> bool:
        return user_id in self._admins

    @staticmethod
    def refusal(error: BridgeError) -> str:
        """A refusal as QQ users see it: short, no codes."""
        if error.code == ErrorCode.BUSY:
            return "I'm busy with earlier messages; please try again in a moment."
        if error.code == ErrorCode.NOT_FOUND:
            return "The character of this chat is not available any more; /char use picks another."
        return "Sorry, I can't answer right now. Please try again later."

    # ----- accounts -----------------------------------------------------------------------------

    def _on_account(self, account: QQAccount, up: bool) -> None:
        prefix = f"qq:{account.self_id}:"
        if self.cluster is not None:
            self.cluster.account_changed(account.self_id, up)
        if up:
            # A linked account is the bridge's own identity: never a hub user's number.
            self.storage.users.reserve(account.self_id)
            for session in self._sessions.values():
                if session.account_id == account.self_id:
                    session.writer.attach()
            self.tasks.spawn(self._serve(prefix), name=f"qq-serve-{account.self_id}")
            return
        self.outbox.stop_family(prefix)
        for session in self._sessions.values():
            if session.account_id == account.self_id:
                # Whatever its writer had queued is offered again, in order, once it is back.
                session.writer.detach()
                self.outbox.detach(session.owner, session.writer)

    def reoffer(self, writer: QQWriter) -> None:
        """A writer stopped mid-push while its account may still be connected: it leaves the
        outbox and, if the account is there, joins again, which offers every unsent push anew,
        in order."""
        self.outbox.detach(writer.owner, writer)
        self.tasks.spawn(self._rejoin(writer), name=f"qq-rejoin-{writer.owner}")

    async def _rejoin(self, writer: QQWriter) -> None:
        parsed = parse_owner(writer.owner)
        account = self.link.accounts.get(parsed[0]) if parsed is not None else None
        if account is None or not account.connected:
            return  # it comes back with the account (`_serve`)
        writer.attach()
        await self.outbox.attach(writer.owner, writer)

    async def _serve(self, prefix: str) -> None:
        waiting = await self.outbox.serve_family(prefix, self._writer_for)
        if waiting:
            log.info("qq.replaying", account=prefix, sessions=waiting)

    def _writer_for(self, owner: str) -> QQWriter | None:
        parsed = parse_owner(owner)
        if parsed is None:
            return None
        account_id, chat = parsed
        account = self.link.accounts.get(account_id)
        if account is None or not account.connected:
            return None
        session = self._session(owner, account_id, chat)
        session.writer.attach()
        return session.writer

    def _session(self, owner: str, account_id: int, chat: Chat) -> QQSession:
        session = self._sessions.get(owner)
        if session is not None:
            self._sessions.move_to_end(owner)
            return session
        if len(self._sessions) >= MAX_SESSIONS:
            self._evict()
        session = self._sessions[owner] = QQSession(self, owner, account_id, chat)
        return session

    def _admit(self, owner: str, account_id: int, chat: Chat) -> QQSession | None:
        """The session a new message goes to; None when MAX_SESSIONS are open and none of
        them is idle (the message is dropped: the sessions never grow past the bound)."""
        if owner not in self._sessions and len(self._sessions) >= MAX_SESSIONS:
            self._evict()
            if len(self._sessions) >= MAX_SESSIONS:
                now = time.monotonic()
                if now - self._full_logged >= 60:
                    self._full_logged = now
                    log.warning("qq.too_many_sessions", account=account_id, limit=MAX_SESSIONS)
                return None
        return self._session(owner, account_id, chat)

    def _evict(self) -> None:
        """Close the least recently used idle sessions until there is room for one more;
        looks at EVICT_SCAN of them at most (a busy one goes to the back of the line)."""
        for _ in range(min(EVICT_SCAN, len(self._sessions))):
            if len(self._sessions) < MAX_SESSIONS:
                return
            owner, session = next(iter(self._sessions.items()))
            if session.idle:
                self.outbox.detach(owner, session.writer)
                del self._sessions[owner]
            else:
                self._sessions.move_to_end(owner)

    def turn_slot(self, account_id: int) -> asyncio.Semaphore:
        """Held by a session while its turn runs: `max_active` per account at once."""
        slot = self._slots.get(account_id)
        if slot is None:
            slot = self._slots[account_id] = asyncio.Semaphore(self.config.max_active)
        return slot

    # ----- events -------------------------------------------------------------------------------

    def _on_event(self, account: QQAccount, event: Event) -> None:
        if isinstance(event, PrivateMessageEvent | GroupMessageEvent):
            self._message(account, event)
        elif isinstance(event, FriendRecallNotice | GroupRecallNotice):
            if self.dedupe is not None and account.self_id in self._claims:
                # Behind the account's message events still being claimed: the recalled
                # message may be one of them, and must be known when its recall is handled.
                self._claims.run(
                    account.self_id, self._recall_later(account, event), name="qq-recall-order"
                )
                return
            self.tasks.spawn(self._recalled(account, event), name="qq-recall")

    def _message(self, account: QQAccount, event: PrivateMessageEvent | GroupMessageEvent) -> None:
        self_id = account.self_id
        if event.user_id == self_id:
            return
        if event.time < time.time() - self.config.max_event_age:
            log.info("qq.event_too_old", account=self_id, message_id=event.message_id)
            return
        seen = (self_id, event.message_id)
        if seen in self._seen:
            log.info("qq.event_duplicate", account=self_id, message_id=event.message_id)
            return
        self._seen[seen] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        if self.dedupe is not None and len(self._claims) < MAX_CLAIMING:
            # In a cluster the same event may also reach another node (an implementation that
            # reconnected there replays it): the first node to claim it takes it. Claims of one
            # account are made in arrival order, so its messages stay in order. (Past
            # MAX_CLAIMING waiting, an event is taken unclaimed: a flood must not pile up.)
            self._claims.run(self_id, self._claimed(account, event), name="qq-event")
            return
        self._accept(account, event)

    async def _claimed(
        self, account: QQAccount, event: PrivateMessageEvent | GroupMessageEvent
    ) -> None:
        assert self.dedupe is not None
        key = f"qq:event:{account.self_id}:{event.message_id}"
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                first = await self.dedupe(key, self.config.max_event_age)
        except Exception as e:
            # Redis slow or out of reach: take it (a rare double answer beats silence, and the
            # account's next messages must not wait behind it).
            log.warning("qq.event_claim_failed", error=str(e) or type(e).__name__)
            first = True
        if event.time < time.time() - self.config.max_event_age:
            log.info("qq.event_too_old", account=account.self_id, message_id=event.message_id)
            return
        if not first:
            log.info(
                "qq.event_duplicate",
                account=account.self_id,
                message_id=event.message_id,
                where="cluster",
            )
            return
        self._accept(account, event)

    def _accept(self, account: QQAccount, event: PrivateMessageEvent | GroupMessageEvent) -> None:
        """A new message event: to its session, if it is for the bridge."""
        self_id = account.self_id
        if not self._allowed(event):
            return
        segments = list(event.message)
        name = event.sender.nickname or str(event.user_id)
        if isinstance(event, GroupMessageEvent):
            name = event.sender.card or name
            triggered, segments = strip_trigger(
                segments,
                self_id=self_id,
                prefixes=self.config.prefixes,
                nicknames=self.config.nicknames,
                reply_to_bot=False,
            )
            isolated = self.config.group_isolation == "member"
            owner = f"qq:{self_id}:g{event.group_id}" + (f":{event.user_id}" if isolated else "")
            chat = Chat("group", event.group_id)
        else:
            triggered = True
            owner = f"qq:{self_id}:u{event.user_id}"
            chat = Chat("private", event.user_id)
        plugins = self.sessions.plugins
        text = plain_text(segments).strip()
        parsed = parse_line(text, plugins.prefixes) if plugins is not None else None
        command = parsed is not None
        if (
            parsed is not None
            and plugins is not None
            and not triggered
            and plugins.commands.find(parsed[1]) is None
        ):
            return  # a group's other bot's command (with an @ of the account: the hint)
        quoted = reply_id(segments)
        if not (triggered or command or quoted is not None):
            return
        maybe = not (triggered or command)
        session = self._admit(owner, self_id, chat)
        if session is None:
            return
        # A quote that may not be for the bot counts once it is known to be (in the session).
        if not maybe and self.too_fast(self_id, event.user_id, session):
            return
        item = Input(
            qq_id=event.message_id,
            user_id=event.user_id,
            name=name,
            segments=[Segment.text(storable(text))] if command else segments,
            text=storable(to_model_text(segments).strip()),
            command=command,
            maybe=maybe,
            quoted=quoted,
        )
        session.offer(item)

    def _allowed(self, event: PrivateMessageEvent | GroupMessageEvent) -> bool:
        user = event.user_id
        if user in self._deny_users:
            return False
        if self._allow_users and user not in self._allow_users and user not in self._admins:
            return False
        if isinstance(event, GroupMessageEvent):
            group = event.group_id
            if group in self._deny_groups:
                return False
            if self._allow_groups and group not in self._allow_groups:
                return False
        return True

    def too_fast(self, account: int, user: int, session: QQSession) -> bool:
        """Whether ``user`` sent more than rate_per_minute messages (this one counted)."""
        key = (account, user)
        now = time.monotonic()
        hits = self._rates.get(key)
        if hits is None:
            hits = self._rates[key] = deque()
            if len(self._rates) > RATE_KEYS:
                self._rates.popitem(last=False)
        else:
            self._rates.move_to_end(key)
        while hits and hits[0] < now - 60:
            hits.popleft()
        if len(hits) >= self.config.rate_per_minute:
            if len(hits) == self.config.rate_per_minute:  # told once per minute
                hits.append(now)
                session.writer.say(TOO_FAST)
            log.info("qq.rate_limited", account=account, user=user)
            return True
        hits.append(now)
        return False

    async def _recall_later(
        self, account: QQAccount, notice: FriendRecallNotice | GroupRecallNotice
    ) -> None:
        # Its own task: a recall that waits on a turn must not hold up the account's claims.
        self.tasks.spawn(self._recalled(account, notice), name="qq-recall")

    async def _recalled(
        self, account: QQAccount, notice: FriendRecallNotice | GroupRecallNotice
    ) -> None:
        self_id = account.self_id
        if isinstance(notice, GroupRecallNotice):
            isolated = self.config.group_isolation == "member"
            owner = f"qq:{self_id}:g{notice.group_id}" + (f":{notice.user_id}" if isolated else "")
        else:
            owner = f"qq:{self_id}:u{notice.user_id}"
        session = self._sessions.get(owner)
        if session is not None and session.withdraw(notice.message_id):
            log.info("qq.withdrawn", session=owner, qq_id=notice.message_id)
            return
        found = await self.storage.qq.find(self_id, notice.message_id)
        if found is None or found[1]:
            return  # not something the bridge took, or one of its own messages recalled
        try:
            await self.sessions.recall(UserRef(owner), found[0])
        except BridgeError as e:
            if e.code != ErrorCode.NOT_FOUND:
                log.warning("qq.recall_failed", session=owner, reason=e.reason)
            return
        log.info("qq.recalled", session=owner, message_id=found[0])

    # ----- what a session asks of the edge ------------------------------------------------------

    async def replies_to_bot(self, account_id: int, quoted: str | None) -> bool:
        """Whether the quoted message is one the bridge sent (its own record, else QQ's)."""
        if quoted is None or not quoted.lstrip("-").isdigit():
            return False
        found = await self.storage.qq.find(account_id, int(quoted))
        if found is not None:
            return found[1]
        message = await self._get_msg(account_id, quoted)
        sender = (message or {}).get("sender") or {}
        return str(sender.get("user_id", "")) == str(account_id)

    async def quoted_context(self, account_id: int, quoted: str) -> str:
        message = await self._get_msg(account_id, quoted)
        if not message:
            return ""
        from adapters.onebot.message import MessageError, normalize_message

        try:
            segments = normalize_message(message.get("message", []))
        except MessageError:
            return ""
        sender = message.get("sender") or {}
        name = str(sender.get("card") or sender.get("nickname") or sender.get("user_id") or "?")
        text = to_model_text([s for s in segments if s.type != "reply"]).strip()
        return quote_context(name, text) if text else ""

    async def _get_msg(self, account_id: int, qq_id: str) -> dict[str, Any] | None:
        try:
            wait = min(GET_MSG_WAIT, self.config.action_timeout)
            data = await self.call(account_id, "get_msg", {"message_id": int(qq_id)}, wait)
        except (BridgeError, ValueError) as e:
            log.info("qq.get_msg_failed", account=account_id, qq_id=qq_id, reason=str(e))
            return None
        return data if isinstance(data, dict) else None

    async def purge_links(self) -> None:
        gone = await self.storage.qq.purge(time.time() - LINK_DAYS * 86400)
        if gone:
            log.info("housekeeping.qq_links_purged", count=gone)
