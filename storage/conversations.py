"""Which external chat (e.g. a MomoHub chat id) backs each (user, contact, thread)."""

from __future__ import annotations

import time

from storage.db import Database, write_one


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
        """Conversations the user opened by name (threads other than each contact's default):
        the default conversation with each contact is bounded by the contacts themselves.
        A model conversation's reset mark is not an upstream chat and is not counted."""
        async with self._db.conn.execute(
            "SELECT COUNT(*) FROM conversations WHERE user_id = ? AND thread != 'default' "
            "AND contact NOT LIKE 'model:%'",
            (user_id,),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def anchor(self, user_id: str, contact: str, thread: str) -> tuple[str, str] | None:
        """(id, created-at ISO text) of the newest upstream message of a settled turn."""
        async with self._db.conn.execute(
            "SELECT anchor_id, anchor_at FROM conversations "
            "WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]), str(row[1] or "")

    async def set_anchor(
        self, user_id: str, contact: str, thread: str, anchor_id: str, anchor_at: str
    ) -> None:
        await self._db.run(
            lambda conn: write_one(
                conn,
                "UPDATE conversations SET anchor_id = ?, anchor_at = ? "
                "WHERE user_id = ? AND contact = ? AND thread = ?",
                (anchor_id, anchor_at, user_id, contact, thread),
            )
        )

    async def instructions(self, user_id: str, contact: str, thread: str) -> str | None:
        """The conversation's own instructions (its persona), if it has any."""
        async with self._db.conn.execute(
            "SELECT text FROM conversation_instructions "
            "WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row is not None else None

    async def set_instructions(
        self, user_id: str, contact: str, thread: str, text: str | None
    ) -> None:
        """Store (or, with None, remove) the conversation's instructions."""
        if text is None:
            sql = (
                "DELETE FROM conversation_instructions "
                "WHERE user_id = ? AND contact = ? AND thread = ?"
            )
            params: tuple[object, ...] = (user_id, contact, thread)
        else:
            sql = (
                "INSERT OR REPLACE INTO conversation_instructions "
                "(user_id, contact, thread, text, updated) VALUES (?, ?, ?, ?, ?)"
            )
            params = (user_id, contact, thread, text, time.time())
        await self._db.run(lambda conn: write_one(conn, sql, params))
