"""A server's claim on its PostgreSQL database for its whole run: a session advisory lock on a
connection of its own, exclusive for a bridge on its own, shared by a cluster's nodes (see
storage.postgres). The lock lives as long as that session: one that ends (a database restart,
a proxy's idle cut) is taken again by the next readiness probe, in a task of its own so a
probe's deadline never cuts it half-way; if another server took the database meanwhile, the
probe says so."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

import asyncpg
import structlog

from storage.lock import StorageRefused

log = structlog.get_logger(__name__)

Claim = Literal["alone", "shared"]

SERVER_LOCK = 0x6D6F6D70  # the advisory lock's key; every server of this project agrees on it
CLAIM_NAME = "momobridge claim"  # the claim's session, as pg_stat_activity names it
CONNECT_TIMEOUT = 10.0
CHECK_TIMEOUT = 1.0  # a probe's look at the session (a half-open connection answers nothing)
PROBE_WAIT = 1.0  # how long a probe waits for the claim being taken again


class DatabaseClaim:
    def __init__(self, url: str, kind: Claim, path: str) -> None:
        self._url = url
        self.kind = kind
        self._path = path  # the database, as errors name it (no password)
        self._conn: asyncpg.Connection | None = None
        self._again: asyncio.Task[None] | None = None
        self._lost: str | None = None
        # One look at a time: a session runs one query at once, and probes may come together.
        self._looking = asyncio.Lock()
        self._closed = False

    async def take(self) -> None:
        """At start: StorageRefused (with the reason) when the other kind of server has it."""
        self._conn = await self._locked()

    async def _locked(self) -> asyncpg.Connection:
        """A new session holding the lock; the session is ended on any failure."""
        conn: asyncpg.Connection | None = None
        try:
            # Idle by design: a server's idle_session_timeout must not end it.
            conn = await asyncpg.connect(
                self._url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"idle_session_timeout": "0", "application_name": CLAIM_NAME},
            )
            fn = "pg_try_advisory_lock" if self.kind == "alone" else "pg_try_advisory_lock_shared"
            async with asyncio.timeout(CONNECT_TIMEOUT):
                got = await conn.fetchval(f"SELECT {fn}($1)", SERVER_LOCK)
            if not got:
                raise StorageRefused(self._refusal())
            locked, conn = conn, None
            return locked
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise StorageRefused(
                f"cannot claim the database {self._path}: {type(e).__name__}: {e}"
            ) from None
        finally:
            if conn is not None:
                conn.terminate()

    def _refusal(self) -> str:
        if self.kind == "alone":
            return (
                f"another MomoBridge is using the database {self._path}; bridges share one "
                "database only as nodes of a cluster ([cluster] redis_url on each)"
            )
        return (
            f"a MomoBridge without [cluster] is using the database {self._path}; stop it or "
            "make it a node of the cluster too"
        )

    async def problem(self) -> str | None:
        """None while the claim holds; else why not (being taken again, or lost to another
        server)."""
        async with self._looking:
            return await self._look()

    async def _look(self) -> str | None:
        if self._closed:
            return "closed"
        conn = self._conn
        if conn is not None:
            try:
                if not conn.is_closed():
                    async with asyncio.timeout(CHECK_TIMEOUT):
                        await conn.fetchval("SELECT 1")
                    return None
            except (OSError, asyncpg.PostgresError, TimeoutError):
                pass
            if self._conn is conn:
                self._conn = None
                conn.terminate()
        again = self._again
        if again is None or again.done():
            again = self._again = asyncio.create_task(self._take_again(), name="pg-claim")
        done, _ = await asyncio.wait({again}, timeout=PROBE_WAIT)
        if not done:
            return "taking the claim on the database again"
        return None if self._conn is not None else (self._lost or "the claim is not held")

    async def _take_again(self) -> None:
        try:
            conn = await self._locked()
        except StorageRefused as e:
            self._lost = f"the claim on the database was lost: {e}"
            log.error("storage.claim_lost", reason=str(e))
            return
        except Exception as e:  # anything asyncpg raises besides: said, never a false OK
            self._lost = f"the claim on the database could not be taken again: {e!r}"
            log.exception("storage.claim_retake_failed")
            return
        if self._closed:
            conn.terminate()
            return
        self._conn, self._lost = conn, None
        log.info("storage.claim_taken_again")

    async def close(self) -> None:
        self._closed = True
        again, self._again = self._again, None
        if again is not None:
            again.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await again
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await conn.close()  # the claim ends with its session
            except (OSError, asyncpg.PostgresError, TimeoutError):
                conn.terminate()
