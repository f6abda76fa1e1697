"""Pushes waiting for a user who has no live connection, kept in order until delivered."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from storage.sql import Execute, Insert, Unit, single, take_turns

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase


# The advisory locks' first key for this table (see take_turns): one user's pushes take turns on
# PostgreSQL, so two at once cannot both trim to `limit` and keep limit + 1.
_TURNS = 0x6F62


def _push(user_id: str, text: str, limit: int) -> Unit[tuple[int, int]]:
    yield take_turns(_TURNS, user_id)
    seq = yield Insert(
        "INSERT INTO outbox (user_id, frame, created) VALUES (?, ?, ?)",
        (user_id, text, time.time()),
        key="seq",
    )
    # The (user_id, seq) index makes this a seek to the limit-th newest row.
    dropped = yield Execute(
        "DELETE FROM outbox WHERE user_id = ? AND seq <= "
        "(SELECT seq FROM outbox WHERE user_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (user_id, user_id, limit),
    )
    return int(seq or 0), max(dropped, 0)


class OutboxRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db
        self._last_id = 0
        # A cluster node's ids are those ≡ slot (mod stride): nodes never make the same one.
        self._slot, self._stride = 0, 1

    def id_space(self, slot: int, stride: int) -> None:
        """This node makes only ids ≡ ``slot`` (mod ``stride``) (a cluster gives each node its
        own slot)."""
        if not 0 <= slot < stride:
            raise ValueError(f"slot {slot} outside 0..{stride - 1}")
        self._slot, self._stride = slot, stride
        self._last_id = 0

    def next_id(self) -> int:
        # Seeded from the clock so ids stay unique across restarts (stored pushes keep theirs).
        seed = int(time.time() * 1000) * self._stride + self._slot
        self._last_id = max(self._last_id + self._stride, seed)
        return self._last_id

    async def push(self, user_id: str, frame: dict[str, Any], limit: int) -> tuple[int, int]:
        """Append a frame; trim the oldest beyond ``limit``.

        Returns the frame's seq (increasing for each user, never reused) and how many were
        dropped to make room.
        """
        text = json.dumps(frame, ensure_ascii=False)
        return await self._db.unit(_push(user_id, text, int(limit)))

    async def pending(self, user_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = await self._db.fetch(
            "SELECT seq, frame FROM outbox WHERE user_id = ? ORDER BY seq", (user_id,)
        )
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    async def frame(self, user_id: str, seq: int) -> dict[str, Any] | None:
        """One waiting push of the user, by its seq (None once confirmed or trimmed)."""
        row = await self._db.fetchone(
            "SELECT frame FROM outbox WHERE user_id = ? AND seq = ?", (user_id, int(seq))
        )
        return json.loads(row[0]) if row is not None else None

    async def ack_exactly(self, user_id: str, seqs: list[int]) -> None:
        """Delete these pushes of the user (and no other)."""
        if not seqs:
            return
        marks = ", ".join("?" * len(seqs))
        await self._db.unit(
            single(
                Execute(
                    f"DELETE FROM outbox WHERE user_id = ? AND seq IN ({marks})",
                    (user_id, *(int(s) for s in seqs)),
                )
            )
        )

    async def ack(self, user_id: str, up_to_seq: int) -> None:
        await self._db.unit(
            single(
                Execute(
                    "DELETE FROM outbox WHERE user_id = ? AND seq <= ?", (user_id, int(up_to_seq))
                )
            )
        )

    async def users_with_prefix(self, prefix: str, limit: int = 100_000) -> list[str]:
        """Users whose id starts with ``prefix`` and who have pushes waiting."""
        # SQLite: a range on the (user_id, seq) index; the end is the prefix and the highest
        # code point, as text compares there (binary). PostgreSQL compares text by collation.
        rows = await self._db.fetch(
            "SELECT DISTINCT user_id FROM outbox "
            "WHERE user_id >= ?1 AND user_id < ?1 || char(1114111) LIMIT ?2",
            (prefix, int(limit)),
            pg="SELECT DISTINCT user_id FROM outbox WHERE starts_with(user_id, ?) LIMIT ?",
        )
        return [str(r[0]) for r in rows]

    async def count(self, user_id: str) -> int:
        row = await self._db.fetchone("SELECT COUNT(*) FROM outbox WHERE user_id = ?", (user_id,))
        return int(row[0]) if row else 0

    async def total(self) -> int:
        """Pushes waiting for every user (the /metrics gauge)."""
        row = await self._db.fetchone("SELECT COUNT(*) FROM outbox")
        return int(row[0]) if row else 0
