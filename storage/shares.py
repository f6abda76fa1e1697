"""Shared contact cards (`system/share`).

Bounded on disk: a share older than its time to live is never served and is deleted by the next
write, and a write never takes the table past ``max_total`` rows (it is refused instead, see
``create``). Size and rate limits are the HTTP side's (they are about requests, not rows).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from storage.sql import Execute, Unit, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase


class ShareStorageFull(Exception):
    """``max_total`` unexpired shares are stored already."""


class ShareRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
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
        ShareStorageFull. The count check and the insert are one statement (and on PostgreSQL
        capped writers take turns), so concurrent writers cannot overshoot the cap.
        """
        now = float(time.time() if now is None else now)
        share_id = secrets.token_urlsafe(9)
        data = json.dumps(contactor, ensure_ascii=False)
        oldest = None if ttl is None else now - float(ttl)
        cap = None if max_total is None else int(max_total)
        if await self._db.unit(_create(share_id, data, now, oldest, cap)) != 1:
            raise ShareStorageFull(f"{max_total} shares stored")
        return share_id

    async def get(
        self, share_id: str, *, ttl: float | None = None, now: float | None = None
    ) -> dict[str, Any] | None:
        """The card, or None if there is none or (with ``ttl``) it has expired."""
        oldest = -1.0 if ttl is None else (time.time() if now is None else now) - ttl
        row = await self._db.fetchone(
            "SELECT contactor FROM shares WHERE id = ? AND created >= ?", (share_id, float(oldest))
        )
        return json.loads(row[0]) if row is not None else None

    async def purge_expired(self, ttl: float, *, now: float | None = None) -> int:
        """Delete shares older than ``ttl`` seconds; returns how many went."""
        now = time.time() if now is None else now
        deleted: int = await self._db.unit(
            single(Execute("DELETE FROM shares WHERE created < ?", (float(now - ttl),)))
        )
        return deleted

    async def count(self) -> int:
        row = await self._db.fetchone("SELECT COUNT(*) FROM shares")
        return int(row[0]) if row is not None else 0


# SQLite has one writer at a time, so counting and inserting in one statement keeps to the cap.
# PostgreSQL runs writers side by side, each counting before any of the others inserted: there
# the capped writes take turns on the table (readers are not held up). Nothing to do on SQLite.
_TAKE_TURNS = Execute("SELECT 1", pg="LOCK TABLE shares IN SHARE ROW EXCLUSIVE MODE")


def _create(
    share_id: str, data: str, now: float, oldest: float | None, cap: int | None
) -> Unit[int]:
    """Delete the expired (``oldest``: the earliest creation time kept), then insert the card
    (with ``cap``, only while fewer than ``cap`` shares are stored); the rows inserted."""
    if cap is not None:
        yield _TAKE_TURNS
    if oldest is not None:
        yield Execute("DELETE FROM shares WHERE created < ?", (oldest,))
    if cap is None:
        inserted = yield Execute(
            "INSERT INTO shares (id, contactor, created) VALUES (?, ?, ?)", (share_id, data, now)
        )
    else:
        inserted = yield Execute(
            "INSERT INTO shares (id, contactor, created) "
            "SELECT ?, ?, ? WHERE (SELECT COUNT(*) FROM shares) < ?",
            (share_id, data, now, cap),
        )
    return int(inserted)
