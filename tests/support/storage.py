"""The repository tests on both databases: SQLite (a temp file) and PostgreSQL (a real server,
tests/support/postgres.py).

Fixtures, imported by the test modules that use them (as `backend_fixture`, `location_fixture`,
`st_fixture`: a test's parameters then shadow no imported name):

- `backend`: ``"sqlite"`` or ``"postgresql"``, parametrizing every test that uses (indirectly)
  the fixtures below, so the test ids show the database (``test_x[postgresql]``);
- `location`: what `Storage.open` takes for that backend: a SQLite file path in a folder that
  does not exist yet, or the DSN of an empty, migrated PostgreSQL database. Opening it again is
  the same database (a restart, or a second bridge on it);
- `st`: a `Storage` open on `location`, closed after the test.

The PostgreSQL variants share one database of the test server (`postgres_server`), migrated by
the first of them and emptied before each (every table but `schema_version` truncated, the
identity sequences restarted, whatever a failed test left connected cut off): to the
repositories that is a fresh database, at a third of the cost of making and migrating one per
test (`postgres_dsn`, which the tests of migrations themselves use). Without PostgreSQL the
``postgresql`` variants skip (fail in CI), as `postgres_server` does.

Helpers read and write through the neutral database API (`fetchone`, `unit`), which takes ``?``
placeholders on both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage import Storage
from storage.migrations import MIGRATIONS
from storage.sql import Execute, FetchOne, Insert, Statement, Unit, single
from tests.support.postgres import PostgresServer

BACKENDS = ["sqlite", "postgresql"]

# What a broken constraint raises on each database.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    asyncpg.IntegrityConstraintViolationError,
)


@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(name="location")
async def location_fixture(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return str(tmp_path / "sub" / "dir" / "test.db")
    # Only asked for by the PostgreSQL variant: the SQLite one needs no server.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await empty_database(server)


# The shared database of the PostgreSQL variants (on the one server of this pytest process,
# which removes it with everything else when the run ends).
_shared: dict[str, str] = {}


async def empty_database(server: PostgresServer) -> str:
    """The DSN of the shared database, migrated and empty (see the module's docstring)."""
    dsn = _shared.get("dsn")
    if dsn is not None:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            await conn.execute("SET lock_timeout = '10s'")  # an error rather than a hang
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            version = await conn.fetchval("SELECT max(version) FROM schema_version")
            tables = await conn.fetch(
                "SELECT quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'schema_version'"
            )
            if version == len(MIGRATIONS):
                names = ", ".join(r[0] for r in tables)
                await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
                return dsn
        finally:
            await conn.close()
    # The first variant, or the database is not at this build's schema: a new one.
    dsn = await server.create_database()
    st = await Storage.open(dsn)
    await st.close()
    _shared["dsn"] = dsn
    return dsn


@pytest.fixture(name="st")
async def st_fixture(location: str) -> AsyncIterator[Storage]:
    s = await Storage.open(location)
    try:
        yield s
    finally:
        await s.close()


async def scalar(st: Storage | Any, sql: str, *params: object, pg: str | None = None) -> Any:
    """The first column of the first row (None without a row); ``st`` a Storage or a database."""
    db = st.db if isinstance(st, Storage) else st
    row = await db.fetchone(sql, params, pg=pg)
    return row[0] if row is not None else None


async def execute(st: Storage | Any, sql: str, *params: object, pg: str | None = None) -> int:
    """One write, committed; the rows it changed."""
    db = st.db if isinstance(st, Storage) else st
    changed: int = await db.unit(single(Execute(sql, params, pg=pg)))
    return changed


async def schema_version(st: Storage | Any) -> int:
    """The migration the database is at (SQLite: user_version; PostgreSQL: schema_version)."""
    db = st.db if isinstance(st, Storage) else st
    if db.dialect == "sqlite":
        return int(await scalar(db, "PRAGMA user_version"))
    return int(await scalar(db, "SELECT max(version) FROM schema_version") or 0)


def no_open_transaction(st: Storage) -> bool:
    """Nothing left uncommitted on the connection (SQLite's one connection; PostgreSQL hands a
    connection back to its pool only once its transaction ended)."""
    conn = getattr(st.db, "conn", None)
    return conn is None or not conn.in_transaction


def writes_then(failure: Callable[[], Statement]) -> Unit[None]:
    """A unit of four writes to different repositories' tables and a read that sees them, then
    ``failure``'s statement (or what ``failure`` raises): a unit whose end fails."""
    new_id = yield Insert(
        "INSERT INTO messages (user_id, contact, direction, content, time) "
        "VALUES ('u', 'c', 'in', '[]', 1.0)"
    )
    yield Execute(
        "INSERT INTO inflight (message_id, user_id, contact, thread, started) "
        "VALUES (?, 'u', 'c', 'default', 1.0)",
        (new_id,),
    )
    yield Execute("INSERT INTO plugin_kv (plugin, key, value, updated) VALUES ('p', 'k', '1', 1)")
    yield Execute("INSERT INTO shares (id, contactor, created) VALUES ('s1', '{}', 1.0)")
    seen = yield FetchOne("SELECT count(*) FROM messages")
    assert seen[0] == 1  # the unit sees its own writes
    yield failure()
