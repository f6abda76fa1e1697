"""Backups and restores of a running bridge's database, the claim a server holds on its file,
and schema versions at start (an upgrade keeps the rows, a newer schema is refused).

Clients chat with the embedded MomoHub sandbox over real sockets while `momobridge backup`
copies the database, in a thread and as a real process; the copies are restored and checked.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import storage.backup as backup_module
from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.app import App
from storage.backup import BackupError, backup, restore
from storage.lock import DatabaseInUse
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
    # The replaced database is kept whole, with what the backup lacks; no WAL of it is left
    # beside the restored file for SQLite to replay.
    assert integrity(kept) == ["ok"] and only_live in stored_ids(kept)
    assert sidecars(db) == []

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
