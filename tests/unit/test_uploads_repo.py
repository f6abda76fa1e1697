"""The uploads repository (storage/uploads.py) on both databases: bytes kept exactly, the first
copy of a name kept, the cap on the sizes stored (also with writers on two connections at once,
as two cluster nodes are), and the migration's BLOB column as PostgreSQL's bytea."""

from __future__ import annotations

import asyncio

from storage import Storage
from storage.sql import pg_ddl
from tests.support.storage import (  # noqa: F401 - fixtures (both databases)
    backend_fixture,
    location_fixture,
    scalar,
    st_fixture,
)

# Every byte value, NUL included: a blob, not text.
DATA = bytes(range(256)) * 3
NAME = "0123456789abcdef0123456789abcdef.png"


def name(i: int) -> str:
    return f"{i:032x}.png"


def test_pg_ddl_makes_blobs_bytea() -> None:
    assert pg_ddl("CREATE TABLE t (a BLOB NOT NULL, b blob)") == (
        "CREATE TABLE t (a BYTEA NOT NULL, b BYTEA)"
    )
    # Only the word: a column named like it is left alone.
    assert pg_ddl("blobs TEXT") == "blobs TEXT"


async def test_the_migration_makes_the_table_with_a_binary_column(st: Storage) -> None:
    if st.db.dialect == "postgresql":
        kind = await scalar(
            st,
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'uploads' AND column_name = 'data'",
        )
        assert kind == "bytea"
    else:
        sql = "SELECT type FROM pragma_table_info('uploads') WHERE name = ?"
        assert await scalar(st, sql, "data") == "BLOB"


async def test_stored_bytes_come_back_exactly(st: Storage) -> None:
    assert await st.uploads.get(NAME) is None
    assert await st.uploads.total() == 0
    assert await st.uploads.add(NAME, DATA, now=5.0) is True
    got = await st.uploads.get(NAME)
    assert got == DATA and isinstance(got, bytes)
    assert await st.uploads.total() == len(DATA)
    assert await scalar(st, "SELECT time FROM uploads WHERE name = ?", NAME) == 5.0


async def test_a_name_stored_twice_keeps_the_first_copy_and_counts_once(st: Storage) -> None:
    assert await st.uploads.add(NAME, DATA) is True
    assert await st.uploads.add(NAME, b"other bytes") is True
    assert await st.uploads.add(NAME, b"capped", max_total=1) is True  # stored already: fits
    assert await st.uploads.get(NAME) == DATA
    assert await st.uploads.total() == len(DATA)
    assert await scalar(st, "SELECT COUNT(*) FROM uploads") == 1


async def test_the_cap_refuses_what_would_pass_it(st: Storage) -> None:
    cap = 1000
    assert await st.uploads.add(name(1), b"a" * 600, max_total=cap) is True
    assert await st.uploads.add(name(2), b"b" * 400, max_total=cap) is True  # exactly the cap
    assert await st.uploads.add(name(3), b"c", max_total=cap) is False
    assert await st.uploads.get(name(3)) is None
    assert await st.uploads.total() == cap
    # A larger cap (the setting raised) lets it in.
    assert await st.uploads.add(name(3), b"c", max_total=cap + 1) is True
    assert await st.uploads.total() == cap + 1


async def test_writers_on_two_connections_at_once_keep_to_the_cap(location: str) -> None:
    # Two Storages on one database, as two cluster nodes are: on PostgreSQL their writers would
    # each count before the others inserted, and overshoot, without taking turns.
    nodes = [await Storage.open(location) for _ in range(2)]
    try:
        size, fits = 100, 10
        results = await asyncio.gather(
            *(
                nodes[i % 2].uploads.add(name(i), bytes([i]) * size, max_total=size * fits)
                for i in range(40)
            )
        )
        assert results.count(True) == fits
        assert await nodes[0].uploads.total() == await nodes[1].uploads.total() == size * fits
        stored = [i for i, ok in enumerate(results) if ok]
        for i in stored:
            assert await nodes[1 - i % 2].uploads.get(name(i)) == bytes([i]) * size
    finally:
        for st in nodes:
            await st.close()
