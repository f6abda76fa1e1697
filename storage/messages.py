"""Hub messages: the int32 ids the hub hands out, their content, and ids in other systems."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from storage.db import Database

INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    user_id: str
    contact: str
    direction: Literal["in", "out"]
    content: list[dict[str, Any]]
    time: float
    reply_to: int | None
    deleted: bool
    thread: str = "default"


def _row(r: Any) -> MessageRow:
    return MessageRow(
        id=int(r[0]),
        user_id=r[1],
        contact=r[2],
        direction=r[3],
        content=json.loads(r[4]),
        time=float(r[5]),
        reply_to=r[6],
        deleted=bool(r[7]),
        thread=str(r[8]),
    )


_COLS = "id, user_id, contact, direction, content, time, reply_to, deleted, thread"


class MessageRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        user_id: str,
        contact: str,
        direction: Literal["in", "out"],
        content: list[dict[str, Any]],
        *,
        at: float | None = None,
        reply_to: int | None = None,
        thread: str = "default",
        inflight: bool = False,
        stream_request_id: str | None = None,
    ) -> MessageRow:
        """Store a message. ``inflight`` also records, in the same commit, that a reply to it is
        on its way (so a crash before it lands is noticed at the next start)."""
        when = time.time() if at is None else at
        cur = await self._db.conn.execute(
            "INSERT INTO messages (user_id, contact, direction, content, time, reply_to, thread) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user_id,
                contact,
                direction,
                json.dumps(content, ensure_ascii=False),
                when,
                reply_to,
                thread,
            ),
        )
        new_id = int(cur.lastrowid or 0)
        if not 0 < new_id <= INT32_MAX:
            # AUTOINCREMENT never reuses ids; running past int32 would break every OneBot peer.
            await self._db.conn.rollback()
            raise RuntimeError("message id space exhausted (int32)")
        if inflight:
            await self._db.conn.execute(
                "INSERT OR REPLACE INTO inflight "
                "(message_id, user_id, contact, thread, stream_request_id, started) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (new_id, user_id, contact, thread, stream_request_id, when),
            )
        await self._db.conn.commit()
        return MessageRow(
            new_id, user_id, contact, direction, content, when, reply_to, False, thread
        )

    async def get(self, message_id: int) -> MessageRow | None:
        async with self._db.conn.execute(
            f"SELECT {_COLS} FROM messages WHERE id = ?", (message_id,)
        ) as cur:
            r = await cur.fetchone()
        return _row(r) if r is not None else None

    async def replies_to(self, message_id: int) -> list[MessageRow]:
        async with self._db.conn.execute(
            f"SELECT {_COLS} FROM messages WHERE reply_to = ? ORDER BY id", (message_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [_row(r) for r in rows]

    async def mark_deleted(self, message_id: int) -> bool:
        cur = await self._db.conn.execute(
            "UPDATE messages SET deleted = 1 WHERE id = ? AND deleted = 0", (message_id,)
        )
        await self._db.conn.commit()
        return cur.rowcount > 0

    async def link(self, message_id: int, system: str, external_id: str) -> None:
        await self._db.conn.execute(
            "INSERT OR REPLACE INTO message_refs (message_id, system, external_id) VALUES (?, ?, ?)",
            (message_id, system, external_id),
        )
        await self._db.conn.commit()

    async def external_ids(self, message_id: int, system: str) -> list[str]:
        async with self._db.conn.execute(
            "SELECT external_id FROM message_refs WHERE message_id = ? AND system = ?",
            (message_id, system),
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def refs(self, message_id: int) -> list[str]:
        """The ids of this message in other systems (whichever system its target is)."""
        async with self._db.conn.execute(
            "SELECT external_id FROM message_refs WHERE message_id = ?", (message_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def by_external(self, system: str, external_id: str) -> MessageRow | None:
        async with self._db.conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLS.split(','))} FROM messages m "
            "JOIN message_refs r ON r.message_id = m.id WHERE r.system = ? AND r.external_id = ?",
            (system, external_id),
        ) as cur:
            r = await cur.fetchone()
        return _row(r) if r is not None else None
