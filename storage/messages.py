"""Hub messages: the int32 ids the hub hands out, their content, and ids in other systems."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import storage.inflight as inflight_sql
from storage.sql import Execute, Insert, Unit, single

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase

INT32_MAX = 2**31 - 1

MessageKind = Literal["message", "command", "notice", "held", "prompt"]


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
    kind: MessageKind = "message"


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
        kind=r[9],
    )


_COLS = "id, user_id, contact, direction, content, time, reply_to, deleted, thread, kind"


_ADD = (
    "INSERT INTO messages (user_id, contact, direction, content, time, reply_to, thread, kind) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_LINK = (
    "INSERT INTO message_refs (message_id, system, external_id) VALUES (?, ?, ?) "
    "ON CONFLICT (system, external_id) DO UPDATE SET message_id = excluded.message_id"
)
_MARK_DELETED = "UPDATE messages SET deleted = 1 WHERE id = ? AND deleted = 0"


def _add(
    row: tuple[str, str, str, str, float, int | None, str, str],
    inflight: tuple[str | None, str, str] | None,
    refs: Sequence[tuple[int | None, str, str]],
) -> Unit[int]:
    """The message ``row`` (`_ADD`'s columns), its inflight record (stream request id, kind,
    node) and its refs, in one commit; the new message's id."""
    user_id, contact, _, _, when, _, thread, _ = row
    new_id = int((yield Insert(_ADD, row)) or 0)
    if not 0 < new_id <= INT32_MAX:
        # AUTOINCREMENT never reuses ids; past int32 every OneBot peer would break.
        raise RuntimeError("message id space exhausted (int32)")
    if inflight is not None:
        stream_request_id, inflight_kind, node = inflight
        yield Execute(
            inflight_sql.ADD,
            (new_id, user_id, contact, thread, stream_request_id, when, inflight_kind, node),
        )
    for message_id, system, external_id in refs:
        yield Execute(_LINK, (new_id if message_id is None else message_id, system, external_id))
    return new_id


def _mark_deleted(message_id: int) -> Unit[bool]:
    return (yield Execute(_MARK_DELETED, (message_id,))) > 0


def _withdraw(message_id: int) -> Unit[None]:
    yield Execute(_MARK_DELETED, (message_id,))
    yield Execute(inflight_sql.REMOVE, (message_id,))


class MessageRepo:
    def __init__(self, db: Database | PostgresDatabase) -> None:
        self._db = db
        # The cluster node whose replies this process runs ('' alone): see Storage.node.
        self.node = ""

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
        refs: Sequence[tuple[int | None, str, str]] = (),
        inflight_kind: Literal["reply", "command"] = "reply",
        kind: MessageKind = "message",
    ) -> MessageRow:
        """Store a message. ``inflight`` also records, in the same commit, that a reply to it is
        on its way (so a crash before it lands is noticed at the next start). ``refs`` are ids in
        other systems, as `link` records them, in the same commit: (message id -- None for this
        new message --, system, external id)."""
        when = time.time() if at is None else float(at)
        text = json.dumps(content, ensure_ascii=False)
        new_id = await self._db.unit(
            _add(
                (user_id, contact, direction, text, when, reply_to, thread, kind),
                (stream_request_id, inflight_kind, self.node) if inflight else None,
                refs,
            )
        )
        return MessageRow(
            new_id, user_id, contact, direction, content, when, reply_to, False, thread, kind
        )

    async def get(self, message_id: int) -> MessageRow | None:
        r = await self._db.fetchone(f"SELECT {_COLS} FROM messages WHERE id = ?", (message_id,))
        return _row(r) if r is not None else None

    async def replies_to(self, message_id: int) -> list[MessageRow]:
        rows = await self._db.fetch(
            f"SELECT {_COLS} FROM messages WHERE reply_to = ? ORDER BY id", (message_id,)
        )
        return [_row(r) for r in rows]

    async def mark_deleted(self, message_id: int) -> bool:
        return await self._db.unit(_mark_deleted(message_id))

    async def withdraw(self, message_id: int) -> None:
        """Mark the message deleted and drop its inflight record, in one commit (see
        `Storage.withdraw`)."""
        await self._db.unit(_withdraw(message_id))

    async def link(self, message_id: int, system: str, external_id: str) -> None:
        await self._db.unit(single(Execute(_LINK, (message_id, system, external_id))))

    async def external_ids(self, message_id: int, system: str) -> list[str]:
        rows = await self._db.fetch(
            "SELECT external_id FROM message_refs WHERE message_id = ? AND system = ?",
            (message_id, system),
        )
        return [str(r[0]) for r in rows]

    async def refs(self, message_id: int) -> list[str]:
        """The ids of this message in other systems (whichever system its target is)."""
        rows = await self._db.fetch(
            "SELECT external_id FROM message_refs WHERE message_id = ?", (message_id,)
        )
        return [str(r[0]) for r in rows]

    async def by_external(self, system: str, external_id: str) -> MessageRow | None:
        r = await self._db.fetchone(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLS.split(','))} FROM messages m "
            "JOIN message_refs r ON r.message_id = m.id WHERE r.system = ? AND r.external_id = ?",
            (system, external_id),
        )
        return _row(r) if r is not None else None

    async def recent(self, user_id: str, contact: str, thread: str, limit: int) -> list[MessageRow]:
        """The conversation's newest ``limit`` messages that are not deleted, oldest first."""
        rows = await self._db.fetch(
            f"SELECT {_COLS} FROM messages WHERE user_id = ? AND contact = ? AND thread = ? "
            "AND deleted = 0 ORDER BY id DESC LIMIT ?",
            (user_id, contact, thread, max(0, int(limit))),
        )
        return [_row(r) for r in reversed(rows)]

    async def context(
        self, user_id: str, contact: str, thread: str, *, after: int, upto: int, turns: int
    ) -> list[MessageRow]:
        """What was said in the conversation (not deleted; kinds 'message' and 'prompt') after
        message ``after``, in its newest ``turns`` turns up to message ``upto``: each message
        followed by its reply, even one stored after a later message (a reply that came while
        the next message waited), but no reply to a message outside that window; oldest first.
        Read from where the window starts (an index range), never the whole conversation."""
        after, upto = int(after), int(upto)
        row = await self._db.fetchone(
            "SELECT MIN(id) FROM (SELECT id FROM messages WHERE user_id = ? AND contact = ? "
            "AND id > ? AND id <= ? AND thread = ? AND direction = 'in' "
            "AND kind IN ('message', 'prompt') AND deleted = 0 ORDER BY id DESC LIMIT ?) AS w",
            (user_id, contact, after, upto, thread, max(1, int(turns))),
        )
        start = int(row[0]) if row is not None and row[0] is not None else upto
        rows = [
            _row(r)
            for r in await self._db.fetch(
                f"SELECT {_COLS} FROM messages WHERE user_id = ? AND contact = ? AND id >= ? "
                "AND thread = ? AND kind IN ('message', 'prompt') AND deleted = 0 "
                "AND (reply_to IS NULL OR reply_to >= ?) "
                "AND (id <= ? OR (direction = 'out' AND reply_to < ?))",
                (user_id, contact, start, thread, start, upto, upto),
            )
        ]
        rows.sort(key=lambda r: (r.reply_to or r.id, r.id))
        return rows

    async def newest_id(self, user_id: str, contact: str, thread: str) -> int:
        """The id of the conversation's newest message (0 if it has none)."""
        row = await self._db.fetchone(
            "SELECT MAX(id) FROM messages WHERE user_id = ? AND contact = ? AND thread = ?",
            (user_id, contact, thread),
        )
        return int(row[0] or 0) if row is not None else 0

    async def latest_id(self) -> int:
        """The newest message's id, any conversation's (0 with none): the console's cheap
        sign that its conversation list changed (the primary key's index, no scan)."""
        row = await self._db.fetchone("SELECT MAX(id) FROM messages")
        return int(row[0] or 0) if row is not None else 0

    async def conversations(
        self, limit: int, scan: int
    ) -> list[tuple[str, str, str, int, float, int]]:
        """The ``limit`` conversations with the newest messages, newest first, for the admin
        console: (user_id, contact, thread, newest id, last activity, messages not deleted).
        Only the newest ``scan`` messages are read (backwards on the primary key), so the cost
        does not grow with the table: the storage has one connection, and every hub read waits
        behind this one. A conversation quiet for longer than that is not listed, and the
        counts are of its messages within those ``scan``."""
        rows = await self._db.fetch(
            "SELECT user_id, contact, thread, MAX(id), MAX(time), "
            "SUM(CASE WHEN deleted = 0 THEN 1 ELSE 0 END) FROM "
            "(SELECT id, user_id, contact, thread, time, deleted FROM messages "
            "ORDER BY id DESC LIMIT ?) AS w "
            "GROUP BY user_id, contact, thread ORDER BY MAX(id) DESC LIMIT ?",
            (max(0, int(scan)), max(0, int(limit))),
        )
        return [(r[0], r[1], r[2], int(r[3]), float(r[4]), int(r[5] or 0)) for r in rows]

    async def activity(self, since: float, scan: int) -> list[tuple[str, float, float | None]]:
        """Messages stored at ``since`` or later among the newest ``scan`` (a bounded read
        backwards by id, whatever the table's size): (direction, time, the time of the message
        a reply answers, else None)."""
        rows = await self._db.fetch(
            "SELECT m.direction, m.time, q.time FROM (SELECT id, direction, time, reply_to "
            "FROM messages ORDER BY id DESC LIMIT ?) m LEFT JOIN messages q ON q.id = m.reply_to "
            "WHERE m.time >= ?",
            (max(0, int(scan)), float(since)),
        )
        return [(r[0], float(r[1]), None if r[2] is None else float(r[2])) for r in rows]
