"""The SQLite database: one aiosqlite connection, WAL mode, numbered migrations at start.

Repositories talk to it through units of statements (storage.sql), which PostgreSQL
(storage.postgres) runs as well.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from storage.lock import DatabaseLock, StorageRefused
from storage.migrations import MIGRATIONS
from storage.sql import Execute, ExecuteMany, Fetch, FetchOne, Insert, Statement, Unit

log = structlog.get_logger(__name__)

T = TypeVar("T")


class SchemaTooNew(StorageRefused):
    pass


class Database:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self.lock: DatabaseLock | None = None

    @classmethod
    async def open(cls, path: str, *, exclusive: bool = False) -> Database:
        """``exclusive``: claim the file for this process (the server does) until `close`;
        raises DatabaseInUse if another process holds the claim."""
        lock = None
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                lock = DatabaseLock.acquire(path)
        try:
            conn = await aiosqlite.connect(path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        conn.row_factory = aiosqlite.Row
        db = cls(conn, path)
        db.lock = lock
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            # A 1 MiB page cache (SQLite's default is 2): the hot rows are few and recent, and a
            # small self-hosted bridge counts its memory in megabytes.
            await conn.execute("PRAGMA cache_size=-1024")
            await db._migrate()
        except BaseException:
            # Closed without a commit: a migration that failed half-way is rolled back.
            try:
                await conn.close()
            finally:
                if lock is not None:
                    lock.release()
            raise
        return db

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Call ``fn`` with the sqlite3 connection on the connection's own thread.

        Several statements and their commit then cost one hop to that thread instead of one
        each (every hop is a queue put, a GIL hand-over and a loop wake-up), and nothing of
        another coroutine can land between them. ``fn`` must commit or roll back what it
        began: an open transaction would otherwise be committed by whoever commits next.
        """
        conn = self.conn
        # aiosqlite has no public way to run a function on its thread; `_execute` queues it
        # behind every statement already submitted, so the order of calls is kept.
        return await conn._execute(fn, conn._conn)

    async def unit(self, work: Unit[T]) -> T:
        """Run a unit of statements in one transaction (committed when it returns, rolled back
        when it raises), on the connection's thread in one hop."""
        return await self.run(lambda conn: _drive(conn, work))

    async def fetch(
        self, sql: str, params: tuple[object, ...] = (), *, pg: str | None = None
    ) -> list[Any]:
        """Every row of one query (``pg``: its PostgreSQL spelling, unused here)."""
        return await self.run(lambda conn: conn.execute(sql, params).fetchall())

    async def fetchone(
        self, sql: str, params: tuple[object, ...] = (), *, pg: str | None = None
    ) -> Any:
        """The first row of one query, or None."""
        return await self.run(lambda conn: conn.execute(sql, params).fetchone())

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def _migrate(self) -> None:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database {self.path} is at schema version {current}, newer than this build "
                f"({len(MIGRATIONS)}); upgrade MomoBridge or use another storage.path"
            )
        if current == len(MIGRATIONS):
            return
        # Off while the scripts run: with it on, rebuilding a table (create, copy, drop, rename,
        # SQLite's way to change a column) would delete through ON DELETE CASCADE every row
        # that refers to the dropped table, or fail on the drop. It cannot change inside a
        # transaction, hence before each BEGIN; `foreign_key_check` then stands in for it.
        await self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                # The version bump rides in the same transaction as the script, so a crash
                # between them cannot leave a half-applied migration marked as done; on an
                # error the transaction is left open, and `open` closes it without a commit.
                await self.conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};")
                async with self.conn.execute("PRAGMA foreign_key_check") as cur:
                    broken = await cur.fetchall()
                if broken:
                    await self.conn.rollback()
                    table, rowid, parent, _ = broken[0]
                    raise StorageRefused(
                        f"migration to schema version {version} of {self.path} left "
                        f"{len(broken)} row(s) referring to missing ones (first: {table} "
                        f"row {rowid} -> {parent}); not applied"
                    )
                await self.conn.commit()
                log.info("storage.migrated", version=version)
        finally:
            await self.conn.execute("PRAGMA foreign_keys=ON")

    async def close(self) -> None:
        try:
            try:
                await self.conn.commit()
            finally:
                await self.conn.close()
        finally:
            # Only once the connection is closed: the next holder may replace the file.
            if self.lock is not None:
                self.lock.release()
                self.lock = None


def _run_one(conn: sqlite3.Connection, statement: Statement) -> Any:
    if not statement.sql:
        return None  # PostgreSQL only (storage.sql.take_turns)
    if isinstance(statement, Fetch):
        return conn.execute(statement.sql, statement.params).fetchall()
    if isinstance(statement, FetchOne):
        return conn.execute(statement.sql, statement.params).fetchone()
    if isinstance(statement, Execute):
        return conn.execute(statement.sql, statement.params).rowcount
    if isinstance(statement, Insert):
        return conn.execute(statement.sql, statement.params).lastrowid
    if isinstance(statement, ExecuteMany):
        conn.executemany(statement.sql, statement.rows)
        return None
    raise TypeError(f"not a statement: {statement!r}")


def _drive(conn: sqlite3.Connection, work: Unit[T]) -> T:
    """Run ``work`` to its end on ``conn`` (the connection's own thread), then commit."""
    try:
        statement = next(work)
        while True:
            statement = work.send(_run_one(conn, statement))
    except StopIteration as done:
        conn.commit()
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        conn.rollback()
        work.close()
        raise
