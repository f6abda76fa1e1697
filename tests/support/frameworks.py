"""Real bot frameworks (NoneBot2, aiocqhttp) in subprocesses on OS-chosen loopback ports."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

BOTS = Path(__file__).parent / "bots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FrameworkProcess:
    """A bot framework listening for the bridge's reverse WebSocket."""

    def __init__(
        self, script: str, path: str, token: str, workdir: Path, port: int | None = None
    ) -> None:
        self.script = BOTS / script
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
            sys.executable,
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
