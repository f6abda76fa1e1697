"""Web-client replies (the Socket.IO client's `llm` streams) kept until the client confirms it
has stored them.

A reply is written when it starts (status ``streaming``) and again when it ends; the client's
`ack_message` deletes it. A reply still ``streaming`` when the bridge starts was cut short by a
stop or a crash: `interrupted` turns it into a failure, so the client is told rather than left
waiting. Each user keeps at most ``limit`` replies: past that the oldest go, so a client that
never confirms cannot grow the table without bound; and a reply nobody came back for within
`REPLY_TTL` is deleted by the housekeeping (users are many and come and go).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from storage.db import Database, write_one

REPLY_TTL = 7 * 86400.0


@dataclass(slots=True)
class StoredReply:
    user_id: str
    message_id: str
    contactor_id: str
    status: str  # streaming | completed | failed
    chunks: list[dict[str, Any]]
    error: Any
    meta: dict[str, Any]
    updated: float


class ClientReplyRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(self, reply: StoredReply, limit: int) -> None:
        """Insert or replace ``reply`` (a retry reuses its message id); trim the user's oldest
        beyond ``limit``."""
        row = (
            reply.user_id,
            reply.message_id,
            reply.contactor_id,
            reply.status,
            json.dumps(reply.chunks, ensure_ascii=False),
            None if reply.error is None else json.dumps(reply.error, ensure_ascii=False),
            json.dumps(reply.meta, ensure_ascii=False),
            reply.updated or time.time(),
        )

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO client_replies (user_id, message_id, contactor_id, "
                    "status, chunks, error, meta, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                conn.execute(
                    "DELETE FROM client_replies WHERE user_id = ? AND message_id IN ("
                    "SELECT message_id FROM client_replies WHERE user_id = ? "
                    "ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                    (reply.user_id, reply.user_id, limit),
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

        await self._db.run(write)

    async def of_contactor(self, user_id: str, contactor_id: str) -> list[StoredReply]:
        async with self._db.conn.execute(
            "SELECT user_id, message_id, contactor_id, status, chunks, error, meta, updated "
            "FROM client_replies WHERE user_id = ? AND contactor_id = ? ORDER BY updated",
            (user_id, contactor_id),
        ) as cur:
            rows = await cur.fetchall()
        return [_reply(r) for r in rows]

    async def contactors(self, user_id: str) -> list[str]:
        """The user's contactors with replies waiting, oldest first."""
        async with self._db.conn.execute(
            "SELECT contactor_id, MIN(updated) AS first FROM client_replies WHERE user_id = ? "
            "GROUP BY contactor_id ORDER BY first",
            (user_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def delete(self, user_id: str, message_id: str) -> bool:
        n = await self._db.run(
            lambda conn: write_one(
                conn,
                "DELETE FROM client_replies WHERE user_id = ? AND message_id = ?",
                (user_id, message_id),
            )
        )
        return n > 0

    async def expire(self, older_than: float) -> int:
        """Delete replies started before ``older_than`` (their client never came back)."""
        return await self._db.run(
            lambda conn: write_one(
                conn, "DELETE FROM client_replies WHERE updated < ?", (older_than,)
            )
        )

    async def interrupted(self, error: Any) -> int:
        """Mark every reply still streaming as failed with ``error`` (at start-up: whatever ran
        them is gone). Returns how many."""
        text = json.dumps(error, ensure_ascii=False)
        return await self._db.run(
            lambda conn: write_one(
                conn,
                "UPDATE client_replies SET status = 'failed', error = ?, updated = ? "
                "WHERE status = 'streaming'",
                (text, time.time()),
            )
        )


def _reply(r: Any) -> StoredReply:
    return StoredReply(
        user_id=str(r[0]),
        message_id=str(r[1]),
        contactor_id=str(r[2]),
        status=str(r[3]),
        chunks=json.loads(r[4]),
        error=None if r[5] is None else json.loads(r[5]),
        meta=json.loads(r[6]),
        updated=float(r[7]),
    )
