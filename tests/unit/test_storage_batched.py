"""Writes of several statements are one unit, one transaction: all of them or nothing (both
databases); on SQLite a unit goes to the database thread in one hop (`Database.run`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage import Storage
from storage.sql import Execute, Insert, Statement, Unit
from tests.support.storage import (  # noqa: F401 - fixtures
    INTEGRITY_ERRORS,
    backend_fixture,
    location_fixture,
    no_open_transaction,
    st_fixture,
    writes_then,
)

TEXT = [{"type": "text", "data": {"text": "hi"}}]


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[Storage]:
    """A Storage on SQLite, for `Database.run` (SQLite's own)."""
    s = await Storage.open(str(tmp_path / "b.db"))
    yield s
    await s.close()


async def count(st: Storage, table: str) -> int:
    row = await st.db.fetchone(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


async def test_a_message_its_inflight_record_and_refs_share_one_commit(st: Storage) -> None:
    q = await st.messages.add("u", "c", "in", TEXT, inflight=True, stream_request_id="r1")
    r = await st.messages.add(
        "u",
        "c",
        "out",
        TEXT,
        reply_to=q.id,
        refs=[(q.id, "momohub", "up-q"), (None, "momohub", "up-r")],
    )
    assert [row.message_id for row in await st.inflight.all()] == [q.id]
    assert await st.messages.external_ids(q.id, "momohub") == ["up-q"]
    assert await st.messages.external_ids(r.id, "momohub") == ["up-r"]
    assert no_open_transaction(st)


async def test_a_failing_ref_takes_the_whole_write_back(st: Storage) -> None:
    # A ref to a message that does not exist breaks the foreign key: the message goes too.
    with pytest.raises(INTEGRITY_ERRORS):
        await st.messages.add("u", "c", "in", TEXT, inflight=True, refs=[(987654, "m", "x")])
    assert no_open_transaction(st)
    assert await count(st, "messages") == 0
    assert await count(st, "inflight") == 0
    # And the connection is usable for the next write.
    assert (await st.messages.add("u", "c", "in", TEXT)).id > 0


def _gave_up() -> Statement:
    raise ValueError("the unit gave up")


def _refused() -> Statement:
    return Execute("INSERT INTO no_such_table VALUES (1)")


@pytest.mark.parametrize("fail", ["python", "sql"])
async def test_a_unit_that_fails_takes_back_every_statement_in_it(st: Storage, fail: str) -> None:
    with pytest.raises(Exception) as ei:
        await st.db.unit(writes_then(_gave_up if fail == "python" else _refused))
    if fail == "python":
        assert ei.type is ValueError and str(ei.value) == "the unit gave up"
    assert no_open_transaction(st)
    for table in ("messages", "inflight", "shares"):
        assert await count(st, table) == 0, table
    # The database is usable for the next unit, and the message id was not given twice.
    assert (await st.messages.add("u", "c", "in", TEXT)).id > 0
    assert await count(st, "messages") == 1


async def test_a_unit_returns_its_value_and_commits(st: Storage) -> None:
    def work() -> Unit[Any]:
        first = yield Insert(
            "INSERT INTO outbox (user_id, frame, created) VALUES ('u', '{}', 1.0)", key="seq"
        )
        second = yield Insert(
            "INSERT INTO outbox (user_id, frame, created) VALUES ('u', '{}', 2.0)", key="seq"
        )
        changed = yield Execute("UPDATE outbox SET created = 3.0 WHERE user_id = 'u'")
        return first, second, changed

    first, second, changed = await st.db.unit(work())
    assert 0 < first < second and changed == 2
    assert [seq for seq, _ in await st.outbox.pending("u")] == [first, second]


async def test_outbox_push_trims_in_the_same_write(st: Storage) -> None:
    seqs = [(await st.outbox.push("u", {"n": i}, 2))[0] for i in range(3)]
    assert seqs == sorted(seqs)
    assert [s for s, _ in await st.outbox.pending("u")] == seqs[1:]
    await st.outbox.ack("u", seqs[1])
    assert [s for s, _ in await st.outbox.pending("u")] == seqs[2:]
    assert no_open_transaction(st)


async def test_anchor_and_inflight_removal(st: Storage) -> None:
    await st.conversations.set("u", "c", "default", "chat-1")
    await st.conversations.set_anchor("u", "c", "default", "m9", "2024-01-01T00:00:00")
    assert await st.conversations.anchor("u", "c", "default") == ("m9", "2024-01-01T00:00:00")
    q = await st.messages.add("u", "c", "in", TEXT, inflight=True)
    await st.inflight.remove(q.id)
    assert await st.inflight.all() == []


# ----- SQLite: Database.run -----------------------------------------------------------------------


async def test_run_keeps_the_order_of_calls_made_before_it(lite: Storage) -> None:
    st = lite
    m = await st.messages.add("u", "c", "in", TEXT)
    # Issued without awaiting in between: each sees what the calls queued before it wrote.
    deleted = asyncio.ensure_future(st.messages.mark_deleted(m.id))
    seen = asyncio.ensure_future(
        st.db.run(lambda conn: conn.execute("SELECT deleted FROM messages").fetchone()[0])
    )
    again = asyncio.ensure_future(st.messages.mark_deleted(m.id))
    async with asyncio.timeout(5):
        assert await deleted is True
        assert await seen == 1
        assert await again is False


async def test_an_exception_in_run_reaches_the_caller(lite: Storage) -> None:
    st = lite

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError):
        await st.db.run(broken)
    assert await count(st, "messages") == 0
