"""Shared contact cards (`system/share`)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from storage.db import Database


class ShareRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, contactor: dict[str, Any]) -> str:
        share_id = secrets.token_urlsafe(9)
        await self._db.conn.execute(
            "INSERT INTO shares (id, contactor, created) VALUES (?, ?, ?)",
            (share_id, json.dumps(contactor, ensure_ascii=False), time.time()),
        )
        await self._db.conn.commit()
        return share_id

    async def get(self, share_id: str) -> dict[str, Any] | None:
        async with self._db.conn.execute(
            "SELECT contactor FROM shares WHERE id = ?", (share_id,)
        ) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row is not None else None
