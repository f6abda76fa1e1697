"""Fault test: the bridge is killed with SIGKILL while 20 users chat, then restarted on the same
database. Every acknowledged message is still stored, every reply that finished is delivered at
least once, every reply cut short is answered by an explicit "interrupted" notice, and the
database is intact.

The MomoHub sandbox runs in the test process (it outlives the bridge); the bridge is a real
`momobridge serve` subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from adapters.momohub.sandbox import SandboxServer
from bridge.config import SandboxConfig
from tests.support.cli import momobridge
from tests.support.hub_client import HubClient, eventually

USERS = 20
EMAIL = "bridge@crash.test"
PASSWORD = "crash-test-password"
MOMO = "6d6f6d6f-0000-4000-8000-000000000001"


async def _start_bridge(cfg: Path, log_path: Path) -> tuple[asyncio.subprocess.Process, int]:
    await asyncio.to_thread(log_path.write_text, "")
    proc = await asyncio.create_subprocess_exec(
        *momobridge("serve", "--config", str(cfg)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_path.open("a"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    found: list[int] = []

    async def ready() -> bool:
        text = await asyncio.to_thread(log_path.read_text)
        for line in text.splitlines():
            if "momobridge.ready" in line:
                found.append(int(json.loads(line)["url"].split(":")[2].split("/")[0]))
                return True
        if proc.returncode is not None:
            raise AssertionError(f"bridge exited: {text[-3000:]}")
        return False

    # A subprocess's log offers nothing to wait on: poll it.
    await eventually(ready, timeout=30, what="the bridge to start")
    return proc, found[0]


class _User:
    """One chatting user: sends a message, waits for its reply's push, sends the next."""

    def __init__(self, uid: str, progress: asyncio.Event) -> None:
        self.uid = uid
        self.progress = progress
        self.client: HubClient | None = None
        self.acked: dict[str, int] = {}  # request_id -> message_id
        self.finished: set[str] = set()  # request_ids whose stream completed
        self.streaming = False  # acknowledged, reply not yet ended
        self.received: list[dict[str, Any]] = []  # every push frame, both runs

    async def connect(self, port: int) -> None:
        self.client = await HubClient.open(f"ws://127.0.0.1:{port}/api/gateway")
        await self.client.login(self.uid)

    async def chat(self, stop: asyncio.Event) -> None:
        assert self.client is not None
        n = 0
        try:
            while not stop.is_set():
                n += 1
                rid = f"{self.uid}-m{n}"
                text = f"message {n} from {self.uid}"
                await self.client.send(
                    "onebot",
                    "message",
                    [{"type": "text", "data": {"text": text}}],
                    id=MOMO,
                    request_id=rid,
                )
                ack = await self.client.reply(rid, timeout=20)
                assert ack["code"] == 0, ack
                self.acked[rid] = ack["data"]["message_id"]
                self.streaming = True
                self.progress.set()
                frames = await self.client.stream(rid, timeout=20)
                self.streaming = False
                if frames[-1].get("message") == "completed":
                    self.finished.add(rid)
                    self.progress.set()
                await self.client.wait_push(lambda f, r=rid: _about(f) == r, timeout=20)
        except (AssertionError, TimeoutError, OSError, ConnectionClosed):
            return  # the bridge was killed under us

    def collect(self) -> None:
        if self.client is not None:
            self.received += self.client.pushes("message")


def _about(push: dict[str, Any]) -> str | None:
    content = push.get("data", {}).get("content", {})
    return content.get("stream_request_id")


def _answered(user: _User) -> tuple[set[str], set[int]]:
    by_request = {_about(p) for p in user.received if _about(p)}
    interrupted = {
        p["data"]["content"]["reply_to"]
        for p in user.received
        if p["data"]["content"].get("interrupted")
    }
    return {r for r in by_request if r}, interrupted


async def test_sigkill_mid_reply_loses_nothing(tmp_path: Path) -> None:
    sandbox = SandboxServer(SandboxConfig(token_delay=0.03, database=str(tmp_path / "hub.db")))
    await sandbox.ensure_account(EMAIL, PASSWORD)
    base_url = await sandbox.start()
    db = tmp_path / "bridge.db"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[server]\nport = 0\n[storage]\npath = "{db}"\n'
        f'[auth]\nadmin_code = "crash-admin"\n[log]\nformat = "json"\n'
        f'[momohub]\nbase_url = "{base_url}"\nemail = "{EMAIL}"\npassword = "{PASSWORD}"\n'
        'list_public = true\ndefault_character = "Momo"\n'
    )
    log_path = tmp_path / "serve.log"
    progress = asyncio.Event()
    users = [_User(f"user{i}", progress) for i in range(USERS)]
    proc, port = await _start_bridge(cfg, log_path)
    try:
        await asyncio.gather(*(u.connect(port) for u in users))
        stop = asyncio.Event()
        chats = [asyncio.create_task(u.chat(stop)) for u in users]

        # Let every user finish at least one reply, then kill while several are mid-stream.
        def ready() -> bool:
            done = sum(len(u.finished) for u in users) >= USERS * 2 and all(
                u.finished for u in users
            )
            return done and sum(u.streaming for u in users) >= 5

        async with asyncio.timeout(60):
            while not ready():
                progress.clear()
                await progress.wait()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        stop.set()
        await asyncio.gather(*chats)
        for u in users:
            u.collect()
            assert u.client is not None
            await u.client.close()
        in_flight = sum(1 for u in users for rid in u.acked if rid not in u.finished)
        assert in_flight > 0, "the kill should catch some replies mid-stream"

        # The database survived the kill.
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {r[0] for r in con.execute("SELECT id FROM messages WHERE direction='in'")}
        for u in users:
            assert set(u.acked.values()) <= stored, "an acknowledged message was lost"

        proc, port = await _start_bridge(cfg, log_path)
        for u in users:
            u.client = None
        await asyncio.gather(*(u.connect(port) for u in users))

        def settled(u: _User) -> bool:
            assert u.client is not None
            u_received = u.received + u.client.pushes("message")
            by_request = {_about(p) for p in u_received}
            interrupted = {
                p["data"]["content"].get("reply_to")
                for p in u_received
                if p["data"]["content"].get("interrupted")
            }
            return all(rid in by_request or mid in interrupted for rid, mid in u.acked.items())

        # The replayed and recovered pushes arrive from another process: poll the clients.
        await eventually(
            lambda: all(settled(u) for u in users), timeout=30, what="every turn settled"
        )
        for u in users:
            u.collect()
            answered, interrupted = _answered(u)
            for rid in u.finished:
                assert rid in answered, f"{u.uid}: finished reply {rid} was never delivered"
            for rid, mid in u.acked.items():
                assert rid in answered or mid in interrupted, f"{u.uid}: {rid} left in silence"
            assert u.client is not None
            await u.client.close()
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert "Traceback" not in await asyncio.to_thread(log_path.read_text)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await sandbox.stop()
