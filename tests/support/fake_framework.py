"""A raw WebSocket server that plays a bot framework frame by frame, for framework-link tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Bridge

WAIT = 10.0


class FakeFramework:
    """Accepts the bridge's connection, records what it sends, lets a test send actions."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.connections: list[ServerConnection] = []
        self.frames: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.close_codes: list[int | None] = []
        self.concurrent = 0
        self.max_concurrent = 0
        # While set, every connection is closed right after its handshake: a framework that
        # accepts and drops (starting up, crashing, refusing the self id after the upgrade).
        self.dropping = False
        self._changed = asyncio.Condition()
        self.server: Any = None
        self.port = 0

    async def start(self) -> str:
        """Listen (again on the same port after a stop, like a restarted framework)."""
        self.server = await serve(self._handle, "127.0.0.1", self.port, process_request=self._auth)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{self.port}/onebot/v11/ws"

    def _auth(self, conn: ServerConnection, request: Any) -> Any:
        self.headers.append(dict(request.headers.raw_items()))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return conn.respond(403, "bad token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        async with self._changed:
            self.connections.append(ws)
            self._changed.notify_all()
        try:
            if self.dropping:
                await ws.close(1011, "not ready")
                return
            async for raw in ws:
                async with self._changed:
                    self.raw.append(raw)
                    self.frames.append(json.loads(raw))
                    self._changed.notify_all()
        finally:
            self.concurrent -= 1
            async with self._changed:
                self.close_codes.append(ws.close_code)
                self._changed.notify_all()

    async def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for f in self.frames:
                        if pred(f):
                            return f
                    await self._changed.wait()

    async def wait_connections(self, n: int) -> ServerConnection:
        async with asyncio.timeout(WAIT):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.connections) >= n)
        return self.connections[n - 1]

    async def send(self, action: Any, params: Any = None, echo: Any = "e") -> None:
        """Call an action without waiting for its answer (see ``answer``)."""
        frame: dict[str, Any] = {"action": action, "echo": echo}
        if params is not None:
            frame["params"] = params
        await self.connections[-1].send(json.dumps(frame))

    async def answer(self, echo: Any, timeout: float = WAIT) -> dict[str, Any]:
        return await self.wait(lambda f: "status" in f and f.get("echo") == echo, timeout)

    def answered(self, echo: Any) -> bool:
        return any("status" in f and f.get("echo") == echo for f in self.frames)

    async def call(
        self, action: Any, params: Any = None, echo: Any = "e", raw: str | None = None
    ) -> dict:
        if raw is not None:
            await self.connections[-1].send(raw)
            return {}
        await self.send(action, params, echo)
        return await self.answer(echo)

    async def wait_closed(self, n: int = 1) -> None:
        """Until ``n`` of the bridge's connections have ended."""
        async with asyncio.timeout(WAIT):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.close_codes) >= n)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


async def linked(
    bridge_factory: Callable[..., Awaitable[Bridge]], fw: FakeFramework, **kw: Any
) -> Bridge:
    """A bridge linked to ``fw`` with fast reconnects and heartbeats, once the link is up."""
    url = await fw.start()
    b = await bridge_factory(
        onebot={
            "frameworks": [
                {
                    "url": url,
                    "access_token": fw.token,
                    "reconnect_interval": 0.05,
                    "max_reconnect_interval": 0.2,
                    "heartbeat_interval": 0.2,
                    **kw,
                }
            ]
        }
    )
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(1)
    await fw.wait_connections(1)
    return b


class DeafFramework:
    """Completes the WebSocket handshake, then never reads again: the bridge's writes back up.

    Plain asyncio rather than a websockets server, which keeps reading its socket whatever the
    handler does.
    """

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self) -> None:
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._changed = asyncio.Condition()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        self._writers.append(writer)
        async with self._changed:
            self.accepted += 1
            self._changed.notify_all()

    async def wait_accepted(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            async with self._changed:
                await self._changed.wait_for(lambda: self.accepted >= n)

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
