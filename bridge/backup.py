"""`momobridge backup` and `momobridge restore`: the commands around storage/backup.py.

Both find the database where `serve` does (`[storage] path`, or a `sqlite:///` url, of the same
config, relative to the working directory; a PostgreSQL database is refused: pg_dump is its
tool) and answer in one line: what was done, or why not (exit status 1). Paths are printed
absolute, so a relative storage.path run from another directory shows where it went.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from bridge.config import Config
from storage.backup import BackupError, backup, restore
from storage.lock import DatabaseInUse
from storage.migrations import MIGRATIONS


def _absolute(path: str) -> Path:
    # abspath, not resolve: the path as the user would type it, without following symlinks.
    return Path(os.path.abspath(path))


def _not_sqlite(config: Config, command: str) -> int | None:
    """With PostgreSQL the database is the server's to back up: say how, exit 1."""
    if not config.storage.postgres:
        return None
    print(
        f"{command} works on a SQLite database; this configuration uses PostgreSQL "
        "([storage] url): back it up with pg_dump and restore it with pg_restore",
        file=sys.stderr,
    )
    return 1


def _sqlite_file(config: Config) -> Path:
    return _absolute(config.storage.database)


def backup_command(config: Config, dest: str, *, force: bool = False) -> int:
    refused = _not_sqlite(config, "backup")
    if refused is not None:
        return refused
    db = _sqlite_file(config)
    try:
        copied = backup(db, _absolute(dest), force=force)
    except (BackupError, sqlite3.Error, OSError) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    print(
        f"backed up {db} to {copied.path}: {copied.size} bytes, schema version "
        f"{copied.schema_version}, integrity ok ({copied.seconds:.2f} s)"
    )
    return 0


def restore_command(config: Config, src: str, *, force: bool = False) -> int:
    refused = _not_sqlite(config, "restore")
    if refused is not None:
        return refused
    db = _sqlite_file(config)
    source = _absolute(src)
    if not db.exists():
        # Said before the work, and on success or not: a storage.path that is relative, or
        # mistyped, otherwise creates a database nobody will serve without a word.
        print(f"no database at {db} yet: restoring into a new file")
    try:
        # The old file is kept either way; --force only confirms that replacing it is meant.
        done = restore(source, db, replace=force)
    except DatabaseInUse as e:
        print(f"restore refused: {e}; stop it first", file=sys.stderr)
        return 1
    except (BackupError, sqlite3.Error, OSError) as e:
        print(f"restore failed: {e}", file=sys.stderr)
        return 1
    line = f"restored {source} to {db} (schema version {done.schema_version}"
    if done.schema_version < len(MIGRATIONS):
        line += f"; upgraded to {len(MIGRATIONS)} when the server starts"
    line += ")"
    if done.kept is not None:
        line += f"; the previous database is kept as {done.kept}"
    print(line)
    return 0
