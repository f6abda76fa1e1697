"""The QQ link's tables: QQ message ids ↔ stored messages, and each session's chosen contact."""

from __future__ import annotations

import json
import sqlite3
import time

from storage.db import Database, write_one


class QQRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def link(
        self, account: int, qq_ids: list[int], message_id: int, *, outgoing: bool
    ) -> None:
        """Record that these QQ messages of ``account`` are stored message ``message_id``."""
        if not qq_ids:
            return
        now = time.time()
        rows = [(account, q, message_id, int(outgoing), now) for q in qq_ids]

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO qq_messages "
                    "(account, qq_id, message_id, outgoing, time) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

        await self._db.run(write)

    async def find(self, account: int, qq_id: int) -> tuple[int, bool] | None:
        """(stored message id, whether the bridge sent it) of a QQ message, if known."""
        async with self._db.conn.execute(
            "SELECT message_id, outgoing FROM qq_messages WHERE account = ? AND qq_id = ?",
            (account, qq_id),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), bool(row[1])) if row is not None else None

    async def qq_ids(self, account: int, message_id: int) -> list[int]:
        """The QQ messages the bridge sent for stored message ``message_id``."""
        async with self._db.conn.execute(
            "SELECT qq_id FROM qq_messages WHERE message_id = ? AND account = ? AND outgoing = 1",
            (message_id, account),
        ) as cur:
            rows = await cur.fetchall()
        return [int(r[0]) for r in rows]

    async def purge(self, older_than: float) -> int:
        """Forget links (and the progress of replies never finished) older than ``older_than``
        (epoch seconds): QQ itself only lets a message be recalled or quoted for a while."""

        def write(conn: sqlite3.Connection) -> int:
            try:
                gone = conn.execute("DELETE FROM qq_messages WHERE time < ?", (older_than,))
                conn.execute("DELETE FROM qq_progress WHERE time < ?", (older_than,))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return gone.rowcount

        return await self._db.run(write)

    async def save_progress(self, token: str, sent: int, qq_ids: list[int], head: str) -> None:
        """How much of a reply QQ has: ``sent`` characters (whose fingerprint is ``head``),
        as the QQ messages ``qq_ids``."""
        ids = json.dumps({"ids": qq_ids, "head": head})
        await self._db.run(
            lambda conn: write_one(
                conn,
                "INSERT OR REPLACE INTO qq_progress (token, sent, qq_ids, time) VALUES (?, ?, ?, ?)",
                (token, sent, ids, time.time()),
            )
        )

    async def progress(self, token: str) -> tuple[int, list[int], str] | None:
        """(characters QQ has, their QQ ids, their fingerprint) of a reply on its way."""
        async with self._db.conn.execute(
            "SELECT sent, qq_ids FROM qq_progress WHERE token = ?", (token,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        saved = json.loads(row[1])
        if isinstance(saved, list):  # written before fingerprints
            return int(row[0]), [int(q) for q in saved], ""
        return int(row[0]), [int(q) for q in saved.get("ids", [])], str(saved.get("head", ""))

    async def drop_progress(self, token: str) -> None:
        await self._db.run(
            lambda conn: write_one(conn, "DELETE FROM qq_progress WHERE token = ?", (token,))
        )

    async def accounts(self) -> list[int]:
        """The QQ accounts that have been linked (while their messages are remembered)."""
        async with self._db.conn.execute("SELECT DISTINCT account FROM qq_messages") as cur:
            rows = await cur.fetchall()
        return [int(r[0]) for r in rows]

    async def binding(self, session: str) -> str | None:
        async with self._db.conn.execute(
            "SELECT contact FROM qq_bindings WHERE session = ?", (session,)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row is not None else None

    async def bind(self, session: str, contact: str) -> None:
        await self._db.run(
            lambda conn: write_one(
                conn,
                "INSERT OR REPLACE INTO qq_bindings (session, contact, updated) VALUES (?, ?, ?)",
                (session, contact, time.time()),
            )
        )
