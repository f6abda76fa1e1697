"""Real bot frameworks (NoneBot2, aiocqhttp, Koishi) in subprocesses on OS-chosen loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

BOTS = Path(__file__).parent / "bots"
# A node project: package.json and package-lock.json are committed, node_modules is not.
KOISHI = BOTS / "koishi"
KOISHI_PACKAGES = ("koishi", "koishi-plugin-adapter-onebot", "@koishijs/plugin-server")
NODE_MAJOR_MIN = 18  # what koishi 4.18 supports
NPM_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FrameworkProcess:
    """A bot framework listening for the bridge's reverse WebSocket."""

    def __init__(
        self,
        script: str,
        path: str,
        token: str,
        workdir: Path,
        port: int | None = None,
        program: str = sys.executable,
    ) -> None:
        self.script = BOTS / script
        self.program = program  # what runs the script: this Python, or node for Koishi
        self.token = token
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}{path}"
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / f"{self.script.stem}-{self.port}.log"

    async def start(self, timeout: float = 30.0) -> None:
        # Its own empty working directory: NoneBot reads .env files from the current directory.
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            self.program,
            str(self.script),
            str(self.port),
            self.token,
            cwd=self.workdir,
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.proc.returncode is not None:
                        raise RuntimeError(
                            f"{self.script.name} exited: {self.log.read_text()[-2000:]}"
                        )
                    try:
                        _, w = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.1)  # polling a port: nothing to wait on
                        continue
                    w.close()
                    await w.wait_closed()
                    return
        except BaseException:
            await self.stop()  # never leave a half-started framework running
            raise

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


def _unavailable(why: str) -> None:
    """In CI (CI=true) a missing Koishi runtime is a failure; elsewhere the test is skipped."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Koishi e2e cannot run in CI: {why}", pytrace=False)
    pytest.skip(f"Koishi e2e skipped: {why}")


async def _run(*argv: str, cwd: Path, timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{' '.join(argv)} took longer than {timeout:g} s"
    return proc.returncode or 0, out.decode(errors="replace")


_koishi_node: str | None = None


async def koishi_node() -> str:
    """The node executable for tests/support/bots/koishi/bot.js, after installing its locked
    packages with `npm ci` when node_modules is missing. Skips (fails in CI) without node/npm."""
    global _koishi_node
    if _koishi_node is not None:
        return _koishi_node
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed (Node.js >= 18); install them to run Koishi")
    assert node is not None and npm is not None
    code, out = await _run(node, "--version", cwd=KOISHI, timeout=30)
    version = re.match(r"v(\d+)\.", out.strip())
    if code or version is None or int(version.group(1)) < NODE_MAJOR_MIN:
        _unavailable(f"Node.js >= {NODE_MAJOR_MIN} is needed, found {out.strip() or code!r}")
    if not all((KOISHI / "node_modules" / p / "package.json").is_file() for p in KOISHI_PACKAGES):
        code, out = await _run(
            npm, "ci", "--no-audit", "--no-fund", cwd=KOISHI, timeout=NPM_TIMEOUT
        )
        if code:
            _unavailable(f"`npm ci` in {KOISHI} failed ({code}): {out[-2000:]}")
    _koishi_node = node
    return node
