"""The throwaway PostgreSQL server the storage tests run against (tests/support/postgres.py):
a working database per test, databases isolated from each other, loopback only, a port taken
before the server binds it retried, and a clear failure (CI) or skip (elsewhere) without it."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from tests.support import postgres

# postgres_dsn, postgres_server: imported here until tests/conftest.py registers them for the
# whole suite.
from tests.support.postgres import (  # noqa: F401
    PostgresServer,
    PostgresUnavailable,
    postgres_dsn,
    postgres_server,
)


async def test_a_fresh_database_works(postgres_dsn: str) -> None:  # noqa: F811
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        await conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        await conn.executemany("INSERT INTO notes (body) VALUES ($1)", [("héllo",), ("世界",)])
        rows = await conn.fetch("SELECT body FROM notes ORDER BY id")
        assert [r["body"] for r in rows] == ["héllo", "世界"]
    finally:
        await conn.close()


async def test_databases_are_isolated(
    postgres_server: PostgresServer,  # noqa: F811
    postgres_dsn: str,  # noqa: F811
) -> None:
    other = await postgres_server.create_database()
    assert other != postgres_dsn
    try:
        a = await asyncpg.connect(postgres_dsn)
        b = await asyncpg.connect(other)
        try:
            for conn, body in ((a, "in a"), (b, "in b")):
                await conn.execute("CREATE TABLE t (body text)")
                await conn.execute("INSERT INTO t VALUES ($1)", body)
            assert await a.fetchval("SELECT array_agg(body) FROM t") == ["in a"]
            assert await b.fetchval("SELECT array_agg(body) FROM t") == ["in b"]
        finally:
            await a.close()
        # Dropped even with a connection still open on it (b).
        await postgres_server.drop_database(other)
        await b.close()
    finally:
        await postgres_server.drop_database(other)  # already gone: no error
    admin = await asyncpg.connect(postgres_server.admin_dsn)
    try:
        names = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()
    assert other.rsplit("/", 1)[1] not in names
    assert postgres_dsn.rsplit("/", 1)[1] in names


def _listening(port: int) -> list[str] | None:
    """Local addresses (hex, as /proc shows them) of the TCP sockets listening on `port`; None
    without /proc/net/tcp."""
    if not Path("/proc/net/tcp").exists():
        return None
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


async def test_listens_on_loopback_only(postgres_server: PostgresServer) -> None:  # noqa: F811
    assert postgres_server.host == "127.0.0.1"
    assert postgres_server.admin_dsn == (
        f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    )
    conn = await asyncpg.connect(postgres_server.admin_dsn)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert str(await conn.fetchval("SELECT inet_server_addr()")) == "127.0.0.1"
    finally:
        await conn.close()
    listening = _listening(postgres_server.port)
    if listening is None:
        pytest.skip("no /proc/net/tcp to list listening sockets")
    assert listening == ["0100007F"]  # 127.0.0.1, no IPv6, no wildcard


async def test_a_port_taken_before_start_is_retried(
    monkeypatch: pytest.MonkeyPatch,
    postgres_server: PostgresServer,  # noqa: F811  (only so a machine without PostgreSQL skips)
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    monkeypatch.setattr(
        PostgresServer, "_pick_port", lambda self: next(ports, None) or postgres._free_port()
    )
    server = PostgresServer()
    try:
        server.start()
        assert server.port != taken.getsockname()[1]
        root = server.data_dir.parent
        conn = await asyncpg.connect(server.admin_dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.stop()
        taken.close()
    assert not root.exists()


def test_missing_postgres_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(postgres.BIN_ENV, str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="no executable initdb"):
        PostgresServer().start()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL not available"):
        postgres._unavailable("no initdb")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="install Debian's postgresql package"):
        postgres._unavailable("no initdb")
