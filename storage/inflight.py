"""Replies still being generated, so a reply cut short by a crash is recovered or reported."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage.sql import Execute, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase


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
    # The cluster node running it ('' for a bridge on its own).
    node: str = ""


# REPLACE's semantics as an upsert: the row is all new, `kind` back to its default ('reply').
_ADD = (
    "INSERT INTO inflight (message_id, user_id, contact, thread, stream_request_id, started, kind, "
    "node) VALUES (?, ?, ?, ?, ?, ?, 'reply', ?) ON CONFLICT (message_id) DO UPDATE SET "
    "user_id = excluded.user_id, contact = excluded.contact, thread = excluded.thread, "
    "stream_request_id = excluded.stream_request_id, started = excluded.started, "
    "kind = excluded.kind, node = excluded.node"
)


class InflightRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db
        self.node = ""  # see Storage.node

    async def add(
        self,
        message_id: int,
        user_id: str,
        contact: str,
        thread: str,
        stream_request_id: str | None,
    ) -> None:
        await self._db.unit(
            single(
                Execute(
                    _ADD,
                    (
                        message_id,
                        user_id,
                        contact,
                        thread,
                        stream_request_id,
                        time.time(),
                        self.node,
                    ),
                )
            )
        )

    async def remove(self, message_id: int) -> None:
        await self._db.unit(
            single(Execute("DELETE FROM inflight WHERE message_id = ?", (message_id,)))
        )

    async def claim(self, message_id: int, holder: str, claimer: str) -> bool:
        """Move the record from node run ``holder`` to ``claimer``; False when it is no longer
        ``holder``'s (settled, or claimed by another node meanwhile)."""
        n = await self._db.unit(
            single(
                Execute(
                    "UPDATE inflight SET node = ? WHERE message_id = ? AND node = ?",
                    (claimer, message_id, holder),
                )
            )
        )
        return bool(n == 1)

    async def all(self) -> list[InflightRow]:
        rows = await self._db.fetch(
            "SELECT message_id, user_id, contact, thread, stream_request_id, started, kind, node "
            "FROM inflight ORDER BY message_id"
        )
        return [
            InflightRow(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]), r[6], r[7]) for r in rows
        ]
