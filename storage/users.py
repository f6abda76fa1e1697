"""Hub users: who has logged in, and the stable numeric id each one has on the OneBot side."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

from storage.db import Database

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
    def __init__(self, db: Database) -> None:
        self._db = db

    async def touch(self, user_id: str, is_admin: bool) -> None:
        now = time.time()
        await self._db.conn.execute(
            "INSERT INTO users (id, is_admin, first_seen, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET is_admin = excluded.is_admin, last_seen = excluded.last_seen",
            (user_id, int(is_admin), now, now),
        )
        await self._db.conn.commit()

    async def get(self, user_id: str) -> UserRow | None:
        async with self._db.conn.execute(
            "SELECT id, is_admin, first_seen, last_seen FROM users WHERE id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return UserRow(row[0], bool(row[1]), row[2], row[3])

    async def number_for(self, user_id: str) -> int:
        """A stable positive int32 for a user: canonical numeric ids as they are (when free),
        others mapped. Every number handed out is recorded, so no two users ever share one."""
        async with self._db.conn.execute(
            "SELECT number FROM user_numbers WHERE user_id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        # Only the canonical spelling keeps its value: "0123" must not become user "123".
        if user_id.isdigit() and str(int(user_id)) == user_id and 0 < int(user_id) <= INT32_MAX:
            if not await self._taken(int(user_id)):
                await self._record(int(user_id), user_id)
                return int(user_id)
        # Start from a hash so the same id tends to get the same number on a fresh database,
        # then probe linearly past numbers already given out.
        span = INT32_MAX - MAPPED_FLOOR
        candidate = MAPPED_FLOOR + zlib.crc32(user_id.encode()) % span
        while await self._taken(candidate) or await self._reserved_numeric(candidate):
            candidate = MAPPED_FLOOR + (candidate - MAPPED_FLOOR + 1) % span
        await self._record(candidate, user_id)
        return candidate

    async def _taken(self, number: int) -> bool:
        async with self._db.conn.execute(
            "SELECT 1 FROM user_numbers WHERE number = ?", (number,)
        ) as cur:
            return await cur.fetchone() is not None

    async def _reserved_numeric(self, number: int) -> bool:
        # A user whose id is this very number, known but not yet numbered, keeps first claim.
        return await self.get(str(number)) is not None

    async def _record(self, number: int, user_id: str) -> None:
        await self._db.conn.execute(
            "INSERT INTO user_numbers (number, user_id) VALUES (?, ?)", (number, user_id)
        )
        await self._db.conn.commit()

    async def list(self, limit: int = 1000) -> list[UserRow]:
        async with self._db.conn.execute(
            "SELECT id, is_admin, first_seen, last_seen FROM users ORDER BY last_seen DESC LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [UserRow(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    async def admins(self) -> list[str]:
        async with self._db.conn.execute("SELECT id FROM users WHERE is_admin = 1") as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def user_for_number(self, number: int) -> str | None:
        async with self._db.conn.execute(
            "SELECT user_id FROM user_numbers WHERE number = ?", (number,)
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return str(row[0])
        if 0 < number <= INT32_MAX and await self.get(str(number)) is not None:
            return str(number)
        return None
