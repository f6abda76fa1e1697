"""`python -m bridge.cli chat` against a real bridge: stdin lines in, printed lines out."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import ADMIN_CODE, Bridge

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


class Chat:
    """The chat client as a subprocess; collects stdout lines and waits on them with timeouts."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Chat:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            "chat",
            *args,
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            async with self._changed:
                self.lines.append(line.decode().rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, pred: Callable[[str], bool], start: int = 0) -> str:
        """The first line from ``start`` on that matches; fails with the output so far."""
        try:
            async with asyncio.timeout(WAIT):
                async with self._changed:
                    while True:
                        for line in self.lines[start:]:
                            if pred(line):
                                return line
                        if self._reader.done():
                            break
                        await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"no matching line; output so far: {self.lines}")

    async def command(self, line: str, pred: Callable[[str], bool]) -> str:
        """Send a line and wait for a matching line printed after it."""
        start = len(self.lines)
        await self.send(line)
        return await self.expect(pred, start)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            await self._reader
        return rc

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture
async def chats() -> AsyncIterator[Callable[..., Awaitable[Chat]]]:
    started: list[Chat] = []

    async def start(*args: str) -> Chat:
        c = await Chat.start(*args)
        started.append(c)
        return c

    yield start
    for c in started:
        await c.kill()


async def test_chat_session(bridge: Bridge, chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats("--url", bridge.url, "--id", "tester")
    login = await chat.expect(lambda s: s.startswith("* logged in"))
    assert login.startswith("* logged in as tester (user); 0 contacts;")
    assert "talking to nobody yet" in login

    await chat.command("/help", lambda s: "/raw <json>" in s)
    assert any("/to <contact>" in s for s in chat.lines)

    hb = await chat.command(
        '/raw {"protocol":"system","type":"heartbeat","data":{}}', lambda s: "revTime" in s
    )
    assert hb.startswith("* {") and '"type": "heartbeat"' in hb and '"code": 0' in hb
    assert '"request_id": 2' in hb  # filled in by the client, after the login's 1

    await chat.command("/raw {not json", lambda s: s.startswith("* not JSON"))
    await chat.command("/contacts", lambda s: s == "* no contacts")
    await chat.command("a plain line", lambda s: s.startswith("* choose a contact first"))
    await chat.command("/to nobody", lambda s: s == "* now talking to nobody")
    failed = await chat.command("hello", lambda s: s.startswith("! "))
    assert failed.startswith("! onebot/message failed: NOT_FOUND:") and "nobody" in failed

    await chat.send("/quit")  # stdin stays open, as in a terminal
    assert await chat.wait_exit() == 0
    assert "Traceback" not in await chat.stderr()


async def test_admin_login_and_end_of_input(
    bridge: Bridge, chats: Callable[..., Awaitable[Chat]]
) -> None:
    chat = await chats("--url", bridge.url, "--id", "10086", "--token", ADMIN_CODE)
    await chat.expect(lambda s: s.startswith("* logged in as 10086 (admin)"))
    chat.close_stdin()  # EOF ends the client like /quit
    assert await chat.wait_exit() == 0


async def test_login_failure_exits_nonzero(
    bridge_factory: Callable[..., Awaitable[Bridge]], chats: Callable[..., Awaitable[Chat]]
) -> None:
    b = await bridge_factory(auth={"user_code": "letmein"})
    chat = await chats("--url", b.url, "--id", "tester", "--token", "wrong")
    line = await chat.expect(lambda s: s.startswith("! "))
    assert line == "! system/login failed: LOGIN_FAILED: invalid code"
    await chat.expect(lambda s: s.startswith("* connection closed (4001"))
    assert await chat.wait_exit() == 1  # without waiting for end of input


async def test_unreachable_server_exits_2(chats: Callable[..., Awaitable[Chat]]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = s.getsockname()[1]
        chat = await chats("--url", f"ws://127.0.0.1:{port}/api/gateway", "--id", "x")
        assert await chat.wait_exit() == 2  # without waiting for end of input
    assert "cannot connect" in await chat.stderr()


async def test_quit_exits_without_end_of_input(
    bridge: Bridge, chats: Callable[..., Awaitable[Chat]]
) -> None:
    chat = await chats("--url", bridge.url, "--id", "quitter")
    await chat.expect(lambda s: s.startswith("* logged in"))
    await chat.send("/quit")  # stdin stays open, as in a terminal
    assert await chat.wait_exit(timeout=3) == 0
