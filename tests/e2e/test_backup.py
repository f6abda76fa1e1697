"""Backups and restores of a running bridge's database, the claim a server holds on its file,
and schema versions at start (an upgrade keeps the rows, a newer schema is refused).

Clients chat with the embedded MomoHub sandbox over real sockets while `momobridge backup`
copies the database, in a thread and as a real process; the copies are restored and checked.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import storage.backup as backup_module
from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.app import App
from storage import Storage
from storage.backup import BackupError, backup, restore
from storage.lock import DatabaseInUse, DatabaseLock
from storage.migrations import MIGRATIONS
from tests.conftest import Bridge, make_config
from tests.support.hub_client import HubClient

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
WAIT = 30.0
CHATTERS = 4

Factory = Callable[..., Awaitable[Bridge]]


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


class Acks:
    """Every message id the bridge acknowledged, in the order the acks arrived, with a way to
    wait (from any thread) for more of them."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._grew = threading.Condition()

    def add(self, mid: int) -> None:
        with self._grew:
            self.ids.append(mid)
            self._grew.notify_all()

    def wait_count(self, n: int, timeout: float = WAIT) -> None:
        """Blocking: for a thread (the backup's progress hook), never the event loop."""
        with self._grew:
            if not self._grew.wait_for(lambda: len(self.ids) >= n, timeout):
                raise AssertionError(f"only {len(self.ids)} acks of {n}")


async def chat(c: HubClient, name: str, acks: Acks, stop: asyncio.Event) -> None:
    """Message after message to Momo, each acked and answered before the next."""
    for i in itertools.count():
        if stop.is_set():
            return
        rid = await c.send("onebot", "message", text(f"{name} says {i}"), id=MOMO)
        ack = await c.reply(rid, WAIT)
        assert ack["code"] == 0, ack
        acks.add(ack["data"]["message_id"])
        await c.stream(rid, WAIT)


async def wait_acks(acks: Acks, n: int) -> None:
    await asyncio.wait_for(asyncio.to_thread(acks.wait_count, n), WAIT)


def stored_ids(db: Path) -> set[int]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM messages")}


def integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def sidecars(db: Path) -> list[str]:
    """The database's WAL and shared-memory files, if any are there."""
    return [p.name for p in db.parent.iterdir() if p.name in (f"{db.name}-wal", f"{db.name}-shm")]


def write_config(tmp_path: Path, db: Path, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n\n[storage]\npath = "{db}"\n\n'
        '[log]\nlevel = "warning"\n\n[momohub]\nenabled = false\n',
        encoding="utf-8",
    )
    return path


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`momobridge ARGS` as a real process; its exit status, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backup_while_clients_chat_holds_every_acked_message(
    bridge_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await bridge_factory(momohub={"enabled": True})
    db = Path(b.config.storage.path)
    acks = Acks()
    stop = asyncio.Event()
    clients = [await b.client(f"chatter-{i}") for i in range(CHATTERS)]
    chats = [
        asyncio.create_task(chat(c, f"chatter-{i}", acks, stop)) for i, c in enumerate(clients)
    ]
    try:
        await wait_acks(acks, 3 * CHATTERS)

        # In a thread, one page per step; after the first step the copy waits until the bridge
        # has acknowledged more messages, so they commit while the copy holds its snapshot.
        monkeypatch.setattr(backup_module, "STEP_PAGES", 1)
        steps: list[int] = []
        after_first_step: list[int] = []

        def hold_after_first_step(remaining: int, total: int) -> None:
            if not steps:
                first = len(acks.ids)
                acks.wait_count(first + 2 * CHATTERS)
                after_first_step.extend(acks.ids[first:])
            steps.append(remaining)

        acked_before = set(acks.ids)
        in_thread = tmp_path / "backups" / "in-thread.db"
        copied = await asyncio.to_thread(backup, db, in_thread, progress=hold_after_first_step)
        assert len(steps) > 1 and len(after_first_step) >= 2 * CHATTERS
        assert copied.size == in_thread.stat().st_size and copied.schema_version == len(MIGRATIONS)

        # As the command, while the chat goes on.
        await wait_acks(acks, len(acks.ids) + CHATTERS)
        acked_before_cli = set(acks.ids)
        by_cli = tmp_path / "backups" / "by-cli.db"
        cfg = write_config(tmp_path, db)
        code, out, err = await cli("backup", str(by_cli), "--config", str(cfg), cwd=tmp_path)
        assert code == 0, err
        assert f"to {by_cli}:" in out and f"schema version {len(MIGRATIONS)}" in out
        assert "integrity ok" in out
        # The chat went on through both copies.
        await wait_acks(acks, len(acks.ids) + CHATTERS)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*chats), WAIT)

    for copy, before in ((in_thread, acked_before), (by_cli, acked_before_cli)):
        assert [p.name for p in copy.parent.iterdir() if p.name.endswith(".tmp")] == []
        restored = tmp_path / "restored" / copy.name
        done = await asyncio.to_thread(restore, copy, restored)
        assert done.kept is None and done.schema_version == len(MIGRATIONS)
        assert integrity(restored) == ["ok"]
        ids = stored_ids(restored)
        assert before <= ids, sorted(before - ids)
        assert ids <= stored_ids(db)
    # The in-thread copy is the moment its snapshot was taken: of the messages acknowledged
    # after its first step, at least those sent after that moment are not in it (each client
    # has at most one message stored but not yet acknowledged).
    late = set(after_first_step) - stored_ids(tmp_path / "restored" / in_thread.name)
    assert len(late) >= CHATTERS, late


async def test_restore_is_refused_while_the_bridge_runs_and_works_once_stopped(
    bridge_factory: Factory, tmp_path: Path
) -> None:
    b = await bridge_factory(momohub={"enabled": True})
    db = Path(b.config.storage.path)
    cfg = write_config(tmp_path, db)
    c = await b.client("keeper")

    async def say(t: str) -> int:
        rid = await c.send("onebot", "message", text(t), id=MOMO)
        ack = await c.reply(rid)
        assert ack["code"] == 0, ack
        await c.stream(rid)
        return int(ack["data"]["message_id"])

    kept_by_backup = await say("before the backup")
    copy = tmp_path / "copy.db"
    code, _, err = await cli("backup", str(copy), "--config", str(cfg), cwd=tmp_path)
    assert code == 0, err
    only_live = await say("after the backup")

    # A second backup to the same file is refused without --force, and then written.
    code, _, err = await cli("backup", str(copy), "--config", str(cfg), cwd=tmp_path)
    assert code == 1 and "exists; pass --force" in err
    assert only_live not in stored_ids(copy)

    code, out, err = await cli("restore", str(copy), "--config", str(cfg), "--force", cwd=tmp_path)
    assert code == 1, out
    assert f"another MomoBridge is using {db} (pid {os.getpid()})" in err
    assert "Traceback" not in err
    with pytest.raises(DatabaseInUse):
        restore(copy, db, replace=True)
    assert only_live in stored_ids(db)  # untouched

    await b.close_clients()
    await b.app.stop()
    code, out, err = await cli("restore", str(copy), "--config", str(cfg), cwd=tmp_path)
    assert code == 1 and "exists; pass --force to replace it" in err
    code, out, err = await cli("restore", str(copy), "--config", str(cfg), "--force", cwd=tmp_path)
    assert code == 0, err
    assert f"restored {copy} to {db}" in out
    kept = Path(out.rsplit("the previous database is kept as ", 1)[1].strip())
    assert kept.parent == db.parent and kept.name.startswith(f"{db.name}.before-restore-")
    # The replaced database is kept whole, with what the backup lacks.
    assert integrity(kept) == ["ok"] and only_live in stored_ids(kept)

    # The bridge starts on the restored database: the message from before the backup is
    # there, and new ones are stored after it.
    b.app = App(b.config)
    await b.app.start()
    assert b.app.storage is not None
    assert await b.app.storage.messages.get(kept_by_backup) is not None
    assert await b.app.storage.messages.get(only_live) is None
    c = await b.client("keeper")
    assert await say("after the restore") > kept_by_backup


async def test_a_second_server_on_the_same_database_is_refused(
    bridge: Bridge, tmp_path: Path
) -> None:
    db = Path(bridge.config.storage.path)
    second = App(bridge.config)
    with pytest.raises(DatabaseInUse, match=f"another MomoBridge is using {db}"):
        await second.start()
    await second.stop()
    cfg = write_config(tmp_path, db)
    code, _, err = await cli("serve", "--config", str(cfg), cwd=tmp_path)
    assert code == 1
    line = f"momobridge: another MomoBridge is using {db} (pid {os.getpid()})"
    assert line in err.splitlines() and "Traceback" not in err
    # The running bridge was not disturbed.
    c = await bridge.client("still-here")
    assert not c.closed.is_set()


async def test_a_database_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "data" / "bridge.db"
    db.parent.mkdir()
    newer = len(MIGRATIONS) + 1
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE future (a INTEGER)")
        conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    cfg = write_config(tmp_path, db)
    code, _, err = await cli("serve", "--config", str(cfg), cwd=tmp_path)
    assert code == 1
    assert (
        f"momobridge: database {db} is at schema version {newer}, newer than this build "
        f"({len(MIGRATIONS)}); upgrade MomoBridge or use another storage.path"
    ) in err.splitlines()
    assert "Traceback" not in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == newer
    conn.close()

    # Nor is such a database restored.
    target = tmp_path / "other" / "bridge.db"
    code, _, err = await cli(
        "restore", str(db), "--config", str(write_config(tmp_path, target, "o.toml")), cwd=tmp_path
    )
    assert code == 1 and f"schema version {newer} is newer than this build" in err
    assert not target.exists()
    with pytest.raises(BackupError, match="newer than this build"):
        restore(db, target)


@pytest.mark.parametrize("old", [1, len(MIGRATIONS) // 2, len(MIGRATIONS) - 1])
async def test_an_upgrade_at_start_keeps_the_data(
    bridge_factory: Factory, tmp_path: Path, old: int
) -> None:
    # A database left by an older build: its first `old` migrations, applied as `_migrate`
    # applies them, and rows written then.
    db = Path(make_config(tmp_path).storage.path)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for version, script in enumerate(MIGRATIONS[:old], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        conn.execute("INSERT INTO users VALUES ('oldtimer', 0, 1.0, 2.0)")
        conn.execute("INSERT INTO user_numbers VALUES (4242, 'oldtimer')")
        ids = [
            conn.execute(
                "INSERT INTO messages (user_id, contact, direction, content, time) "
                "VALUES ('oldtimer', ?, ?, ?, ?)",
                (MOMO, direction, f'[{{"type":"text","data":{{"text":"old {i}"}}}}]', 10.0 + i),
            ).lastrowid
            for i, direction in enumerate(("in", "out", "in"))
        ]
    finally:
        conn.close()

    b = await bridge_factory(momohub={"enabled": True})
    st = b.app.storage
    assert st is not None
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    check.close()
    assert await st.users.get("oldtimer") is not None
    assert await st.users.number_for("oldtimer") == 4242
    for i, mid in enumerate(ids):
        assert mid is not None
        row = await st.messages.get(mid)
        assert row is not None and row.content == text(f"old {i}")
    # And the upgraded database takes new messages after the old ones.
    c = await b.client("oldtimer")
    rid = await c.send("onebot", "message", text("new"), id=MOMO)
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack
    assert ack["data"]["message_id"] > max(i for i in ids if i is not None)
    await c.stream(rid)


# ----- restore over a database whose last commits are only in its WAL ---------------------------

# A writer that commits rows and then waits to be killed: with automatic checkpoints off and no
# close, its commits are in the -wal file only, as a server's are when it is SIGKILLed.
WAL_WRITER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
for i in range(int(sys.argv[2])):
    c.execute("INSERT INTO users VALUES (?, 0, 1.0, 2.0)", (f"wal-only-{i}",))
c.commit()
print("committed", flush=True)
sys.stdin.read()
"""

# `restore` in a process that SIGKILLs itself just before its Nth file-system change (a rename,
# link or unlink): a crash at that point, with no clean-up run. Exit status 0: it got through.
CRASHING_RESTORE = """
import os, signal, sys
from pathlib import Path
import storage.backup as b
left = [int(sys.argv[3])]
def dying(real):
    def call(*args, **kwargs):
        left[0] -= 1
        if left[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
for name in ("replace", "rename", "link", "unlink"):
    setattr(os, name, dying(getattr(os, name)))
b.restore(Path(sys.argv[1]), Path(sys.argv[2]), replace=True)
"""

WAL_ROWS = 50


def users(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM users")}
    finally:
        conn.close()


def python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def old_database_with_wal_only_rows(folder: Path) -> tuple[Path, Path]:
    """A migrated database with a row committed normally, a backup of it, then rows a
    SIGKILLed writer left in the WAL only; the database and the backup."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "momobridge.db"

    async def make() -> None:
        st = await Storage.open(str(db))
        await st.users.touch("checkpointed", False)
        await st.close()

    asyncio.run(make())
    copy = folder / "copy.db"
    backup(db, copy)
    writer = python(WAL_WRITER, str(db), str(WAL_ROWS))
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "committed\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=WAIT)
    assert writer.returncode == -signal.SIGKILL
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    # Without its WAL the file itself does not have them: they are in the WAL only.
    alone = folder / "alone" / "momobridge.db"
    alone.parent.mkdir()
    shutil.copyfile(db, alone)
    assert users(alone) == {"checkpointed"}
    shutil.rmtree(alone.parent)
    return db, copy


OLD_USERS = {"checkpointed"} | {f"wal-only-{i}" for i in range(WAL_ROWS)}


def test_restore_over_a_killed_server_keeps_its_wal_commits_in_one_file(tmp_path: Path) -> None:
    db, copy = old_database_with_wal_only_rows(tmp_path / "data")
    done = restore(copy, db, replace=True)
    assert done.kept is not None
    # The kept file holds the WAL's commits itself: it can be copied or opened on its own,
    # and no WAL of the old file is beside the restored one for SQLite to replay onto it.
    assert not Path(f"{done.kept}-wal").exists() and sidecars(db) == []
    alone = tmp_path / "elsewhere" / "kept.db"
    alone.parent.mkdir()
    shutil.copyfile(done.kept, alone)
    assert users(alone) == OLD_USERS and integrity(alone) == ["ok"]
    assert users(db) == {"checkpointed"} and integrity(db) == ["ok"]


def test_a_restore_killed_at_any_step_leaves_the_old_or_the_new_database(tmp_path: Path) -> None:
    outcomes: list[str] = []
    for step in itertools.count(1):
        folder = tmp_path / f"crash-{step}"
        db, copy = old_database_with_wal_only_rows(folder)
        proc = python(CRASHING_RESTORE, str(copy), str(db), str(step))
        proc.communicate(timeout=WAIT)
        # Never no database at the path (a server would start on an empty one), never the
        # old one without its WAL's commits, never a mix.
        assert db.exists(), f"no database after a crash at step {step}"
        found = users(db)
        assert found in (OLD_USERS, {"checkpointed"}), (step, len(found))
        assert integrity(db) == ["ok"]
        outcomes.append("old" if found == OLD_USERS else "new")
        # Whatever was kept by then holds the old database whole.
        for kept in folder.glob("momobridge.db.before-restore-*"):
            if not kept.name.endswith(("-wal", "-shm", "-journal")):
                assert users(kept) == OLD_USERS, step
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.returncode
    # Crashes both before and after the swap were tried.
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes


# ----- where a copy may not go, who owns a restored file, what the commands say ------------------


async def test_a_backup_onto_the_databases_own_files_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "data" / "momobridge.db"
    st = await Storage.open(str(db), exclusive=True)
    try:
        # Commits the server has not checkpointed: they live in the -wal.
        await st.db.conn.execute("PRAGMA wal_autocheckpoint=0")
        for i in range(20):
            await st.users.touch(f"live-{i}", False)
        wal = Path(f"{db}-wal")
        wal_bytes = await asyncio.to_thread(wal.read_bytes)
        alias = tmp_path / "alias-of-wal"
        os.link(wal, alias)
        via_symlink = tmp_path / "link-to-shm"
        via_symlink.symlink_to(f"{db}-shm")
        with pytest.raises(BackupError, match="is the database itself"):
            backup(db, db, force=True)
        targets = [Path(f"{db}{s}") for s in ("-wal", "-shm", "-journal", ".lock")]
        for target in [*targets, alias, via_symlink]:
            with pytest.raises(BackupError, match="write the copy somewhere else"):
                backup(db, target, force=True)
        cfg = write_config(tmp_path, db)
        code, out, err = await cli(
            "backup", f"{db}-wal", "--force", "--config", str(cfg), cwd=tmp_path
        )
        assert code == 1, out
        assert f"backup failed: {db}-wal is the database's wal file" in err
        assert await asyncio.to_thread(wal.read_bytes) == wal_bytes
        assert not await asyncio.to_thread(Path(f"{db}-journal").exists)
        await st.users.touch("after", False)
    finally:
        await st.close()
    assert {f"live-{i}" for i in range(20)} | {"after"} <= users(db)
    assert integrity(db) == ["ok"]


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="gives files away: needs root"
)
# A uid and gid no account has: the server's user, as a container image would set it.
APP_UID, APP_GID = 54321, 54322

# The server's start as the app user, far enough to claim the file and write to it.
SERVE_AS_APP = """
import asyncio, sys
from storage import Storage
async def main():
    st = await Storage.open(sys.argv[1], exclusive=True)
    await st.users.touch("served", False)
    print("served", flush=True)
    sys.stdin.read()
    await st.close()
asyncio.run(main())
"""


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A data folder owned by the app user, in a folder that user can reach (pytest's own
    temp folders are root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="momobridge-owner-"))
    try:
        top.chmod(0o755)
        data = top / "data"
        data.mkdir()
        os.chown(data, APP_UID, APP_GID)
        yield data
    finally:
        shutil.rmtree(top)


def serve_as_app(db: Path) -> subprocess.Popen[str]:
    # setpriv rather than Popen(user=...): the latter fails here to exec an interpreter that
    # setpriv, as the same uid, runs fine.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv to run the server as another user")
    ids = [f"--reuid={APP_UID}", f"--regid={APP_GID}", "--clear-groups"]
    return subprocess.Popen(
        [setpriv, *ids, sys.executable, "-c", SERVE_AS_APP, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_served(proc: subprocess.Popen[str]) -> None:
    """Until the server says it wrote (its log lines, on the same stdout, come first)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        if line == "served\n":
            return
        seen.append(line)
    proc.kill()
    proc.wait()
    raise AssertionError(f"the server as uid {APP_UID} did not start: {seen}")


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate("", timeout=WAIT)
    return proc.returncode, out


@needs_root
def test_a_restore_as_root_into_a_new_file_gives_it_to_the_folders_owner(
    app_dir: Path, tmp_path: Path
) -> None:
    _, copy = old_database_with_wal_only_rows(tmp_path / "src")
    db = app_dir / "momobridge.db"
    restore(copy, db)
    for path in (db, Path(f"{db}.lock")):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (APP_UID, APP_GID), path
    # And the server, as that user, starts on it and writes.
    server = serve_as_app(db)
    wait_served(server)
    assert stop(server)[0] == 0
    assert users(db) == {"checkpointed", "served"}


@needs_root
def test_a_lock_file_the_server_cannot_write_still_guards_the_database(app_dir: Path) -> None:
    db = app_dir / "momobridge.db"
    # As an older restore run as root left it: root's, not writable by the app user.
    lock = Path(f"{db}.lock")
    lock.write_text("1\n")
    lock.chmod(0o644)
    server = serve_as_app(db)
    wait_served(server)
    try:
        with pytest.raises(DatabaseInUse, match=f"another MomoBridge is using {db}"):
            DatabaseLock.acquire(str(db))
    finally:
        assert stop(server)[0] == 0
    DatabaseLock.acquire(str(db)).release()  # released when the server stopped


async def test_restore_with_a_relative_path_says_where_it_went(tmp_path: Path) -> None:
    src = tmp_path / "src" / "momobridge.db"
    st = await Storage.open(str(src))
    await st.users.touch("restored-user", False)
    await st.close()
    cfg = tmp_path / "relative.toml"
    cfg.write_text(
        '[storage]\npath = "data/momobridge.db"\n\n[log]\nlevel = "warning"\n\n'
        "[momohub]\nenabled = false\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "data" / "momobridge.db"

    code, out, err = await cli("backup", "copy.db", "--config", str(cfg), cwd=tmp_path / "src")
    assert code == 1 and f"no database at {tmp_path}/src/data/momobridge.db" in err

    copy = "../src/momobridge.db"
    code, out, err = await cli("restore", copy, "--config", str(cfg), cwd=elsewhere)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"no database at {target} yet: restoring into a new file"
    assert lines[1].startswith(f"restored {src} to {target} (schema version")
    assert users(target) == {"restored-user"}

    # Over the existing file now: no such note, and the paths absolute again.
    code, out, err = await cli("restore", copy, "--force", "--config", str(cfg), cwd=elsewhere)
    assert code == 0, err
    assert "no database at" not in out and f"restored {src} to {target}" in out
    code, out, err = await cli("backup", "again.db", "--config", str(cfg), cwd=elsewhere)
    assert code == 0, err
    assert f"backed up {target} to {elsewhere / 'again.db'}:" in out


def test_restore_over_a_file_sqlite_cannot_read_keeps_it_and_its_wal_as_they_were(
    tmp_path: Path,
) -> None:
    _, copy = old_database_with_wal_only_rows(tmp_path / "src")
    db = tmp_path / "data" / "momobridge.db"
    db.parent.mkdir()
    # Nothing to checkpoint it with: both go to the kept name byte for byte, as a pair.
    db.write_bytes(b"not a database " * 300)
    Path(f"{db}-wal").write_bytes(b"its wal " * 100)
    done = restore(copy, db, replace=True)
    assert done.kept is not None
    assert done.kept.read_bytes() == b"not a database " * 300
    assert Path(f"{done.kept}-wal").read_bytes() == b"its wal " * 100
    assert sidecars(db) == [] and users(db) == {"checkpointed"}


def test_where_hard_links_fail_the_old_database_is_kept_as_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, copy = old_database_with_wal_only_rows(tmp_path / "data")

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # as on some FUSE and SMB mounts

    monkeypatch.setattr(os, "link", no_links)
    done = restore(copy, db, replace=True)
    assert done.kept is not None
    assert users(done.kept) == OLD_USERS and users(db) == {"checkpointed"}
    assert [p.name for p in db.parent.iterdir() if p.name.endswith(".tmp")] == []
