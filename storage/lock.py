"""The running server's claim on its database: an exclusive advisory lock on `<db>.lock`.

SQLite's own locks are per transaction, so two servers on one file would both run (and each
recover the other's in-flight replies); `momobridge restore` must also know whether a server
has the file open before it replaces it. `flock` is tied to the open file, so the kernel drops
it when the process dies, even by SIGKILL: a stale lock file never blocks a restart. The file
itself is left in place on release, since deleting a lock file races with the next taker.
"""

from __future__ import annotations

import contextlib
import os

try:
    import fcntl
except ImportError:  # not on this platform (Windows): no claim is taken or checked
    fcntl = None


class StorageRefused(RuntimeError):
    """The database cannot be used as it is; the message says why in one line."""


class DatabaseInUse(StorageRefused):
    pass


def lock_path(db_path: str) -> str:
    return db_path + ".lock"


class DatabaseLock:
    """Held from `acquire` to `release`; never blocks (a second taker is refused at once)."""

    def __init__(self, fd: int | None, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, db_path: str) -> DatabaseLock:
        path = lock_path(db_path)
        if fcntl is None:
            return cls(None, path)
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError as denied:
            # A lock file this user may not write (one left by a restore run as root): flock
            # needs only an open file, so it still guards the database; the pid just cannot be
            # written. Without the file at all, the original refusal stands.
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise denied from None
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DatabaseInUse(f"another MomoBridge is using {db_path}{who}") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the refusal message of whoever comes next.
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
