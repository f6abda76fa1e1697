"""What the throwaway local servers of the tests (tests/support/postgres.py, redis_server.py)
have in common: a free loopback port, failing in CI but skipping elsewhere when the server is
missing, the host/port/context-manager plumbing and its log, and the one shared server per
pytest process behind each session fixture.
"""

from __future__ import annotations

import abc
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Generic, NoReturn, Self, TypeVar

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A port on HOST the OS says is free now (it may be taken before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def fail_or_skip(what: str, reason: str, *, ci_note: str, install_hint: str) -> NoReturn:
    """`what` is not available: fails the test in CI, where it must be there; skips it elsewhere."""
    if in_ci():
        pytest.fail(f"{what} not available: {reason}; {ci_note}", pytrace=False)
    pytest.skip(f"{what} not available: {reason}; {install_hint}")


class LocalServer(abc.ABC):
    """Base of one throwaway server on HOST: subclasses implement `start()`, `stop()` (safe to
    call twice) and `log_file`, and set `_port` while it runs."""

    _label: ClassVar[str]  # the class's name, for its error messages

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._port: int | None = None

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self._label} is not running")
        return self._port

    @property
    @abc.abstractmethod
    def log_file(self) -> Path: ...

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_tail(self, start: int) -> str:
        """What this attempt wrote to the log (appended from `start`), its last 3000 characters."""
        try:
            with self.log_file.open("rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")[-3000:] or "(empty log)"
        except OSError:
            return "(no log)"


S = TypeVar("S", bound=LocalServer)


class SharedServer(Generic[S]):
    """The one server of this pytest process, or why it could not start: shared by every
    registration of a session fixture (a test module importing the fixture besides
    tests/conftest.py gets its own session fixture, which must not start a second server or
    retry a failed start)."""

    def __init__(
        self,
        new: Callable[[], S],
        error: type[Exception],
        unavailable: Callable[[str], NoReturn],
    ) -> None:
        self._new = new
        self._error_type = error
        self._unavailable = unavailable
        self._server: S | None = None
        self._error: str | None = None

    def get(self, request: pytest.FixtureRequest) -> S:
        """The server, started on first use and stopped when the run ends; a start that failed
        with `error` is not retried, and makes every use fail or skip (`unavailable`)."""
        if self._server is None and self._error is None:
            server = self._new()
            try:
                server.start()
            except self._error_type as e:
                self._error = str(e)
            else:
                self._server = server
                request.config.add_cleanup(self.stop)
        if self._server is None:
            self._unavailable(str(self._error))
        return self._server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
