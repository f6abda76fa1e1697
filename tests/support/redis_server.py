"""A real, throwaway Redis server for the tests (Debian's `redis-server` package).

`RedisServer` starts `redis-server` as a child process on 127.0.0.1 and an OS-chosen port, with
persistence off (`--save ''`, `--appendonly no`) and its working dir in a temp dir, waits until it
answers PING, and on `stop()` terminates it and removes the temp dir.

Fixtures (tests/conftest.py registers them for the whole suite):

- `redis_server` (session): one server for the run, started on first use;
- `redis_url` (function): the URL of database 0 of that server, emptied (FLUSHALL) before the
  test, so every test starts from nothing whatever the one before it left.

Without redis-server they fail in CI (`CI=true`), where .ci/run installs it, and skip elsewhere,
saying what to install. `MOMOBRIDGE_REDIS_SERVER` may name the redis-server binary.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.local_servers import HOST, LocalServer, SharedServer, fail_or_skip
from tests.support.local_servers import free_port as _free_port

BIN_ENV = "MOMOBRIDGE_REDIS_SERVER"
START_TIMEOUT = 20.0  # seconds until the new server must answer PING
STOP_TIMEOUT = 10.0  # seconds SIGTERM gets before SIGKILL
PING_TIMEOUT = 1.0  # seconds one PING attempt may take while waiting for the start
POLL_INTERVAL = 0.02  # between PING attempts: a child process has no readiness event to wait on
PORT_ATTEMPTS = 3  # a port picked free may be taken before the server binds it: try another
CLIENT_TIMEOUT = 10.0  # socket timeout of the fixture's own client (FLUSHALL)
INSTALL_HINT = "install Debian's redis-server package (apt-get install redis-server)"

_PORT_IN_USE = re.compile(r"address already in use|could not create server tcp", re.I)


class RedisUnavailable(Exception):
    """redis-server could not be found or started; the message says why."""


def find_redis_server() -> str:
    """The redis-server binary: $MOMOBRIDGE_REDIS_SERVER, else the one on PATH, else Debian's."""
    named = os.environ.get(BIN_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise RedisUnavailable(f"{BIN_ENV}={named} is not an executable")
        return named
    found = shutil.which("redis-server")
    if found:
        return found
    # PATH may lack /usr/bin/ in odd environments; Debian puts it there.
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    raise RedisUnavailable("no redis-server on PATH or in /usr/bin")


def ping(port: int, timeout: float = PING_TIMEOUT) -> bool:
    """Whether a Redis server on HOST:port answers PING (a blocking one-shot, for start/stop)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(LocalServer):
    """One throwaway redis-server. `start()` and `stop()` are synchronous (a child process)."""

    _label = "RedisServer"

    def __init__(self, port: int | None = None) -> None:
        """`port`: listen there (a test restarting "the same" Redis after an outage); by
        default a free port the OS picks."""
        super().__init__()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fixed_port = port

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the server and waits until it answers PING; raises RedisUnavailable with the
        reason (and the server's log) otherwise. Everything made so far is removed on failure."""
        if self._dir is not None:
            raise RuntimeError("RedisServer already started")
        binary = find_redis_server()
        self._dir = Path(tempfile.mkdtemp(prefix="momobridge-redis-"))
        atexit.register(self.stop)
        try:
            self._start_on_free_port(binary)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminates the server (SIGTERM, SIGKILL after STOP_TIMEOUT) and removes its temp dir.
        Safe to call twice or after a failed start."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._port = None

    # -- where it is (and host, port) ---------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of database 0 (redis-py's `from_url` form)."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("RedisServer is not running")
        return self._proc.pid

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("RedisServer is not started")
        return self._dir

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- internals ----------------------------------------------------------------------------

    def _argv(self, binary: str, port: int) -> list[str]:
        return [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_file),
        ]

    def _start_on_free_port(self, binary: str) -> None:
        error: RedisUnavailable | None = None
        for _ in range(1 if self._fixed_port else PORT_ATTEMPTS):
            port = self._fixed_port or _free_port()
            log_start = self._log_size()
            try:
                self._proc = subprocess.Popen(
                    self._argv(binary, port),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    # Its own process group: a Ctrl-C of the test run is not also sent to it
                    # before stop() has had the chance to terminate it in order.
                    start_new_session=True,
                )
            except OSError as e:
                raise RedisUnavailable(f"cannot run {binary}: {e}") from e
            try:
                self._wait_ready(port)
            except RedisUnavailable as e:
                self._terminate()
                log = self._log_tail(log_start)
                error = RedisUnavailable(f"{e}\n--- server log ---\n{log}")
                if not _PORT_IN_USE.search(log):
                    raise error from None
                continue
            self._port = port
            return
        assert error is not None
        if self._fixed_port:
            raise error
        raise RedisUnavailable(f"no free port after {PORT_ATTEMPTS} attempts: {error}")

    def _wait_ready(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RedisUnavailable(f"redis-server exited with {code} on start")
            if ping(port):
                return
            if time.monotonic() >= deadline:
                raise RedisUnavailable(f"redis-server did not answer PING within {START_TIMEOUT}s")
            time.sleep(POLL_INTERVAL)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def unavailable(reason: str) -> NoReturn:
    """Fails the test in CI, where redis-server must be there; skips it elsewhere."""
    fail_or_skip(
        "redis-server",
        reason,
        ci_note="CI must run the Redis tests (.ci/run installs Debian's redis-server package)",
        install_hint=INSTALL_HINT,
    )


# The one server of this pytest process (or why it could not start), whichever registration of
# `redis_server` asks first.
_shared: SharedServer[RedisServer] = SharedServer(
    RedisServer, RedisUnavailable, lambda reason: unavailable(reason)
)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """One real redis-server for the whole run, started on first use and stopped when the run
    ends."""
    server = _shared.get(request)
    if not server.running():
        # A test stopped or killed the shared server: say so instead of failing mysteriously.
        pytest.fail("the shared redis-server is no longer running (a test stopped it?)")
    return server


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The URL of an empty database (database 0, flushed before the test) for this test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        redis_server.url,
        socket_timeout=CLIENT_TIMEOUT,
        socket_connect_timeout=CLIENT_TIMEOUT,
    )
    try:
        await client.flushall()
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    yield redis_server.url
