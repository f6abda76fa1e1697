"""Online copies of the database and putting one back, with SQLite's backup API.

A copy is taken through a plain sqlite3 connection beside the server's own: in WAL mode (what
`Database.open` sets) that connection holds one read snapshot for the whole copy, so the copy is
one consistent moment and the server's writers never wait on it. Copies are single
self-contained files (rollback-journal mode), checked with `PRAGMA integrity_check` before they
are renamed into place.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
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
    _refuse_own_files(dest, db_path)
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


# What SQLite and the server keep beside the database: writing a copy over any of them
# (`--force`) would destroy live data or the server's claim on the file.
SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")


def _refuse_own_files(dest: Path, db_path: Path) -> None:
    db = db_path.resolve()
    ours = {db: "the database itself"}
    ours.update({Path(f"{db}{s}"): f"the database's {s.lstrip('-.')} file" for s in SIDE_FILES})
    what = ours.get(dest.resolve())
    if what is None and dest.exists():
        # Another name for one of them (a hard link) is the same file too.
        for path, name in ours.items():
            with contextlib.suppress(OSError):
                if os.path.samefile(dest, path):
                    what = name
                    break
    if what is not None:
        raise BackupError(f"{dest} is {what}; write the copy somewhere else")


@dataclass(frozen=True)
class Restored:
    schema_version: int
    kept: Path | None  # where the database it replaced was moved, if there was one


def restore(src_path: Path, db_path: Path, *, replace: bool = False) -> Restored:
    """Put the copy at ``src_path`` in place of the database at ``db_path``. Refused while a
    server holds the database, and over an existing one unless ``replace``; the database it
    replaces is kept beside it (`Restored.kept`), never deleted."""
    if not src_path.is_file():
        raise BackupError(f"no backup at {src_path}")
    if db_path.exists() and src_path.resolve() == db_path.resolve():
        raise BackupError(f"{src_path} is the database itself")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Held to the end: a server started meanwhile is refused rather than opening a file that
    # is about to be replaced.
    lock = DatabaseLock.acquire(str(db_path))
    try:
        # A lock file a restore run as root just created would keep the server's own user out.
        _give_to_owner(Path(lock.path), _owner(db_path))
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
            kept = _keep_old(db_path)
            # The one step that swaps the files: at every moment before it the old database
            # (with everything committed to it) is at db_path, and the new one after it.
            os.replace(tmp, db_path)
        except BaseException:
            _unlink(tmp)
            raise
        _drop_stale_side_files(db_path)
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


def _keep_old(db_path: Path) -> Path | None:
    """Keep the database about to be replaced as `<db>.before-restore-<time>`, one
    self-contained file, without ever taking it away from db_path.

    Its WAL is checkpointed into it first: a WAL is only read beside the file it belongs to, so
    renaming the two separately (or a crash between them) would lose the commits only the WAL
    holds. The kept name is a hard link, so db_path stays whole until the caller's single
    rename puts the new file there. Nothing of the old file may be left beside the new one
    after that rename: SQLite would replay a leftover WAL or hot journal onto it."""
    if not db_path.exists():
        _drop_stale_side_files(db_path)
        return None
    checkpointed = _checkpoint(db_path)
    kept = _link_or_copy(db_path, db_path.name + ".before-restore-")
    for suffix in ("-wal", "-journal"):
        side = Path(f"{db_path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_size > 0 and not checkpointed:
                # SQLite could not fold it in (a damaged file, another process reading): it
                # goes with the kept file under the matching name, so the pair can still be
                # opened together.
                _link_or_copy_to(side, Path(f"{kept}{suffix}"))
            # Before the swap, not after: a crash in between then leaves the old database
            # without a side file it no longer needs (or whose copy is kept), never the new
            # database beside an old WAL.
            side.unlink()
    _fsync_dir(db_path.parent)
    return kept


def _checkpoint(db_path: Path) -> bool:
    """Fold the database's WAL (or roll back its hot journal) into the file itself; whether
    that worked. The lock is held, so no server writes meanwhile."""
    with open(db_path, "rb") as f:
        if f.read(16) != b"SQLite format 3\0":
            # Not opened at all: SQLite deletes the WAL beside a file it cannot read, and the
            # caller keeps both as they are instead.
            return False
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error:
        return False
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        # A read first: it is what recovers a WAL and rolls back a hot journal.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        done = busy == 0
    except sqlite3.Error:
        done = False
    finally:
        # The last connection to close also deletes the (now empty) WAL and -shm.
        conn.close()
    return done


def _link_or_copy(path: Path, prefix: str) -> Path:
    """A second name for ``path`` beside it, `<prefix><time>[-n]`, that no other file had."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        name = path.with_name(f"{prefix}{stamp}" + ("" if n == 1 else f"-{n}"))
        try:
            _link_or_copy_to(path, name)
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")


def _link_or_copy_to(path: Path, name: Path) -> None:
    """``name`` as a hard link to ``path`` (FileExistsError if it is taken); a full copy where
    the file system has no hard links. A copy is written beside and renamed, so ``name`` is
    never a half-written file."""
    try:
        os.link(path, name)
        return
    except FileExistsError:
        raise
    except OSError:
        pass
    if name.exists():
        raise FileExistsError(name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name.name}.", suffix=".tmp", dir=name.parent)
    os.close(fd)
    try:
        shutil.copy2(path, tmp_name)
        _fsync(Path(tmp_name))
        os.replace(tmp_name, name)
    except BaseException:
        _unlink(Path(tmp_name))
        raise


def _drop_stale_side_files(db_path: Path) -> None:
    """The old database's WAL, hot journal and -shm index, if any are still beside the new file.

    Safe once the new file is in place: nothing has opened it yet (the lock is held), so every
    side file there is the old one's; its content was checkpointed or kept by `_keep_old`."""
    for suffix in ("-wal", "-journal", "-shm"):
        _unlink(Path(f"{db_path}{suffix}"))


def _owner(db_path: Path) -> tuple[int, int]:
    """Whose files these are: the database's owner, or for a new one, its folder's."""
    try:
        st = db_path.stat()
    except FileNotFoundError:
        st = db_path.parent.stat()
    return st.st_uid, st.st_gid


def _give_to_owner(path: Path, owner: tuple[int, int]) -> None:
    """Only root can give a file away, and only root's files need it: a restore run as root
    must not leave files the server, running as the folder's owner, cannot open."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(path, *owner)


def _same_owner(path: Path, like: Path) -> None:
    """The restored file gets the replaced one's mode and (if allowed) owner; with nothing to
    replace, the owner of its folder (if run as root)."""
    try:
        st = like.stat()
    except FileNotFoundError:
        _give_to_owner(path, _owner(like))
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
        _fsync(folder)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
