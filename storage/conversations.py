"""Which external chat (e.g. a MomoHub chat id) backs each (user, contact, thread)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from storage.sql import Execute, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase


# Upserts with REPLACE's semantics: the old row goes, so what the insert does not name is back
# to its default (a new upstream chat has no anchor yet).
_SET = (
    "INSERT INTO conversations (user_id, contact, thread, external_id, created) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, contact, thread) DO UPDATE SET "
    "external_id = excluded.external_id, created = excluded.created, "
    "anchor_id = NULL, anchor_at = NULL"
)
_SET_INSTRUCTIONS = (
    "INSERT INTO conversation_instructions (user_id, contact, thread, text, updated) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, contact, thread) DO UPDATE SET "
    "text = excluded.text, updated = excluded.updated"
)


class ConversationRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db

    async def get(self, user_id: str, contact: str, thread: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT external_id FROM conversations WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        )
        return str(row[0]) if row is not None else None

    async def set(self, user_id: str, contact: str, thread: str, external_id: str) -> None:
        await self._db.unit(
            single(Execute(_SET, (user_id, contact, thread, external_id, time.time())))
        )

    async def forget(self, user_id: str, contact: str, thread: str) -> None:
        await self._db.unit(
            single(
                Execute(
                    "DELETE FROM conversations WHERE user_id = ? AND contact = ? AND thread = ?",
                    (user_id, contact, thread),
                )
            )
        )

    async def count(self, user_id: str) -> int:
        """Conversations the user opened by name (threads other than each contact's default):
        the default conversation with each contact is bounded by the contacts themselves.
        A model conversation's reset mark is not an upstream chat and is not counted."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM conversations WHERE user_id = ? AND thread != 'default' "
            "AND contact NOT LIKE 'model:%'",
            (user_id,),
        )
        return int(row[0]) if row else 0

    async def anchor(self, user_id: str, contact: str, thread: str) -> tuple[str, str] | None:
        """(id, created-at ISO text) of the newest upstream message of a settled turn."""
        row = await self._db.fetchone(
            "SELECT anchor_id, anchor_at FROM conversations "
            "WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        )
        if row is None or row[0] is None:
            return None
        return str(row[0]), str(row[1] or "")

    async def set_anchor(
        self, user_id: str, contact: str, thread: str, anchor_id: str, anchor_at: str
    ) -> None:
        await self._db.unit(
            single(
                Execute(
                    "UPDATE conversations SET anchor_id = ?, anchor_at = ? "
                    "WHERE user_id = ? AND contact = ? AND thread = ?",
                    (anchor_id, anchor_at, user_id, contact, thread),
                )
            )
        )

    async def instructions(self, user_id: str, contact: str, thread: str) -> str | None:
        """The conversation's own instructions (its persona), if it has any."""
        row = await self._db.fetchone(
            "SELECT text FROM conversation_instructions "
            "WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        )
        return str(row[0]) if row is not None else None

    async def set_instructions(
        self, user_id: str, contact: str, thread: str, text: str | None
    ) -> None:
        """Store (or, with None, remove) the conversation's instructions."""
        if text is None:
            statement = Execute(
                "DELETE FROM conversation_instructions "
                "WHERE user_id = ? AND contact = ? AND thread = ?",
                (user_id, contact, thread),
            )
        else:
            statement = Execute(_SET_INSTRUCTIONS, (user_id, contact, thread, text, time.time()))
        await self._db.unit(single(statement))
