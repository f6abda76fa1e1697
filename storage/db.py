"""The database handle: one aiosqlite connection, WAL mode, numbered migrations at start."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import structlog

from storage.migrations import MIGRATIONS

log = structlog.get_logger(__name__)


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: str) -> Database:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path)
        conn.row_factory = aiosqlite.Row
        db = cls(conn, path)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            await db._migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def _migrate(self) -> None:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} is at schema version {current}, newer than this build "
                f"({len(MIGRATIONS)}); upgrade MomoBridge or use another storage.path"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # executescript commits implicitly; the version bump rides in the same script so a
            # crash between them cannot leave a half-applied migration marked as done.
            await self.conn.executescript(
                f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
            )
            log.info("storage.migrated", version=version)

    async def close(self) -> None:
        try:
            await self.conn.commit()
        finally:
            await self.conn.close()
