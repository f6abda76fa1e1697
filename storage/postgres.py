"""The PostgreSQL database (``[storage] url = "postgresql://..."``): an asyncpg pool, the same
numbered migrations as SQLite (storage.migrations, read by storage.sql.pg_ddl), and the same
units of statements.

Several bridges may share one database: migrations take an advisory lock, so the first to
start migrates and the others wait for it, then find the schema current.

Only bridges of one cluster may share it, though: a bridge on its own keeps per-user order and
limits in its memory and settles every reply left in flight at start, so a second one (or a
cluster node) on its database would break both. A server claims the database for its whole run
with a session advisory lock on a connection of its own: exclusive for a bridge on its own,
shared for cluster nodes, so the wrong mix is refused at start, with a reason.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import asyncpg
import structlog

from storage.lock import StorageRefused
from storage.migrations import MIGRATIONS
from storage.pg_claim import Claim, DatabaseClaim
from storage.sql import (
    Execute,
    ExecuteMany,
    Fetch,
    FetchOne,
    Insert,
    Statement,
    Unit,
    pg_ddl,
    pg_sql,
    pg_statement,
    rowcount,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Any number; the bridges sharing a database agree on it.
MIGRATION_LOCK = 0x6D6F6D6F
CONNECT_TIMEOUT = 10.0
# Connections per bridge: writes are short and few at a time, reads are small.
POOL_MIN = 1
POOL_MAX = 10
# One statement; a lock waited on; a pooled connection waited for.
COMMAND_TIMEOUT = 30.0
LOCK_TIMEOUT = 10.0
ACQUIRE_TIMEOUT = 10.0


def redacted(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in credentials else url


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.path = redacted(url)
        self._claim: DatabaseClaim | None = None

    @classmethod
    async def open(cls, url: str, *, claim: Claim | None = None) -> PostgresDatabase:
        """``claim``: a server's claim on the database for its run ("alone": a bridge on its
        own; "shared": a cluster node); StorageRefused when the other kind holds it."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                # A lock (another writer's turn, a table lock) waited on longer is an error,
                # not a hang that holds a pooled connection.
                server_settings={"lock_timeout": f"{int(LOCK_TIMEOUT * 1000)}"},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise StorageRefused(
                f"cannot connect to PostgreSQL at {redacted(url)}: {type(e).__name__}: {e}"
            ) from None
        db = cls(pool, url)
        try:
            if claim is not None:
                db._claim = DatabaseClaim(url, claim, db.path)
                await db._claim.take()
            await db._migrate()
        except BaseException:
            await db.close()
            raise
        return db

    async def claim_problem(self) -> str | None:
        """Why this server no longer holds its claim on the database, if it does not (the
        readiness probe asks; see storage.pg_claim)."""
        return None if self._claim is None else await self._claim.problem()

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # One bridge migrates at a time; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            )
            current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if current > len(MIGRATIONS):
                raise StorageRefused(
                    f"database {self.path} is at schema version {current}, newer than this "
                    f"build ({len(MIGRATIONS)}); upgrade MomoBridge or use another database"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                await conn.execute(pg_ddl(script))
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                log.info("storage.migrated", version=version, database="postgresql")

    async def unit(self, work: Unit[T]) -> T:
        """Run a unit of statements in one transaction (committed when it returns, rolled back
        when it raises)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            try:
                statement = next(work)
                while True:
                    statement = work.send(await _run_one(conn, statement))
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                work.close()

    async def fetch(
        self, sql: str, params: tuple[object, ...] = (), *, pg: str | None = None
    ) -> list[Any]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return list(await conn.fetch(pg_sql(pg or sql), *_params(params)))

    async def fetchone(
        self, sql: str, params: tuple[object, ...] = (), *, pg: str | None = None
    ) -> Any:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await conn.fetchrow(pg_sql(pg or sql), *_params(params))

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def close(self) -> None:
        claim, self._claim = self._claim, None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()
        if claim is not None:
            await claim.close()  # bounded by its own timeouts


def _params(params: tuple[Any, ...] | Any) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL, which SQLite stored as given: it becomes U+FFFD (as a
    lone surrogate does elsewhere), so a user's NUL is a replaced character, not a crash."""
    return tuple(
        p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params
    )


async def _run_one(conn: asyncpg.Connection, statement: Statement) -> Any:
    sql = pg_statement(statement)
    if isinstance(statement, Fetch):
        return list(await conn.fetch(sql, *_params(statement.params)))
    if isinstance(statement, FetchOne):
        return await conn.fetchrow(sql, *_params(statement.params))
    if isinstance(statement, Execute):
        return rowcount(await conn.execute(sql, *_params(statement.params)))
    if isinstance(statement, Insert):
        return await conn.fetchval(sql, *_params(statement.params))
    if isinstance(statement, ExecuteMany):
        await conn.executemany(sql, [_params(row) for row in statement.rows])
        return None
    raise TypeError(f"not a statement: {statement!r}")
