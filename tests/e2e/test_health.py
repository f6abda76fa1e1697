"""Liveness and readiness over real sockets: /healthz at once, /readyz per component, and a
start-up that never waits on MomoHub (down, or refusing our password), in-process and as a
real `momobridge serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve

from adapters.momohub.sandbox import SandboxServer
from bridge.config import SandboxConfig
from tests.conftest import Bridge
from tests.support.cli import momobridge
from tests.support.fake_openai import FakeOpenAI

EMAIL = "bot@sandbox.test"
PASSWORD = "right-password"
WAIT = 20.0


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=WAIT)) as r:
            return r.status, await r.json()


async def wait_state(bridge: Bridge, name: str, state: str) -> None:
    async with asyncio.timeout(WAIT):
        await bridge.app.health.wait_for(name, lambda s: s == state)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = SandboxServer(SandboxConfig(token_delay=0.0), [])
    await server.start()
    await server.ensure_account(EMAIL, PASSWORD)
    yield server
    await server.stop()


# ----- /readyz ---------------------------------------------------------------------------------


async def test_nothing_configured_is_ready(bridge: Bridge) -> None:
    status, body = await get_json(f"{bridge.http}/readyz")
    assert status == 200 and body["status"] == "ok"
    assert set(body["components"]) == {"database"}
    db = body["components"]["database"]
    assert db["state"] == "ok" and isinstance(db["since"], float)
    assert abs(db["since"] - time.time()) < 60
    status, body = await get_json(f"{bridge.http}/healthz")
    assert status == 200 and body["status"] == "ok"


async def test_embedded_sandbox_becomes_ready(bridge_factory) -> None:
    b = await bridge_factory(momohub={"enabled": True})
    await wait_state(b, "momohub", "ok")
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 200, body
    assert body["components"]["momohub"]["state"] == "ok"


@pytest.mark.parametrize("problem", ["unreachable", "auth_failed"])
async def test_start_never_waits_on_momohub(
    bridge_factory, sandbox: SandboxServer, problem: str
) -> None:
    if problem == "unreachable":
        settings = {"base_url": f"http://127.0.0.1:{closed_port()}/v1"}
    else:
        settings = {"base_url": sandbox.base_url, "password": "wrong-password"}
    t0 = time.monotonic()
    b = await bridge_factory(
        momohub={"enabled": True, "email": EMAIL, "password": PASSWORD} | settings
    )
    status, body = await get_json(f"{b.http}/healthz")
    assert status == 200 and body["status"] == "ok"
    assert time.monotonic() - t0 < 1.0
    # Not ready, and /readyz says why.
    await wait_state(b, "momohub", problem)
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 503 and body["status"] == "degraded"
    momohub = body["components"]["momohub"]
    assert momohub["state"] == problem and momohub["detail"]
    if problem == "auth_failed":
        assert "wrong email or password" in momohub["detail"]
        assert "wrong-password" not in json.dumps(body)
    # `since` marks the change, not the latest report: the bridge keeps retrying meanwhile.
    _, again = await get_json(f"{b.http}/readyz")
    assert again["components"]["momohub"]["since"] == momohub["since"]
    assert body["components"]["database"]["state"] == "ok"
    # Hub clients are served all the while.
    c = await b.client("early")
    assert c.frames[-1]["code"] == 0


async def test_wrong_password_is_retried_until_it_works(
    bridge_factory, sandbox: SandboxServer
) -> None:
    b = await bridge_factory(
        momohub={
            "enabled": True,
            "base_url": sandbox.base_url,
            "email": EMAIL,
            "password": "the-new-password",
        }
    )
    await wait_state(b, "momohub", "auth_failed")
    # The owner fixes the account; the retries (with backoff) pick it up, no restart.
    await sandbox.ensure_account(EMAIL, "the-new-password")
    await wait_state(b, "momohub", "ok")
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 200 and body["components"]["momohub"]["state"] == "ok"


@pytest.fixture
async def openai_upstream() -> AsyncIterator[FakeOpenAI]:
    s = FakeOpenAI()
    await s.start()
    yield s
    await s.stop()


async def test_each_openai_provider_is_reported(
    bridge_factory, openai_upstream: FakeOpenAI
) -> None:
    b = await bridge_factory(
        openai={
            "providers": [
                {"name": "good", "base_url": openai_upstream.base_url, "api_key": "sk-test"},
                {"name": "badkey", "base_url": openai_upstream.base_url, "api_key": "sk-no"},
                {"name": "down", "base_url": f"http://127.0.0.1:{closed_port()}/v1"},
            ]
        }
    )
    await wait_state(b, "openai:good", "ok")
    await wait_state(b, "openai:badkey", "auth_failed")
    await wait_state(b, "openai:down", "unreachable")
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 503
    comps = body["components"]
    assert comps["openai:good"]["state"] == "ok"
    assert "401" in comps["openai:badkey"]["detail"]
    assert comps["openai:down"]["state"] == "unreachable"


async def test_framework_link_state(bridge_factory) -> None:
    connected: asyncio.Queue[ServerConnection] = asyncio.Queue()
    release = asyncio.Event()

    async def framework(ws: ServerConnection) -> None:
        await connected.put(ws)
        await release.wait()

    server = await serve(framework, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"ws://127.0.0.1:{port}/onebot/v11/ws"
        b = await bridge_factory(
            onebot={"frameworks": [{"url": url, "reconnect_interval": 0.05, "reconnect_max": 0.2}]}
        )
        name = f"framework:{url}"
        await wait_state(b, name, "ok")
        status, body = await get_json(f"{b.http}/readyz")
        assert status == 200 and body["components"][name]["state"] == "ok"
        # The framework goes away: the link is down, and /readyz says why.
        server.close()
        release.set()
        await server.wait_closed()
        await wait_state(b, name, "disconnected")
        status, body = await get_json(f"{b.http}/readyz")
        assert status == 503 and body["components"][name]["detail"]
    finally:
        server.close()
        release.set()


# ----- a real `momobridge serve` -------------------------------------------------------------


class ServeProcess:
    """`momobridge serve` in a subprocess; its JSON log lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.line_times: list[float] = []
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            now = time.monotonic()
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"event": "<not json>", "raw": raw.decode(errors="replace")}
            async with self._cond:
                self.lines.append(entry)
                self.line_times.append(now)
                self._cond.notify_all()
        async with self._cond:
            self._cond.notify_all()

    async def wait_log(self, event: str, count: int = 1) -> tuple[dict[str, Any], float]:
        """The ``count``-th log line with this event, and when it was read."""
        async with asyncio.timeout(WAIT), self._cond:
            while True:
                hits = [i for i, e in enumerate(self.lines) if e.get("event") == event]
                if len(hits) >= count:
                    i = hits[count - 1]
                    return self.lines[i], self.line_times[i]
                if self._reader.done():
                    raise AssertionError(f"exited before {event!r}: {self.lines[-5:]}")
                await self._cond.wait()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(WAIT):
                code = await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await asyncio.gather(self._reader, return_exceptions=True)
        return code


@pytest.mark.parametrize("problem", ["unreachable", "auth_failed"])
async def test_serve_process_starts_without_momohub(
    tmp_path: Path, sandbox: SandboxServer, problem: str
) -> None:
    base_url = (
        f"http://127.0.0.1:{closed_port()}/v1" if problem == "unreachable" else sandbox.base_url
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n'
        f'[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
        '[auth]\nadmin_code = "adm1n-code"\n'
        '[log]\nlevel = "info"\nformat = "json"\n'
        f'[momohub]\nbase_url = "{base_url}"\nemail = "{EMAIL}"\npassword = "not-the-password"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        *momobridge("serve", "--config", str(cfg)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    serve_proc = ServeProcess(proc)
    try:
        listening, printed_at = await serve_proc.wait_log("hub.listening")
        http = f"http://127.0.0.1:{listening['port']}"
        status, body = await get_json(f"{http}/healthz")
        answered_at = time.monotonic()
        assert status == 200 and body["status"] == "ok"
        assert answered_at - printed_at < 1.0
        # Each failed sign-in is logged and retried; the process keeps serving.
        first, _ = await serve_proc.wait_log("momohub.sign_in_failed")
        assert first["state"] == problem
        await serve_proc.wait_log("momohub.sign_in_failed", count=2)
        assert proc.returncode is None
        status, body = await get_json(f"{http}/readyz")
        assert status == 503 and body["components"]["momohub"]["state"] == problem
        assert "not-the-password" not in json.dumps(serve_proc.lines)
    finally:
        code = await serve_proc.stop()
    assert code == 0, serve_proc.lines[-5:]
    with contextlib.suppress(StopIteration):
        crash = next(e for e in serve_proc.lines if e.get("level") in ("critical",))
        raise AssertionError(f"crashed: {crash}")
