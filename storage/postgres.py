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
from typing import Any, Literal, TypeVar

import asyncpg
import structlog

from storage.lock import StorageRefused
from storage.migrations import MIGRATIONS
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
Claim = Literal["alone", "shared"]

# Any number; the bridges sharing a database agree on it.
MIGRATION_LOCK = 0x6D6F6D6F
SERVER_LOCK = 0x6D6F6D70  # held by each server for its run (see the module's docstring)
CLAIM_NAME = "momobridge claim"  # the claim's session, as pg_stat_activity names it
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
        self._claim: asyncpg.Connection | None = None
        self._claim_url = ""
        self._claim_kind: Claim = "alone"

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
                await db._take_claim(url, claim)
            await db._migrate()
        except BaseException:
            await db.close()
            raise
        return db

    async def _take_claim(self, url: str, claim: Claim) -> None:
        self._claim_url, self._claim_kind = url, claim
        try:
            # Idle by design: a server's idle_session_timeout must not end it.
            conn = await asyncpg.connect(
                url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"idle_session_timeout": "0", "application_name": CLAIM_NAME},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise StorageRefused(
                f"cannot connect to PostgreSQL at {self.path}: {type(e).__name__}: {e}"
            ) from None
        self._claim = conn
        fn = "pg_try_advisory_lock" if claim == "alone" else "pg_try_advisory_lock_shared"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                got = await conn.fetchval(f"SELECT {fn}($1)", SERVER_LOCK)
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise StorageRefused(
                f"cannot claim the database {self.path}: {type(e).__name__}: {e}"
            ) from None
        if not got:
            if claim == "alone":
                why = (
                    f"another MomoBridge is using the database {self.path}; bridges share "
                    "one database only as nodes of a cluster ([cluster] redis_url on each)"
                )
            else:
                why = (
                    f"a MomoBridge without [cluster] is using the database {self.path}; stop "
                    "it or make it a node of the cluster too"
                )
            raise StorageRefused(why)

    async def claim_problem(self) -> str | None:
        """Why this server no longer holds its claim on the database, if it does not (a
        readiness probe). A claim whose connection dropped (a database restart, a proxy) is
        taken again; refused, another server took the database meanwhile."""
        conn = self._claim
        if not self._claim_url or (conn is not None and not conn.is_closed()):
            return None
        self._claim = None
        try:
            await self._take_claim(self._claim_url, self._claim_kind)
        except StorageRefused as e:
            stale, self._claim = self._claim, None
            if stale is not None:
                stale.terminate()
            log.error("storage.claim_lost", reason=str(e))
            return f"the claim on the database was lost: {e}"
        log.info("storage.claim_taken_again")
        return None

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
                if claim is not None:
                    await claim.close()  # the claim ends with its session
        except TimeoutError:
            self._pool.terminate()
            if claim is not None:
                claim.terminate()


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
