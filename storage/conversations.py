"""Which external chat (e.g. a MomoHub chat id) backs each (user, contact, thread)."""

from __future__ import annotations

import time

from storage.db import Database


class ConversationRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str, contact: str, thread: str) -> str | None:
        async with self._db.conn.execute(
            "SELECT external_id FROM conversations WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row is not None else None

    async def set(self, user_id: str, contact: str, thread: str, external_id: str) -> None:
        await self._db.conn.execute(
            "INSERT OR REPLACE INTO conversations (user_id, contact, thread, external_id, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (user_id, contact, thread, external_id, time.time()),
        )
        await self._db.conn.commit()

    async def forget(self, user_id: str, contact: str, thread: str) -> None:
        await self._db.conn.execute(
            "DELETE FROM conversations WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        )
        await self._db.conn.commit()

    async def count(self, user_id: str) -> int:
        async with self._db.conn.execute(
            "SELECT COUNT(*) FROM conversations WHERE user_id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
