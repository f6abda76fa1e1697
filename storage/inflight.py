"""Replies still being generated, so a reply cut short by a crash is recovered or reported."""

from __future__ import annotations

import time
from collections.abc import Collection
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


# REPLACE's semantics as an upsert: every column of the row is the new one's (also used by
# storage.messages, recording a message and its reply in flight in one commit).
ADD = (
    "INSERT INTO inflight (message_id, user_id, contact, thread, stream_request_id, started, kind, "
    "node) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
    "user_id = excluded.user_id, contact = excluded.contact, thread = excluded.thread, "
    "stream_request_id = excluded.stream_request_id, started = excluded.started, "
    "kind = excluded.kind, node = excluded.node"
)

REMOVE = "DELETE FROM inflight WHERE message_id = ?"


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
                    ADD,
                    (
                        message_id,
                        user_id,
                        contact,
                        thread,
                        stream_request_id,
                        time.time(),
                        "reply",
                        self.node,
                    ),
                )
            )
        )

    async def remove(self, message_id: int) -> None:
        await self._db.unit(single(Execute(REMOVE, (message_id,))))

    async def nodes(self) -> set[str]:
        """The cluster node runs with replies in flight ('' for a bridge on its own)."""
        return {str(r[0]) for r in await self._db.fetch("SELECT DISTINCT node FROM inflight")}

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

    async def all(self, nodes: Collection[str] | None = None) -> list[InflightRow]:
        """Every reply in flight, or those of ``nodes`` (cluster node runs)."""
        sql = "SELECT message_id, user_id, contact, thread, stream_request_id, started, kind, node "
        sql += "FROM inflight"
        args: tuple[str, ...] = ()
        if nodes is not None:
            if not nodes:
                return []
            args = tuple(sorted(set(nodes)))
            sql += f" WHERE node IN ({', '.join('?' for _ in args)})"
        rows = await self._db.fetch(sql + " ORDER BY message_id", args)
        return [
            InflightRow(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]), r[6], r[7]) for r in rows
        ]
