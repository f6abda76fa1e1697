"""A real, throwaway PostgreSQL server for the tests (Debian's `postgresql` package).

`PostgresServer` makes a fresh cluster in a temp dir (`initdb`, trust auth, no fsync), starts it
with `pg_ctl` on 127.0.0.1 and an OS-chosen port, and removes everything on `stop()`. Running as
root (CI does) the server runs as the `postgres` system user, which owns the temp dir: `initdb`
refuses to run as root.

Fixtures, registered for the whole suite by tests/conftest.py:

- `postgres_server` (session): one server for the run, started on first use;
- `postgres_dsn` (function): the DSN of a new empty database, dropped after the test.

Without PostgreSQL they fail in CI (`CI=true`), where .ci/run installs it, and skip elsewhere,
saying what to install. `MOMOBRIDGE_PG_BIN` may name the directory holding initdb and pg_ctl.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, unquote

import pytest

from tests.support.local_servers import (
    HOST,
    LocalServer,
    SharedServer,
    fail_or_skip,
)
from tests.support.local_servers import free_port as _free_port

BIN_ENV = "MOMOBRIDGE_PG_BIN"
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"  # the OS user the server runs as when the tests run as root
SUPERUSER = "postgres"  # the database superuser initdb creates (trust auth: no password)
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
COMMAND_TIMEOUT = 120  # seconds any initdb / pg_ctl call may take before it counts as failed
PORT_ATTEMPTS = 3  # a port picked free may be taken before the server binds it: try another
CONNECT_TIMEOUT = 30  # seconds asyncpg waits for a connection
INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql)"

# Fast and disposable: nothing here has to survive a crash.
SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "logging_collector": "off",
}

_PORT_IN_USE = re.compile(r"could not bind|address already in use|is another postmaster", re.I)


class PostgresUnavailable(Exception):
    """PostgreSQL could not be found or started; the message says why."""


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def find_bin_dir() -> Path:
    """The directory with initdb and pg_ctl: $MOMOBRIDGE_PG_BIN, else the newest Debian
    /usr/lib/postgresql/<version>/bin, else wherever PATH has them."""

    def complete(d: Path) -> bool:
        return all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))

    named = os.environ.get(BIN_ENV)
    if named:
        if not complete(Path(named)):
            raise PostgresUnavailable(f"{BIN_ENV}={named} has no executable initdb and pg_ctl")
        return Path(named)
    debian = sorted((Path(p) for p in glob.glob(DEBIAN_BIN_GLOB)), key=_version_key, reverse=True)
    for d in debian:
        if complete(d):
            return d
    initdb = shutil.which("initdb")
    if initdb and complete(Path(initdb).parent):
        return Path(initdb).parent
    raise PostgresUnavailable(f"no initdb and pg_ctl in {DEBIAN_BIN_GLOB} or on PATH")


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from / down to `path` lets other users through (o+x)."""
    for d in [path, *path.parents]:
        try:
            if not d.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class PostgresServer(LocalServer):
    """One throwaway PostgreSQL cluster. `start()` and `stop()` are synchronous (subprocesses);
    `create_database` / `drop_database` are async (asyncpg)."""

    _label = "PostgresServer"

    def __init__(self) -> None:
        super().__init__()
        self._bin: Path | None = None
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """initdb + pg_ctl start; raises PostgresUnavailable with the reason (and the server's
        log) if either fails. Everything made so far is removed on failure."""
        if self._port is not None:
            raise RuntimeError("PostgresServer already started")
        self._bin = find_bin_dir()
        self._run_as, self._owner = self._identity()
        base = None
        if self._owner is not None and not _traversable_by_others(Path(tempfile.gettempdir())):
            base = "/tmp"  # $TMPDIR is closed to the postgres user
        self._dir = Path(tempfile.mkdtemp(prefix="momobridge-pg-", dir=base))
        atexit.register(self.stop)
        try:
            if self._owner is not None:
                os.chown(self._dir, *self._owner)
            self._initdb()
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the server at once (`-m immediate`: the data is thrown away anyway) and removes
        its temp dir. Safe to call twice or after a failed start."""
        atexit.unregister(self.stop)
        if self._dir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():  # also after a start that timed out
            with contextlib.suppress(PostgresUnavailable):
                self._run(self._pg_ctl("-m", "immediate", "-w", "-t", str(START_TIMEOUT), "stop"))
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._port = None

    # -- where it is (and host, port) ---------------------------------------------------------

    @property
    def superuser(self) -> str:
        return SUPERUSER

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{quote(database, safe='')}"

    @property
    def data_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self._dir / "data"

    @property
    def socket_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self._dir / "sock"

    @property
    def log_file(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self._dir / "postgres.log"

    # -- databases ----------------------------------------------------------------------------

    async def create_database(self, name: str | None = None) -> str:
        """Creates a new empty database (a unique name unless one is given); returns its DSN."""
        import asyncpg

        name = name or f"test_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.admin_dsn, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)} TEMPLATE template0")
        finally:
            await conn.close()
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        """Drops a database (by name, or by the DSN create_database returned), closing any
        connection a test left open on it. A database already gone is no error."""
        import asyncpg

        if "://" in name:
            name = unquote(name.rsplit("/", 1)[1].split("?", 1)[0])
        conn = await asyncpg.connect(self.admin_dsn, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _identity() -> tuple[list[str], tuple[int, int] | None]:
        """The command prefix to run PostgreSQL's tools with, and the uid/gid to own the temp
        dir: as root, the postgres system user (via runuser, else setpriv); else ourselves."""
        if os.geteuid() != 0:
            return [], None
        try:
            user = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SYSTEM_USER!r} system user to run the server "
                "as (initdb refuses root; Debian's postgresql package creates that user)"
            ) from None
        owner = (user.pw_uid, user.pw_gid)
        if shutil.which("runuser"):
            return ["runuser", "-u", SYSTEM_USER, "--"], owner
        if shutil.which("setpriv"):
            return [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--init-groups",
                "--",
            ], owner
        raise PostgresUnavailable("running as root and neither runuser nor setpriv is on PATH")

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert self._dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        try:
            done = subprocess.run(
                [*self._run_as, *argv],
                cwd=self._dir,  # a cwd the postgres user may not read (/root) upsets initdb
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PostgresUnavailable(f"{Path(argv[0]).name} failed: {e}") from e
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise PostgresUnavailable(
                f"{Path(argv[0]).name} exited with {done.returncode}: {output[-2000:]}"
            )
        return done

    def _pg_ctl(self, *args: str) -> list[str]:
        assert self._bin is not None
        return [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), *args]

    def _initdb(self) -> None:
        assert self._bin is not None
        self._run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        # The socket dir inside the temp dir: nothing outside it (/var/run/postgresql) is used.
        self.socket_dir.mkdir(mode=0o700)
        if self._owner is not None:
            os.chown(self.socket_dir, *self._owner)
        lines = [f"{k} = {v}" for k, v in SETTINGS.items()]
        lines.append(f"unix_socket_directories = '{_quote_literal(str(self.socket_dir))}'")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/support/postgres.py\n" + "\n".join(lines) + "\n")

    def _start_on_free_port(self) -> None:
        error: PostgresUnavailable | None = None
        for _ in range(PORT_ATTEMPTS):
            port = self._pick_port()
            log_start = self._log_size()
            try:
                self._run(
                    self._pg_ctl(
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        str(START_TIMEOUT),
                        "-o",
                        f"-p {port}",
                        "start",
                    )
                )
            except PostgresUnavailable as e:
                log = self._log_tail(log_start)
                error = PostgresUnavailable(f"{e}\n--- server log ---\n{log}")
                if not _PORT_IN_USE.search(log):
                    raise error from None
                continue
            self._port = port
            return
        assert error is not None
        raise PostgresUnavailable(f"no free port after {PORT_ATTEMPTS} attempts: {error}")

    def _pick_port(self) -> int:
        return _free_port()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _unavailable(reason: str) -> NoReturn:
    fail_or_skip(
        "PostgreSQL",
        reason,
        ci_note="CI must run the PostgreSQL tests (.ci/run installs Debian's postgresql package)",
        install_hint=INSTALL_HINT,
    )


# The one server of this pytest process (or why it could not start), whichever registration of
# `postgres_server` asks first.
_shared: SharedServer[PostgresServer] = SharedServer(
    PostgresServer, PostgresUnavailable, lambda reason: _unavailable(reason)
)


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """One real PostgreSQL server for the whole run, started on first use and stopped when the
    run ends."""
    return _shared.get(request)


@pytest.fixture
async def postgres_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The DSN of a new, empty database of its own for this test; dropped afterwards."""
    dsn = await postgres_server.create_database()
    try:
        yield dsn
    finally:
        await postgres_server.drop_database(dsn)
