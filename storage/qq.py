"""The QQ link's tables: QQ message ids ↔ stored messages, and each session's chosen contact."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from storage.sql import Execute, ExecuteMany, Unit, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase


class QQRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db

    async def link(
        self, account: int, qq_ids: list[int], message_id: int, *, outgoing: bool
    ) -> None:
        """Record that these QQ messages of ``account`` are stored message ``message_id``."""
        if not qq_ids:
            return
        now = time.time()
        rows = [(int(account), int(q), int(message_id), int(outgoing), now) for q in qq_ids]
        # Every column is written: the same as replacing the row.
        await self._db.unit(
            single(
                ExecuteMany(
                    "INSERT INTO qq_messages (account, qq_id, message_id, outgoing, time) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, qq_id) DO UPDATE SET "
                    "message_id = excluded.message_id, outgoing = excluded.outgoing, "
                    "time = excluded.time",
                    rows,
                )
            )
        )

    async def find(self, account: int, qq_id: int) -> tuple[int, bool] | None:
        """(stored message id, whether the bridge sent it) of a QQ message, if known."""
        row = await self._db.fetchone(
            "SELECT message_id, outgoing FROM qq_messages WHERE account = ? AND qq_id = ?",
            (int(account), int(qq_id)),
        )
        return (int(row[0]), bool(row[1])) if row is not None else None

    async def qq_ids(self, account: int, message_id: int) -> list[int]:
        """The QQ messages the bridge sent for stored message ``message_id``."""
        rows = await self._db.fetch(
            "SELECT qq_id FROM qq_messages WHERE message_id = ? AND account = ? AND outgoing = 1",
            (int(message_id), int(account)),
        )
        return [int(r[0]) for r in rows]

    async def purge(self, older_than: float) -> int:
        """Forget links (and the progress of replies never finished) older than ``older_than``
        (epoch seconds): QQ itself only lets a message be recalled or quoted for a while."""
        gone: int = await self._db.unit(_purge(float(older_than)))
        return gone

    async def save_progress(self, token: str, sent: int, qq_ids: list[int], head: str) -> None:
        """How much of a reply QQ has: ``sent`` characters (whose fingerprint is ``head``),
        as the QQ messages ``qq_ids``."""
        ids = json.dumps({"ids": qq_ids, "head": head})
        # Every column is written: the same as replacing the row.
        await self._db.unit(
            single(
                Execute(
                    "INSERT INTO qq_progress (token, sent, qq_ids, time) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (token) DO UPDATE SET sent = excluded.sent, "
                    "qq_ids = excluded.qq_ids, time = excluded.time",
                    (token, int(sent), ids, time.time()),
                )
            )
        )

    async def progress(self, token: str) -> tuple[int, list[int], str] | None:
        """(characters QQ has, their QQ ids, their fingerprint) of a reply on its way."""
        row = await self._db.fetchone(
            "SELECT sent, qq_ids FROM qq_progress WHERE token = ?", (token,)
        )
        if row is None:
            return None
        saved = json.loads(row[1])
        if isinstance(saved, list):  # written before fingerprints
            return int(row[0]), [int(q) for q in saved], ""
        return int(row[0]), [int(q) for q in saved.get("ids", [])], str(saved.get("head", ""))

    async def drop_progress(self, token: str) -> None:
        await self._db.unit(single(Execute("DELETE FROM qq_progress WHERE token = ?", (token,))))

    async def accounts(self) -> list[int]:
        """The QQ accounts that have been linked (while their messages are remembered)."""
        rows = await self._db.fetch("SELECT DISTINCT account FROM qq_messages")
        return [int(r[0]) for r in rows]

    async def binding(self, session: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT contact FROM qq_bindings WHERE session = ?", (session,)
        )
        return str(row[0]) if row is not None else None

    async def bind(self, session: str, contact: str) -> None:
        # Every column is written: the same as replacing the row.
        await self._db.unit(
            single(
                Execute(
                    "INSERT INTO qq_bindings (session, contact, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT (session) DO UPDATE SET contact = excluded.contact, "
                    "updated = excluded.updated",
                    (session, contact, time.time()),
                )
            )
        )


def _purge(older_than: float) -> Unit[int]:
    gone = yield Execute("DELETE FROM qq_messages WHERE time < ?", (older_than,))
    yield Execute("DELETE FROM qq_progress WHERE time < ?", (older_than,))
    return int(gone)
