"""Pushes waiting for a user who has no live connection, kept in order until delivered."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from storage.db import Database, write_one


class OutboxRepo:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._last_id = 0

    def next_id(self) -> int:
        # Seeded from the clock so ids stay unique across restarts (stored pushes keep theirs).
        self._last_id = max(self._last_id + 1, int(time.time() * 1000))
        return self._last_id

    async def push(self, user_id: str, frame: dict[str, Any], limit: int) -> tuple[int, int]:
        """Append a frame; trim the oldest beyond ``limit``.

        Returns the frame's seq (increasing for each user, never reused) and how many were
        dropped to make room.
        """
        text = json.dumps(frame, ensure_ascii=False)

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            try:
                cur = conn.execute(
                    "INSERT INTO outbox (user_id, frame, created) VALUES (?, ?, ?)",
                    (user_id, text, time.time()),
                )
                seq = int(cur.lastrowid or 0)
                # The (user_id, seq) index makes this a seek to the limit-th newest row.
                cur = conn.execute(
                    "DELETE FROM outbox WHERE user_id = ? AND seq <= "
                    "(SELECT seq FROM outbox WHERE user_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (user_id, user_id, limit),
                )
                dropped = max(cur.rowcount, 0)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return seq, dropped

        return await self._db.run(write)

    async def pending(self, user_id: str) -> list[tuple[int, dict[str, Any]]]:
        async with self._db.conn.execute(
            "SELECT seq, frame FROM outbox WHERE user_id = ? ORDER BY seq", (user_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    async def ack(self, user_id: str, up_to_seq: int) -> None:
        await self._db.run(
            lambda conn: write_one(
                conn, "DELETE FROM outbox WHERE user_id = ? AND seq <= ?", (user_id, up_to_seq)
            )
        )

    async def users_with_prefix(self, prefix: str, limit: int = 100_000) -> list[str]:
        """Users whose id starts with ``prefix`` and who have pushes waiting."""
        async with self._db.conn.execute(
            "SELECT DISTINCT user_id FROM outbox WHERE user_id >= ? AND user_id < ? LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def count(self, user_id: str) -> int:
        async with self._db.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE user_id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def total(self) -> int:
        """Pushes waiting for every user (the /metrics gauge)."""
        async with self._db.conn.execute("SELECT COUNT(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
