"""The bot account as a contact: hub messages to `auth.bot_qq` go to every linked bot framework.

Replies come back later as actions on the link (see framework_actions) and reach the user as
pushes, so `deliver` returns no stream.

In a cluster each link runs on the one node holding its lease, and the other nodes relay their
users' messages to it (see link_owner).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog

from adapters.onebot import protocol as P
from adapters.onebot.framework_actions import FrameworkActions, NumberBook
from adapters.onebot.framework_link import FrameworkLink, safe_url
from adapters.onebot.segments import to_onebot
from bridge.config import Config
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ChatMessage, Contact, RecallRequest, ReplyEvent, Segment, UserRef
from bridge.outbox import Outbox
from storage import Storage

if TYPE_CHECKING:
    from adapters.onebot.link_owner import ClusterLinks
    from bridge.cluster.node import ClusterNode

log = structlog.get_logger(__name__)


class FrameworkTarget:
    # The `target` label of its replies in /metrics.
    metrics_kind = "framework"
    # The event carries the stored id: the framework quotes, fetches and recalls by it.
    replies_need_message_id = True
    # Its answers come back later as pushes of their own, not as a stream on the request.
    replies_stream = False
    # Readiness: (component, state, detail); set by the app, called on every link change.
    health: Callable[[str, str, str], None] | None = None

    def __init__(
        self, config: Config, storage: Storage, outbox: Outbox, cluster: ClusterNode | None = None
    ) -> None:
        self._config = config
        self._storage = storage
        # Read defensively: a number in the config may be an int or a numeric string.
        self.contact = str(config.auth.bot_qq)
        self._changed = asyncio.Event()
        self._numbers = NumberBook(storage)  # one book for every link: they share the users
        self._links: list[FrameworkLink] = []
        seen: set[tuple[str, int]] = set()
        for link_cfg in config.onebot.frameworks:
            self_id = int(link_cfg.self_id or self.contact)
            if (link_cfg.url, self_id) in seen:
                # Two links to one framework as one account would answer every message twice.
                log.warning("onebot.duplicate_framework_ignored", url=safe_url(link_cfg.url))
                continue
            seen.add((link_cfg.url, self_id))
            actions = FrameworkActions(config, storage, outbox, self_id, self._numbers)
            self._links.append(FrameworkLink(link_cfg, self_id, actions.prepare, self._notify))
        # Also reserves admin_qq, bot_qq and every link's self_id: no hub user is given them.
        self._actions = FrameworkActions(config, storage, outbox, int(self.contact), self._numbers)
        # In a cluster each link runs on one node at a time (see link_owner); None without one.
        self.cluster: ClusterLinks | None = None
        if cluster is not None:
            from adapters.onebot.link_owner import ClusterLinks

            self.cluster = ClusterLinks(cluster, self._links, self._notify)

    async def start(self) -> None:
        """Start one connector per framework; returns at once (links connect in the background).
        In a cluster, a link starts once this node holds its lease."""
        if self.cluster is not None:
            await self.cluster.start()
            return
        for link in self._links:
            link.start()

    async def close(self) -> None:
        if self.cluster is not None:
            # Each link is down before its lease is released: a standby may dial right after.
            await self.cluster.close()  # which closes the links
            return
        await asyncio.gather(*(link.close() for link in self._links))

    @property
    def links(self) -> list[FrameworkLink]:
        return list(self._links)

    def connected_count(self) -> int:
        return sum(1 for link in self._links if link.connected)

    def report_links(self) -> None:
        """Each link's state as `framework:<url>`: ok while linked, else why not."""
        report = self.health
        if report is None:
            return
        for link in self._links:
            if self.cluster is not None and not self.cluster.owner(link).holding:
                # A standby is healthy while another node holds the link.
                ok, why = self.cluster.state(link)
                report(f"framework:{link.name}", "ok" if ok else "disconnected", why)
                continue
            why = "" if link.connected else link.last_error or "not linked yet"
            report(f"framework:{link.name}", "ok" if link.connected else "disconnected", why)

    def _notify(self) -> None:
        self.report_links()
        # Wake every waiter; each re-checks the count (an Event is settable from sync code).
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, n: int = 1) -> None:
        """Until ``n`` links are up (no deadline of its own: callers wrap it in a timeout)."""
        while self.connected_count() < n:
            await self._changed.wait()

    # ----- ContactTarget ------------------------------------------------------------------------

    def owns(self, contact: str) -> bool:
        return contact == self.contact

    def canonical(self, contact: str) -> str:
        return contact

    def contacts(self, user: UserRef) -> list[Contact]:
        return [Contact(id=self.contact, kind="onebot", name=self._config.server.title)]

    async def check_available(self, contact: str) -> None:
        if self.connected_count():
            return
        if self.cluster is not None and await self.cluster.available():
            return  # linked on another node: deliver relays the message there
        reasons = "; ".join(f"{link.name}: {self._why_down(link)}" for link in self._links)
        raise BridgeError(ErrorCode.UNAVAILABLE, f"no bot framework is connected ({reasons})")

    def _why_down(self, link: FrameworkLink) -> str:
        if self.cluster is not None and not self.cluster.owner(link).holding:
            return self.cluster.state(link)[1]
        return link.last_error or "connecting"

    async def _event(self, user: UserRef, message_id: int, segments: list[Segment]) -> dict:
        number = await self._actions.number_of(user.id, user.is_admin)
        segs = to_onebot(segments, forward_id=message_id)
        now = int(time.time())
        nickname = user.name or user.id
        if self._config.onebot.user_message_type == "group":
            # Frameworks that ignore non-friends still answer an @ in a group.
            segs = [Segment("at", {"qq": self.contact}), Segment.text(" "), *segs]
            group_id = await self._numbers.number_for(user.id)
            return P.group_message_event(
                int(self.contact),
                number,
                message_id,
                segs,
                nickname,
                now,
                group_id=group_id,
                role="owner" if user.is_admin else "member",
            )
        return P.private_message_event(int(self.contact), number, message_id, segs, nickname, now)

    async def _send(self, link: FrameworkLink, event: dict) -> tuple[bool, str]:
        if self.cluster is not None:
            return await self.cluster.send(link, event)  # here, or relayed to the holder
        # Each framework may know the account under its own self_id.
        return await link.send_event(dict(event, self_id=link.self_id)), ""

    async def _broadcast(self, event: dict) -> tuple[int, list[str]]:
        """(links that took the event, why the others did not)."""
        # Concurrently: one framework that is slow to read must not hold up the others.
        results = await asyncio.gather(*(self._send(link, event) for link in self._links))
        reasons = [why for ok, why in results if not ok and why]
        return sum(1 for ok, _ in results if ok), reasons

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent] | None:
        event = await self._event(message.sender, message.message_id, message.segments)
        sent, reasons = await self._broadcast(event)
        if not sent:
            # Every link dropped between check_available and now. Say so rather than ack a
            # message nobody will answer; the stored copy is withdrawn so a resend is not a dupe.
            await self._storage.messages.mark_deleted(message.message_id)
            log.warning("onebot.not_delivered", message_id=message.message_id, reasons=reasons)
            text = "the bot framework disconnected; send the message again"
            if reasons:  # in a cluster: where the link is, and what went wrong there
                why = "; ".join(reasons)
                text = f"the bot framework did not get the message ({why}); send it again"
            raise BridgeError(ErrorCode.UNAVAILABLE, text)
        return None

    async def recall(self, request: RecallRequest) -> None:
        user, message_id, outgoing = request.user, request.message_id, request.outgoing
        number = await self._actions.number_of(user.id, user.is_admin)
        if self._config.onebot.user_message_type == "group":
            group_id = await self._numbers.number_for(user.id)
            # The hub user recalled it, whoever wrote it (a user may recall the bot's reply).
            operator = number
            author = int(self.contact) if outgoing else number
            event = P.group_recall_notice(int(self.contact), group_id, author, operator, message_id)
        else:
            event = P.friend_recall_notice(
                int(self.contact), int(self.contact) if outgoing else number, message_id
            )
        sent, _ = await self._broadcast(event)
        if not sent:
            # The hub still recalls it; Sessions logs this so the gap is visible.
            raise BridgeError(
                ErrorCode.UNAVAILABLE, "no bot framework is connected to hear the recall"
            )
