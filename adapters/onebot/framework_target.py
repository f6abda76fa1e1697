"""The bot account as a contact: hub messages to `auth.bot_qq` go to every linked bot framework.

Replies come back later as actions on the link (see framework_actions) and reach the user as
pushes, so `deliver` returns no stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog

from adapters.onebot import protocol as P
from adapters.onebot.framework_actions import FrameworkActions
from adapters.onebot.framework_link import FrameworkLink
from adapters.onebot.segments import to_onebot
from bridge.config import Config
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ChatMessage, Contact, ReplyEvent, Segment, UserRef
from bridge.outbox import Outbox
from storage import Storage

log = structlog.get_logger(__name__)


class FrameworkTarget:
    def __init__(self, config: Config, storage: Storage, outbox: Outbox) -> None:
        self._config = config
        self._storage = storage
        self.contact = config.auth.bot_qq
        self._changed = asyncio.Event()
        self._links: list[FrameworkLink] = []
        for link_cfg in config.onebot.frameworks:
            self_id = int(link_cfg.self_id or config.auth.bot_qq)
            actions = FrameworkActions(config, storage, outbox, self_id)
            self._links.append(FrameworkLink(link_cfg, self_id, actions.handle, self._notify))
        self._actions = FrameworkActions(config, storage, outbox, int(config.auth.bot_qq))

    async def start(self) -> None:
        for link in self._links:
            link.start()

    async def close(self) -> None:
        for link in self._links:
            await link.close()

    def connected_count(self) -> int:
        return sum(1 for link in self._links if link.connected)

    def _notify(self) -> None:
        # Wake every waiter; each re-checks the count (an Event is settable from sync code).
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, n: int = 1) -> None:
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
        if not self.connected_count():
            reasons = "; ".join(
                f"{link.config.url}: {link.last_error or 'connecting'}" for link in self._links
            )
            raise BridgeError(ErrorCode.UNAVAILABLE, f"no bot framework is connected ({reasons})")

    async def _event(self, user: UserRef, message_id: int, segments: list[Segment]) -> dict:
        number = await self._actions.number_of(user.id, user.is_admin)
        segs = to_onebot(segments, forward_id=message_id)
        now = int(time.time())
        if self._config.onebot.user_message_type == "group":
            # Frameworks that ignore non-friends still answer an @ in a group.
            segs = [Segment("at", {"qq": self.contact}), Segment.text(" "), *segs]
            group_id = await self._storage.users.number_for(user.id)
            return P.group_message_event(
                int(self.contact),
                number,
                message_id,
                segs,
                user.id,
                now,
                group_id=group_id,
                role="owner" if user.is_admin else "member",
            )
        return P.private_message_event(int(self.contact), number, message_id, segs, user.id, now)

    async def _broadcast(self, event: dict) -> int:
        sent = 0
        for link in self._links:
            # Each framework may know the account under its own self_id.
            ev = dict(event, self_id=link.self_id)
            if await link.send_event(ev):
                sent += 1
        return sent

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent] | None:
        event = await self._event(message.sender, message.message_id, message.segments)
        if not await self._broadcast(event):
            log.warning("onebot.not_delivered", message_id=message.message_id)
        return None

    async def recall(
        self, user: UserRef, contact: str, message_id: int, segments: list[Segment], outgoing: bool
    ) -> None:
        number = await self._actions.number_of(user.id, user.is_admin)
        if self._config.onebot.user_message_type == "group":
            group_id = await self._storage.users.number_for(user.id)
            operator = number if not outgoing else int(self.contact)
            author = int(self.contact) if outgoing else number
            event = P.group_recall_notice(int(self.contact), group_id, author, operator, message_id)
        else:
            event = P.friend_recall_notice(
                int(self.contact), int(self.contact) if outgoing else number, message_id
            )
        await self._broadcast(event)
