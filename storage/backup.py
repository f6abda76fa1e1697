"""Online copies of the database and putting one back, with SQLite's backup API.

A copy is taken through a plain sqlite3 connection beside the server's own: in WAL mode (what
`Database.open` sets) that connection holds one read snapshot for the whole copy, so the copy is
one consistent moment and the server's writers never wait on it. Copies are single
self-contained files (rollback-journal mode), checked with `PRAGMA integrity_check` before they
are renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.lock import DatabaseLock
from storage.migrations import MIGRATIONS

# Pages per backup step: the copy gives the GIL and the disk back between steps, and in
# rollback-journal mode (no snapshot to hold) the server's writers get in between them.
STEP_PAGES = 256
# How long a copy step waits on a writer's lock (rollback-journal mode only).
BUSY_MS = 5000


class BackupError(Exception):
    """A copy or a restore that was refused or failed; the message says why in one line."""


@dataclass(frozen=True)
class Copied:
    path: Path
    size: int
    schema_version: int
    seconds: float


def backup(
    db_path: Path,
    dest: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> Copied:
    """Copy the live database at ``db_path`` to ``dest`` (atomically: a temp file beside it,
    checked, then renamed). Refuses an existing ``dest`` unless ``force``. ``progress`` is
    called after each step with the pages remaining and the total."""
    started = time.monotonic()
    if not db_path.is_file():
        raise BackupError(f"no database at {db_path}")
    if dest.resolve() == db_path.resolve():
        raise BackupError(f"{dest} is the database itself")
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists; pass --force to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # mode=rw: an existing file only (a typo in the path must not create an empty database);
    # nothing is written through this connection.
    src = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        src.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        tmp = _copy_to_temp(
            src, dest.parent, dest.name, hold_snapshot=_is_wal(src), progress=progress
        )
    finally:
        src.close()
    try:
        version = _check(tmp)
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(dest.parent)
    return Copied(dest, dest.stat().st_size, version, time.monotonic() - started)


@dataclass(frozen=True)
class Restored:
    schema_version: int
    kept: Path | None  # where the database it replaced was moved, if there was one


def restore(src_path: Path, db_path: Path, *, replace: bool = False) -> Restored:
    """Put the copy at ``src_path`` in place of the database at ``db_path``. Refused while a
    server holds the database, and over an existing one unless ``replace``; the database it
    replaces is moved aside, never deleted."""
    if not src_path.is_file():
        raise BackupError(f"no backup at {src_path}")
    if db_path.exists() and src_path.resolve() == db_path.resolve():
        raise BackupError(f"{src_path} is the database itself")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Held to the end: a server started meanwhile is refused rather than opening a file that
    # is about to be replaced.
    lock = DatabaseLock.acquire(str(db_path))
    try:
        if db_path.exists() and not replace:
            raise BackupError(
                f"{db_path} exists; pass --force to replace it "
                "(it is kept as <db>.before-restore-<time>)"
            )
        src = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tmp = _copy_to_temp(src, db_path.parent, db_path.name, hold_snapshot=False)
        except sqlite3.DatabaseError as e:
            raise BackupError(f"{src_path} is not a readable SQLite database: {e}") from None
        finally:
            src.close()
        try:
            version = _check(tmp)
            if version < 1:
                raise BackupError(f"{src_path} is not a MomoBridge database (schema version 0)")
            _same_owner(tmp, db_path)
            _fsync(tmp)
            kept = _move_aside(db_path)
            os.replace(tmp, db_path)
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(db_path.parent)
    finally:
        lock.release()
    return Restored(version, kept)


def _copy_to_temp(
    src: sqlite3.Connection,
    folder: Path,
    name: str,
    *,
    hold_snapshot: bool,
    progress: Callable[[int, int], object] | None = None,
) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        dst = sqlite3.connect(tmp)
        try:
            if hold_snapshot:
                # One read transaction across every step: the copy is that moment's database.
                # Without it each step would take a fresh snapshot, and SQLite would restart
                # the copy whenever the server committed in between.
                src.execute("BEGIN")
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            try:
                step = None if progress is None else lambda _, left, total: progress(left, total)
                src.backup(dst, pages=STEP_PAGES, progress=step)
            finally:
                if hold_snapshot:
                    src.rollback()
            # The copy carries the source's WAL flag; a backup is better as one file.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _is_wal(conn: sqlite3.Connection) -> bool:
    return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"


def _check(path: Path) -> int:
    """The copy's schema version once `PRAGMA integrity_check` passed on it."""
    conn = sqlite3.connect(path)
    try:
        result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    if result != ["ok"]:
        raise BackupError(f"integrity check failed: {'; '.join(result[:3])}")
    if version > len(MIGRATIONS):
        raise BackupError(
            f"schema version {version} is newer than this build ({len(MIGRATIONS)}); "
            "upgrade MomoBridge first"
        )
    return version


def _move_aside(db_path: Path) -> Path | None:
    """Rename the database and its WAL (or hot journal) together to
    `<db>.before-restore-<time>`, so SQLite still pairs them if that file is ever opened; the
    -shm index is derived data and is dropped. Nothing of the old file may stay beside the new
    one: SQLite would replay a leftover WAL onto the restored database."""
    kept = None
    if db_path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = db_path.with_name(f"{db_path.name}.before-restore-{stamp}")
        n = 1
        while kept.exists():
            n += 1
            kept = db_path.with_name(f"{db_path.name}.before-restore-{stamp}-{n}")
        os.replace(db_path, kept)
    for suffix in ("-wal", "-journal"):
        side = Path(f"{db_path}{suffix}")
        if side.exists():
            if kept is not None:
                os.replace(side, f"{kept}{suffix}")
            else:
                side.unlink()
    _unlink(Path(f"{db_path}-shm"))
    return kept


def _same_owner(path: Path, like: Path) -> None:
    """The restored file gets the replaced one's mode and (if allowed) owner: a restore run as
    root must not leave a file the server's own user cannot write."""
    try:
        st = like.stat()
    except FileNotFoundError:
        return
    os.chmod(path, st.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        os.chown(path, st.st_uid, st.st_gid)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """The rename itself durable (POSIX); not possible everywhere, and then not needed."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
