"""Images uploaded through the mio-chat client (adapters/miochat/uploads.py), kept in the
database so that every node of a cluster serves them. Used on PostgreSQL only: a bridge on
SQLite keeps its uploads as files in its data folder and leaves this table empty.

Names are made from the content (a hash), so a name always means the same bytes: storing a name
that is there already keeps the first copy. Nothing is ever deleted (URLs already sent in chats
must keep working); the sizes stored together are capped instead (``add``'s ``max_total``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from storage.sql import Execute, FetchOne, Unit, take_turns

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase

# The advisory locks' first key (this table's), and the one key capped writers take turns on.
_UPLOAD_LOCKS = 0x7570
_TOTAL = "total"


class UploadRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db

    async def add(
        self, name: str, data: bytes, *, max_total: int | None = None, now: float | None = None
    ) -> bool:
        """Store ``data`` under ``name``; True when it is stored (now, or already before: the
        first copy is kept), False when the sizes stored plus this one would pass ``max_total``
        bytes. On PostgreSQL capped writers take turns (readers are not held up), so nodes
        storing at the same time cannot overshoot the cap together."""
        now = float(time.time() if now is None else now)
        cap = None if max_total is None else int(max_total)
        stored: bool = await self._db.unit(_add(name, bytes(data), now, cap))
        return stored

    async def get(self, name: str) -> bytes | None:
        """The bytes stored under ``name``, or None."""
        row = await self._db.fetchone("SELECT data FROM uploads WHERE name = ?", (name,))
        return bytes(row[0]) if row is not None else None

    async def total(self) -> int:
        """The sizes of everything stored, in bytes."""
        row = await self._db.fetchone(_SUM)
        return int(row[0]) if row is not None else 0


# SUM of a 64-bit column is a numeric on PostgreSQL: cast back, so it compares with an integer.
_SUM = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads"
_PRESENT = "SELECT 1 FROM uploads WHERE name = ?"


def _add(name: str, data: bytes, now: float, cap: int | None) -> Unit[bool]:
    if cap is not None:
        yield take_turns(_UPLOAD_LOCKS, _TOTAL)
    if (yield FetchOne(_PRESENT, (name,))) is not None:
        return True  # the same image again: nothing to add, nothing counted twice
    size = len(data)
    if cap is None:
        yield Execute(
            "INSERT INTO uploads (name, data, size, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, data, size, now),
        )
        return True
    # The check and the insert are one statement (and on PostgreSQL the capped writers take
    # turns), so concurrent writers cannot overshoot the cap.
    inserted = yield Execute(
        f"INSERT INTO uploads (name, data, size, time) SELECT ?, ?, ?, ? "
        f"WHERE ({_SUM}) <= ? ON CONFLICT (name) DO NOTHING",
        (name, data, size, now, cap - size),
    )
    if inserted == 1:
        return True
    # Refused by the cap, unless an uncapped writer stored the same name meanwhile.
    return (yield FetchOne(_PRESENT, (name,))) is not None
