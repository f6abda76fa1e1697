"""What is PostgreSQL's own in storage (storage/postgres.py), on a real server
(tests/support/postgres.py): its migrations (the SQLite scripts through `pg_ddl`, the
`schema_version` table, the advisory lock several bridges take), its refusals, ids the database
makes, and transactions. The repositories' behaviour on both databases is tested by
test_storage.py and its neighbours (tests/support/storage.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import traceback
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

import storage.postgres as postgres_mod
from storage import Storage
from storage.lock import StorageRefused
from storage.migrations import MIGRATIONS
from storage.postgres import PostgresDatabase
from storage.sql import Execute, FetchOne, Statement, Unit, pg_ddl
from tests.support.postgres import PostgresServer
from tests.support.storage import writes_then

TEXT = [{"type": "text", "data": {"text": "hi"}}]
TABLES = {
    "users",
    "user_numbers",
    "messages",
    "message_refs",
    "outbox",
    "shares",
    "conversations",
    "inflight",
    "plugin_kv",
    "conversation_instructions",
    "qq_messages",
    "qq_bindings",
    "qq_progress",
    "client_replies",
    "schema_version",
}


async def versions(dsn: str) -> list[int]:
    """Every row of schema_version, read by a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_version")]
    finally:
        await conn.close()


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {r[0] for r in rows}
    finally:
        await conn.close()


@pytest.fixture
def ddl_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every migration script PostgresDatabase runs, in order (as `pg_ddl` made it)."""
    runs: list[str] = []

    def counting(script: str) -> str:
        out = pg_ddl(script)
        runs.append(out)
        return out

    monkeypatch.setattr(postgres_mod, "pg_ddl", counting)
    return runs


# ----- migrations ---------------------------------------------------------------------------------


async def test_a_fresh_database_migrates_to_the_build_and_reopening_does_nothing(
    postgres_dsn: str, ddl_runs: list[str]
) -> None:
    st = await Storage.open(postgres_dsn)
    try:
        assert st.db.dialect == "postgresql"
        m = await st.messages.add("u", "c", "in", TEXT)
    finally:
        await st.close()
    # Every numbered script, once, each accepted by PostgreSQL as pg_ddl wrote it.
    assert ddl_runs == [pg_ddl(script) for script in MIGRATIONS]
    assert await versions(postgres_dsn) == [len(MIGRATIONS)]
    assert await tables(postgres_dsn) >= TABLES

    ddl_runs.clear()
    st = await Storage.open(postgres_dsn)
    try:
        assert ddl_runs == []  # nothing to do
        assert await st.messages.get(m.id) == m
    finally:
        await st.close()
    assert await versions(postgres_dsn) == [len(MIGRATIONS)]


async def test_pg_ddl_makes_identity_ids_64_bit_integers_and_double_floats(
    postgres_dsn: str,
) -> None:
    st = await Storage.open(postgres_dsn)
    await st.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_identity "
            "FROM information_schema.columns WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    columns = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    assert columns["messages", "id"] == ("bigint", "YES")
    assert columns["outbox", "seq"] == ("bigint", "YES")
    assert columns["qq_messages", "qq_id"] == ("bigint", "NO")
    assert columns["messages", "time"] == ("double precision", "NO")
    assert columns["messages", "content"] == ("text", "NO")


async def test_bridges_opening_one_database_at_once_all_start_and_it_is_migrated_once(
    postgres_dsn: str, ddl_runs: list[str]
) -> None:
    # Without the advisory lock the second CREATE TABLE users would fail (or both would
    # migrate): each waits for the first to commit, then finds the schema current.
    opened = await asyncio.gather(*(Storage.open(postgres_dsn) for _ in range(3)))
    try:
        assert len(ddl_runs) == len(MIGRATIONS)
        assert await versions(postgres_dsn) == [len(MIGRATIONS)]
        # They share the database: what one writes the others read.
        m = await opened[0].messages.add("u", "c", "in", TEXT)
        assert await opened[2].messages.get(m.id) == m
    finally:
        for st in opened:
            await st.close()


async def test_a_database_at_a_newer_schema_version_is_refused_and_left_alone(
    postgres_dsn: str,
) -> None:
    newer = len(MIGRATIONS) + 3
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES ($1)", newer)
    finally:
        await conn.close()
    with pytest.raises(StorageRefused) as ei:
        await Storage.open(postgres_dsn)
    msg = str(ei.value)
    assert f"schema version {newer}" in msg and "newer than this build" in msg
    assert f"({len(MIGRATIONS)})" in msg
    assert await versions(postgres_dsn) == [newer]
    assert await tables(postgres_dsn) == {"schema_version"}


async def test_a_failed_migration_is_not_half_applied(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = await Storage.open(postgres_dsn)
    await st.close()
    broken = "CREATE TABLE extra (a INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(postgres_mod, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(asyncpg.UndefinedTableError):
        await Storage.open(postgres_dsn)
    # DDL is transactional on PostgreSQL: the table went with the failed statement.
    assert await versions(postgres_dsn) == [len(MIGRATIONS)]
    assert "extra" not in await tables(postgres_dsn)
    monkeypatch.setattr(
        postgres_mod, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (a INTEGER);"]
    )
    st = await Storage.open(postgres_dsn)
    await st.close()
    assert await versions(postgres_dsn) == [len(MIGRATIONS) + 1]
    assert "extra" in await tables(postgres_dsn)


# ----- refusals -----------------------------------------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then let go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def everything_said(e: BaseException) -> str:
    """The exception's message, repr and whole traceback, chained exceptions included."""
    return "\n".join([str(e), repr(e), *traceback.format_exception(e)])


async def test_an_unreachable_server_is_refused_without_the_password() -> None:
    port = closed_port()
    url = f"postgresql://momo:s3cret-Passw0rd@127.0.0.1:{port}/bridge"
    with pytest.raises(StorageRefused) as ei:
        await Storage.open(url)
    msg = str(ei.value)
    assert f"127.0.0.1:{port}/bridge" in msg and "momo:***@" in msg
    assert "s3cret-Passw0rd" not in everything_said(ei.value)


async def test_a_missing_database_is_refused(postgres_server: PostgresServer) -> None:
    url = postgres_server.dsn("no_such_database")
    with pytest.raises(StorageRefused, match="no_such_database"):
        await Storage.open(url)


# ----- ids the database makes ---------------------------------------------------------------------


async def test_ids_made_by_the_database_increase_across_bridges_and_failures(
    postgres_dsn: str,
) -> None:
    a = await Storage.open(postgres_dsn)
    b = await Storage.open(postgres_dsn)
    try:
        ids = [(await st.messages.add("u", "c", "in", TEXT)).id for st in (a, b, a, b)]
        with contextlib.suppress(asyncpg.CheckViolationError):  # a refused insert takes an id
            await a.messages.add("u", "c", "sideways", TEXT)  # type: ignore[arg-type]
        ids.append((await b.messages.add("u", "c", "in", TEXT)).id)
        assert ids == sorted(set(ids)) and ids[0] > 0
        both = await asyncio.gather(*(st.messages.add("u", "c", "in", TEXT) for st in (a, b) * 10))
        assert len({m.id for m in both}) == 20 and min(m.id for m in both) > ids[-1]

        seqs = [(await st.outbox.push("u", {"n": i}, 100))[0] for i, st in enumerate((a, b, a))]
        assert seqs == sorted(set(seqs)) and seqs[0] > 0
        assert [seq for seq, _ in await b.outbox.pending("u")] == seqs
    finally:
        await a.close()
        await b.close()


# ----- transactions -------------------------------------------------------------------------------


def python_error() -> Statement:
    raise LookupError("the unit gave up")


def sql_error() -> Statement:
    return Execute("INSERT INTO shares (id, contactor, created) VALUES (NULL, '{}', 1.0)")


@pytest.mark.parametrize(
    ("failure", "raised"),
    [(python_error, LookupError), (sql_error, asyncpg.NotNullViolationError)],
    ids=["python", "sql"],
)
async def test_a_unit_that_raises_rolls_back_every_statement_in_it(
    postgres_dsn: str, failure: Callable[[], Statement], raised: type[Exception]
) -> None:
    st = await Storage.open(postgres_dsn)
    try:
        db: PostgresDatabase = st.db
        for _ in range(3):  # more than once: each failure leaves the pool's connection clean
            with pytest.raises(raised):
                await db.unit(writes_then(failure))
        for table in ("messages", "inflight", "plugin_kv", "shares"):
            assert (await db.fetchone(f"SELECT count(*) FROM {table}"))[0] == 0, table
        # Another connection sees nothing either: nothing was committed.
        assert await versions(postgres_dsn) == [len(MIGRATIONS)]
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        finally:
            await conn.close()
        # The next unit works and commits.
        assert (await st.messages.add("u", "c", "in", TEXT, inflight=True)).id > 0
        assert [r.user_id for r in await st.inflight.all()] == ["u"]
    finally:
        await st.close()


async def test_a_unit_is_isolated_until_it_commits(postgres_dsn: str) -> None:
    st = await Storage.open(postgres_dsn)
    try:
        db: PostgresDatabase = st.db
        inside = asyncio.Event()
        go_on = asyncio.Event()

        async def wait_inside() -> None:
            inside.set()
            await go_on.wait()

        def slow() -> Unit[int]:
            yield Execute("INSERT INTO shares (id, contactor, created) VALUES ('a', '{}', 1.0)")
            yield FetchOne("SELECT 1")  # the test reads from elsewhere meanwhile
            return 1

        real = postgres_mod._run_one

        async def run_one(conn: Any, statement: Statement) -> Any:
            if isinstance(statement, FetchOne) and statement.sql == "SELECT 1":
                await wait_inside()
            return await real(conn, statement)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(postgres_mod, "_run_one", run_one)
            task = asyncio.create_task(db.unit(slow()))
            async with asyncio.timeout(5):
                await inside.wait()
            assert await st.shares.count() == 0  # not yet committed
            go_on.set()
            async with asyncio.timeout(5):
                assert await task == 1
        assert await st.shares.count() == 1
    finally:
        await st.close()


# ----- known races ---------------------------------------------------------------------------------


class HeldTrims:
    """Makes the trims of concurrent transactions overlap for certain: each transaction is held
    at the statement containing ``marker`` until ``parties`` have reached it; once its statement
    is done it is held again (its transaction open) until every other one's is done too, or is
    waiting for a lock the held ones have. So every trim reads before any of them commits.
    A fix that makes the writers take turns must not hang the test: every wait gives up after
    a second."""

    def __init__(self, dsn: str, marker: str, parties: int = 2) -> None:
        self.dsn = dsn
        self.marker = marker
        self.parties = parties
        self.arrived = 0
        self.done = 0
        self.all_in = asyncio.Event()
        self._real = postgres_mod._run_one

    async def run_one(self, conn: Any, statement: Statement) -> Any:
        if not (isinstance(statement, Execute) and self.marker in (statement.pg or statement.sql)):
            return await self._real(conn, statement)
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.all_in.wait()
        result = await self._real(conn, statement)
        self.done += 1
        for _ in range(100):  # a second at most
            if self.done >= self.parties or await self._someone_waits_for_a_lock():
                break
            await asyncio.sleep(0.01)
        return result

    async def _someone_waits_for_a_lock(self) -> bool:
        monitor = await asyncpg.connect(self.dsn)
        try:
            waiting = await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        finally:
            await monitor.close()
        return bool(waiting)


async def test_concurrent_pushes_of_one_user_keep_to_the_limit(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = await Storage.open(postgres_dsn)
    try:
        for i in range(5):
            await st.outbox.push("u", {"n": i}, 5)
        held = HeldTrims(postgres_dsn, "ORDER BY seq DESC LIMIT 1 OFFSET")
        monkeypatch.setattr(postgres_mod, "_run_one", held.run_one)
        async with asyncio.timeout(10):
            results = await asyncio.gather(*(st.outbox.push("u", {"n": n}, 5) for n in (5, 6)))
        assert held.arrived == 2
        assert await st.outbox.count("u") == 5
        assert sum(dropped for _, dropped in results) == 2
    finally:
        await st.close()


async def test_concurrent_client_reply_saves_of_one_user_keep_to_the_limit(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.client_replies import StoredReply

    def reply(mid: str, updated: float) -> StoredReply:
        return StoredReply("u", mid, "momo", "streaming", [], None, {}, updated)

    st = await Storage.open(postgres_dsn)
    try:
        for i in range(3):
            await st.client_replies.save(reply(f"m{i}", 1000.0 + i), 3)
        held = HeldTrims(postgres_dsn, "ORDER BY updated DESC LIMIT ALL OFFSET")
        monkeypatch.setattr(postgres_mod, "_run_one", held.run_one)
        async with asyncio.timeout(10):
            await asyncio.gather(
                *(st.client_replies.save(reply(f"m{i}", 1000.0 + i), 3) for i in (3, 4))
            )
        assert held.arrived == 2
        kept = await st.client_replies.of_contactor("u", "momo")
        assert [r.message_id for r in kept] == ["m2", "m3", "m4"]
    finally:
        await st.close()
