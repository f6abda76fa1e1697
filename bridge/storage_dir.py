"""Before the database opens: can the bridge write where it keeps its state?

Without this check a directory the bridge may not write (typically a Docker bind mount of a host
directory owned by another user) shows up as SQLite's "unable to open database file" and a
traceback, which names neither the directory nor the fix. Here it is one message that does.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# What else lives beside the database and must stay writable: SQLite's WAL files and the
# server's lock file (suffixes of the database's name). The admin code is only read once it
# exists; the embedded sandbox's database is written only when that sandbox runs.
_COMPANIONS = ("-wal", "-shm", ".lock")
_READ_ONLY = ("admin_code",)
SANDBOX_DB = "sandbox.db"


class StorageNotWritable(PermissionError):
    """Raised by `check_storage_dir`. A PermissionError (an OSError), so `momobridge serve`
    reports it as a failed start in one log line and exits 1."""


def check_storage_dir(db_path: str, *, sandbox: bool = False) -> None:
    """Raise StorageNotWritable unless the database's directory and the files already in it that
    the bridge writes can be written by this process (``sandbox``: the embedded sandbox's
    database too), and those it only reads can be read. Writes (and removes) a probe file:
    permission bits alone do not tell (ACLs, read-only mounts, root squashing on network
    filesystems)."""
    if db_path == ":memory:":
        return
    db = Path(db_path).absolute()
    directory = db.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _not_writable(_nearest_existing(directory), directory, e) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _not_writable(directory, directory, e) from None
    written = [db, *(db.with_name(db.name + suffix) for suffix in _COMPANIONS)]
    if sandbox:
        written.append(directory / SANDBOX_DB)
    opened = [(p, os.O_RDWR) for p in written]
    opened += [(directory / name, os.O_RDONLY) for name in _READ_ONLY]
    for path, mode in opened:
        try:
            os.close(os.open(path, mode))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _not_writable(path, directory, e) from None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(target: Path, directory: Path, error: OSError) -> StorageNotWritable:
    uid, gid = os.getuid(), os.getgid()
    try:
        st = target.stat()
        owner = f"owned by uid {st.st_uid}, mode {st.st_mode & 0o7777:o}"
    except OSError:
        owner = "owner unknown"
    if error.errno == errno.EROFS:
        fix = "mount it read-write, or point storage.path at a writable place"
    else:
        # In the image the bridge is uid 10001 and /data is usually a bind-mounted host
        # directory: the fix is made on the host, to the directory mounted there.
        fix = (
            f"give the directory to uid {uid}: for a Docker bind mount on {directory}, run "
            f"`sudo chown -R {uid}:{gid} <the host directory>` on the host (with the "
            f"project's docker-compose.yml: `sudo chown -R {uid}:{gid} ./data`); or point "
            "storage.path at a writable place"
        )
    # One argument only: str() of the error is then the message, without an "[Errno 13]" prefix.
    return StorageNotWritable(
        f"cannot write {target} ({owner}; the bridge runs as uid {uid}, gid {gid}; "
        f"{error.strerror or error}). The database and admin_code are kept in {directory}. "
        f"Fix: {fix}.",
    )
