"""Hub users: who has logged in, and the stable numeric id each one has on the OneBot side."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage.sql import Execute, FetchOne, Unit, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase

INT32_MAX = 2**31 - 1
# Numbers below this are left for ids that clients choose themselves (numeric mio-chat ids);
# mapped ids for non-numeric users are drawn above it so the two never collide in practice.
MAPPED_FLOOR = 1_000_000_000


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    is_admin: bool
    first_seen: float
    last_seen: float


class UserRepo:
    def __init__(self, db: Database | PostgresDatabase, reserved: Iterable[int | str] = ()) -> None:
        self._db = db
        self._reserved: set[int] = set()
        # One allocation at a time: two first messages from one user (two tabs) must agree.
        self._allocating = asyncio.Lock()
        self.reserve(*reserved)

    def reserve(self, *numbers: int | str) -> None:
        """Numbers that stand for the bridge's own identities (``auth.admin_qq``, ``auth.bot_qq``,
        each framework link's ``self_id``): never any hub user's number, whatever their id."""
        self._reserved.update(int(n) for n in numbers)

    @property
    def reserved(self) -> frozenset[int]:
        return frozenset(self._reserved)

    def is_reserved(self, number: int) -> bool:
        return number in self._reserved

    async def touch(self, user_id: str, is_admin: bool) -> None:
        now = time.time()
        await self._db.unit(
            single(
                Execute(
                    "INSERT INTO users (id, is_admin, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET is_admin = excluded.is_admin, "
                    "last_seen = excluded.last_seen",
                    (user_id, int(is_admin), now, now),
                )
            )
        )

    async def get(self, user_id: str) -> UserRow | None:
        row = await self._db.fetchone(
            "SELECT id, is_admin, first_seen, last_seen FROM users WHERE id = ?", (user_id,)
        )
        if row is None:
            return None
        return UserRow(row[0], bool(row[1]), row[2], row[3])

    async def number_for(self, user_id: str) -> int:
        """A stable positive int32 for a user: canonical numeric ids as they are (when free and
        not reserved), others mapped. Every number handed out is recorded, so no two users ever
        share one, and concurrent first calls for one user all get the same number."""
        number = await self._recorded(user_id)
        if number is not None and number not in self._reserved:
            return number
        async with self._allocating:
            # One unit: a concurrent call may have just made the number (read again), and a
            # number given up (reserved since) goes in the same transaction as the new one.
            return await self._db.unit(_allocate(user_id, frozenset(self._reserved)))

    async def _recorded(self, user_id: str) -> int | None:
        row = await self._db.fetchone(
            "SELECT number FROM user_numbers WHERE user_id = ?", (user_id,)
        )
        return int(row[0]) if row is not None else None

    async def list(self, limit: int = 1000) -> list[UserRow]:
        rows = await self._db.fetch(
            "SELECT id, is_admin, first_seen, last_seen FROM users ORDER BY last_seen DESC LIMIT ?",
            (int(limit),),
        )
        return [UserRow(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    async def admins(self) -> list[str]:
        rows = await self._db.fetch("SELECT id FROM users WHERE is_admin = 1")
        return [str(r[0]) for r in rows]

    async def user_for_number(self, number: int) -> str | None:
        """The hub user a number stands for; None for a reserved number (it is the bridge's)."""
        if number in self._reserved:
            return None
        row = await self._db.fetchone(
            "SELECT user_id FROM user_numbers WHERE number = ?", (int(number),)
        )
        if row is not None:
            return str(row[0])
        if 0 < number <= INT32_MAX and await self.get(str(number)) is not None:
            return str(number)
        return None


def _allocate(user_id: str, reserved: frozenset[int]) -> Unit[int]:
    number = yield from _number_of(user_id)
    if number is not None:
        if number not in reserved:
            return number
        # Given out before it was reserved (an older bridge, or auth.admin_qq changed):
        # it stands for the bridge now, so this user moves to a number of their own.
        yield Execute("DELETE FROM user_numbers WHERE user_id = ?", (user_id,))
    # Only the canonical spelling keeps its value: "0123" must not become user "123".
    if user_id.isdigit() and str(int(user_id)) == user_id and 0 < int(user_id) <= INT32_MAX:
        own = int(user_id)
        if own not in reserved:
            number = yield from _claim(own, user_id, reserved)
            if number is not None:
                return number
    # Start from a hash so the same id tends to get the same number on a fresh database,
    # then probe linearly past numbers already given out.
    span = INT32_MAX - MAPPED_FLOOR
    candidate = MAPPED_FLOOR + zlib.crc32(user_id.encode()) % span
    while True:
        if candidate not in reserved:
            # A user whose id is this very number, known but not yet numbered, keeps
            # first claim.
            known = yield FetchOne("SELECT 1 FROM users WHERE id = ?", (str(candidate),))
            if known is None:
                number = yield from _claim(candidate, user_id, reserved)
                if number is not None:
                    return number
        candidate = MAPPED_FLOOR + (candidate - MAPPED_FLOOR + 1) % span


def _number_of(user_id: str) -> Unit[int | None]:
    row = yield FetchOne("SELECT number FROM user_numbers WHERE user_id = ?", (user_id,))
    return int(row[0]) if row is not None else None


def _claim(number: int, user_id: str, reserved: frozenset[int]) -> Unit[int | None]:
    """Record ``number`` for the user unless it is taken; the user's number if it now has one
    (this or, when another connection won a race, that one), else None."""
    # No conflict target: a number taken and a user already numbered both leave it undone.
    inserted = yield Execute(
        "INSERT INTO user_numbers (number, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (number, user_id),
    )
    if inserted == 1:
        return number
    mine = yield from _number_of(user_id)
    return mine if mine is not None and mine not in reserved else None
