"""The QQ account the bridge plays towards a bot framework: whose number is whose, and delivery
of a reply to the hub users a number stands for.

Hub users are the account's friends; in group mode each user also has a two-member group whose
number equals the user's own.

Identities: only a hub admin (logged in with the admin code) appears as ``auth.admin_qq``, and
only the bridge itself as ``auth.bot_qq`` / a link's ``self_id``. These numbers are reserved in
storage, so a hub user whose id happens to be one of them gets a mapped number instead, and a
reply to ``admin_qq`` reaches the admins only.
"""

from __future__ import annotations

from typing import Any

from adapters.onebot import protocol as P
from bridge.config import Config
from bridge.outbox import Outbox, send_from_contact
from storage import Storage


def reserved_numbers(config: Config) -> set[int]:
    """The QQ numbers that are the bridge's own identities, never a hub user's."""
    numbers = {int(config.auth.admin_qq), int(config.auth.bot_qq)}
    numbers.update(int(link.self_id) for link in config.onebot.frameworks if link.self_id)
    return numbers


class ActionFailed(Exception):
    def __init__(self, retcode: int, message: str) -> None:
        super().__init__(message)
        self.retcode = retcode
        self.message = message


class NumberBook:
    """Hub user ↔ QQ number, remembered: storage never changes a number once given out, and
    every event and reply needs one (it was a third of the database round trips per message)."""

    LIMIT = 100_000  # past this many users the book starts afresh rather than grow forever

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._numbers: dict[str, int] = {}
        self._users: dict[int, str] = {}

    def _remember(self, user_id: str, number: int) -> None:
        if len(self._numbers) >= self.LIMIT:
            self._numbers.clear()
            self._users.clear()
        self._numbers[user_id] = number
        self._users[number] = user_id

    async def number_for(self, user_id: str) -> int:
        number = self._numbers.get(user_id)
        if number is not None and self._storage.users.is_reserved(number):
            number = None  # reserved since (a QQ account linked): the user gets another
        if number is None:
            number = await self._storage.users.number_for(user_id)
            self._remember(user_id, number)
        return number

    async def user_for_number(self, number: int) -> str | None:
        user = self._users.get(number)
        if user is None:
            user = await self._storage.users.user_for_number(number)
            if user is not None:
                self._remember(user, number)
        return user


class Account:
    """One link's view of the account: its own ``self_id`` and everyone else's numbers."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        outbox: Outbox,
        self_id: int,
        numbers: NumberBook | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.numbers = numbers or NumberBook(storage)
        self.outbox = outbox
        self.self_id = self_id
        self.nickname = config.server.title
        # Read defensively: a number in the config may be an int or a numeric string.
        self.contact = str(config.auth.bot_qq)
        self.admin_qq = int(config.auth.admin_qq)
        storage.users.reserve(*reserved_numbers(config), self_id)

    async def number_of(self, user_id: str, is_admin: bool) -> int:
        """A hub user's QQ number: ``admin_qq`` for an admin only, for anyone else their own
        number (never a reserved one, even for a user whose id is ``admin_qq`` itself)."""
        if is_admin:
            return self.admin_qq
        return await self.numbers.number_for(user_id)

    async def users_for(self, number: int) -> list[str]:
        """The hub users a QQ number stands for: ``admin_qq`` every admin and nobody else, any
        other number exactly the one user it was given to."""
        if number == self.admin_qq:
            admins = await self.storage.users.admins()
            if not admins:
                raise ActionFailed(
                    P.RetCode.BAD_PARAMS, f"user_id {number} is the admin, who has not logged in"
                )
            return admins
        if number in self.storage.users.reserved:
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"user_id {number} is the bot account itself, not a friend"
            )
        user = await self.numbers.user_for_number(number)
        if user is None:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown user_id {number}: no such friend")
        return [user]

    async def deliver_to(self, number: int, segments: list[dict[str, Any]]) -> int:
        users = await self.users_for(number)
        first_id = 0
        for user in users:
            message_id = await send_from_contact(
                self.storage.messages,
                self.outbox,
                user,
                self.contact,
                segments,
                sender_name=self.nickname,
            )
            first_id = first_id or message_id
        return first_id
