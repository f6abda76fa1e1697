"""Replies still being generated, so a reply cut short by a crash is recovered or reported."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, write_one


@dataclass(frozen=True, slots=True)
class InflightRow:
    message_id: int
    user_id: str
    contact: str
    thread: str
    stream_request_id: str | None
    started: float
    # 'reply' (a reply on its way) or 'command' (a command line not yet answered).
    kind: str = "reply"


class InflightRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        message_id: int,
        user_id: str,
        contact: str,
        thread: str,
        stream_request_id: str | None,
    ) -> None:
        await self._db.conn.execute(
            "INSERT OR REPLACE INTO inflight "
            "(message_id, user_id, contact, thread, stream_request_id, started) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, user_id, contact, thread, stream_request_id, time.time()),
        )
        await self._db.conn.commit()

    async def remove(self, message_id: int) -> None:
        await self._db.run(
            lambda conn: write_one(conn, "DELETE FROM inflight WHERE message_id = ?", (message_id,))
        )

    async def all(self) -> list[InflightRow]:
        async with self._db.conn.execute(
            "SELECT message_id, user_id, contact, thread, stream_request_id, started, kind "
            "FROM inflight ORDER BY message_id"
        ) as cur:
            rows = await cur.fetchall()
        return [InflightRow(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]), r[6]) for r in rows]
