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
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.sql import Execute, Unit, single, take_turns

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase

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
    node: str = ""  # the node run that runs (ran) it, `<node id>#<run>` ('' on its own); read only


class ClientReplyRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db
        self.node = ""  # see Storage.node

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
            float(reply.updated or time.time()),
            self.node,
        )
        await self._db.unit(_save(row, int(limit)))

    async def of_contactor(self, user_id: str, contactor_id: str) -> list[StoredReply]:
        rows = await self._db.fetch(
            "SELECT user_id, message_id, contactor_id, status, chunks, error, meta, updated, node "
            "FROM client_replies WHERE user_id = ? AND contactor_id = ? ORDER BY updated",
            (user_id, contactor_id),
        )
        return [_reply(r) for r in rows]

    async def contactors(self, user_id: str) -> list[str]:
        """The user's contactors with replies waiting, oldest first."""
        rows = await self._db.fetch(
            "SELECT contactor_id, MIN(updated) AS first FROM client_replies WHERE user_id = ? "
            "GROUP BY contactor_id ORDER BY first",
            (user_id,),
        )
        return [str(r[0]) for r in rows]

    async def delete(self, user_id: str, message_id: str) -> bool:
        n = await self._db.unit(
            single(
                Execute(
                    "DELETE FROM client_replies WHERE user_id = ? AND message_id = ?",
                    (user_id, message_id),
                )
            )
        )
        return bool(n > 0)

    async def expire(self, older_than: float) -> int:
        """Delete replies started before ``older_than`` (their client never came back)."""
        n: int = await self._db.unit(
            single(Execute("DELETE FROM client_replies WHERE updated < ?", (float(older_than),)))
        )
        return n

    async def streaming_nodes(self) -> set[str]:
        """The nodes with replies still streaming ('' for a bridge on its own)."""
        rows = await self._db.fetch(
            "SELECT DISTINCT node FROM client_replies WHERE status = 'streaming'"
        )
        return {str(r[0]) for r in rows}

    async def interrupted(self, error: Any, nodes: Collection[str] | None = None) -> int:
        """Mark the replies still streaming as failed with ``error``: all of them (a bridge on
        its own, at start-up: whatever ran them is gone), or those of ``nodes`` (cluster nodes
        that are gone). Returns how many."""
        text = json.dumps(error, ensure_ascii=False)
        sql = "UPDATE client_replies SET status = 'failed', error = ?, updated = ? "
        sql += "WHERE status = 'streaming'"
        args: tuple[Any, ...] = (text, time.time())
        if nodes is not None:
            if not nodes:
                return 0
            names = sorted(set(nodes))
            sql += f" AND node IN ({', '.join('?' for _ in names)})"
            args += tuple(names)
        n: int = await self._db.unit(single(Execute(sql, args)))
        return n


# The advisory locks' first key for this table (see take_turns): one user's saves take turns on
# PostgreSQL, so two at once cannot both trim to `limit` and keep limit + 1.
_TURNS = 0x6372


def _save(row: tuple[Any, ...], limit: int) -> Unit[None]:
    user_id = row[0]
    yield take_turns(_TURNS, user_id)
    # Every column is written: the same as replacing the row.
    yield Execute(
        "INSERT INTO client_replies (user_id, message_id, contactor_id, status, chunks, error, "
        "meta, updated, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, message_id) "
        "DO UPDATE SET contactor_id = excluded.contactor_id, status = excluded.status, "
        "chunks = excluded.chunks, error = excluded.error, meta = excluded.meta, "
        "updated = excluded.updated, node = excluded.node",
        row,
    )
    yield Execute(
        "DELETE FROM client_replies WHERE user_id = ? AND message_id IN ("
        "SELECT message_id FROM client_replies WHERE user_id = ? "
        "ORDER BY updated DESC LIMIT -1 OFFSET ?)",
        (user_id, user_id, limit),
        # PostgreSQL spells "no limit" ALL (SQLite: a negative one).
        pg="DELETE FROM client_replies WHERE user_id = ? AND message_id IN ("
        "SELECT message_id FROM client_replies WHERE user_id = ? "
        "ORDER BY updated DESC LIMIT ALL OFFSET ?)",
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
        node=str(r[8] or "") if len(r) > 8 else "",
    )
