"""Shared contact cards (`system/share`).

Bounded on disk: a share older than its time to live is never served and is deleted by the next
write, and a write never takes the table past ``max_total`` rows (it is refused instead, see
``create``). Size and rate limits are the HTTP side's (they are about requests, not rows).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from storage.db import Database


class ShareStorageFull(Exception):
    """``max_total`` unexpired shares are stored already."""


class ShareRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        contactor: dict[str, Any],
        *,
        ttl: float | None = None,
        max_total: int | None = None,
        now: float | None = None,
    ) -> str:
        """Store a card; returns its id.

        With ``ttl`` (seconds), expired shares are deleted first, so a full table makes room by
        dropping the oldest *expired* ones. Live shares are never dropped for a new one (a link
        someone already sent keeps working): with ``max_total`` live shares stored this raises
        ShareStorageFull. The count check and the insert are one statement, so concurrent
        writers cannot overshoot the cap.
        """
        now = time.time() if now is None else now
        if ttl is not None:
            await self._db.conn.execute("DELETE FROM shares WHERE created < ?", (now - ttl,))
        share_id = secrets.token_urlsafe(9)
        data = json.dumps(contactor, ensure_ascii=False)
        if max_total is None:
            sql = "INSERT INTO shares (id, contactor, created) VALUES (?, ?, ?)"
            params: tuple[Any, ...] = (share_id, data, now)
        else:
            sql = (
                "INSERT INTO shares (id, contactor, created) "
                "SELECT ?, ?, ? WHERE (SELECT COUNT(*) FROM shares) < ?"
            )
            params = (share_id, data, now, max_total)
        cur = await self._db.conn.execute(sql, params)
        inserted = cur.rowcount
        await cur.close()
        await self._db.conn.commit()
        if inserted != 1:
            raise ShareStorageFull(f"{max_total} shares stored")
        return share_id

    async def get(
        self, share_id: str, *, ttl: float | None = None, now: float | None = None
    ) -> dict[str, Any] | None:
        """The card, or None if there is none or (with ``ttl``) it has expired."""
        oldest = -1.0 if ttl is None else (time.time() if now is None else now) - ttl
        async with self._db.conn.execute(
            "SELECT contactor FROM shares WHERE id = ? AND created >= ?", (share_id, oldest)
        ) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row is not None else None

    async def purge_expired(self, ttl: float, *, now: float | None = None) -> int:
        """Delete shares older than ``ttl`` seconds; returns how many went."""
        now = time.time() if now is None else now
        cur = await self._db.conn.execute("DELETE FROM shares WHERE created < ?", (now - ttl,))
        deleted = cur.rowcount
        await cur.close()
        await self._db.conn.commit()
        return deleted

    async def count(self) -> int:
        async with self._db.conn.execute("SELECT COUNT(*) FROM shares") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0
