"""A Socket.IO client that behaves as the mio-chat web client does on the wire: frames as JSON
strings in the `message` event, credentials in the auth object."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import socketio

WAIT = 15.0


class SioClient:
    """A Socket.IO client that keeps every `message` frame (JSON strings, as the web client)."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.frames: list[dict[str, Any]] = []
        self.refusals: list[Any] = []
        self._arrived = asyncio.Condition()
        self.sio.on("message", self._on_message)
        self.sio.on("connect_error", self.refusals.append)

    async def _on_message(self, data: Any) -> None:
        assert isinstance(data, str), data  # the client JSON.parse()s it
        async with self._arrived:
            self.frames.append(json.loads(data))
            self._arrived.notify_all()

    async def wait_for(self, match: Any) -> dict[str, Any]:
        async with asyncio.timeout(WAIT), self._arrived:
            while True:
                for f in self.frames:
                    if match(f):
                        return f
                await self._arrived.wait()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.sio.emit("message", json.dumps(frame))

    async def close(self) -> None:
        # Without waiting for the long-poll in flight (the server answers it at its next ping).
        await self.sio.eio.disconnect(abort=True)


async def connect(http: Any, transport: str, auth: dict[str, Any]) -> SioClient:
    """A logged-in client of the bridge at ``http`` (a URL, or a test Bridge)."""
    c = SioClient()
    await c.sio.connect(
        getattr(http, "http", http),
        socketio_path="/socket.io",
        transports=[transport],
        auth=auth,
        wait_timeout=WAIT,
    )
    return c


def is_login(f: dict[str, Any]) -> bool:
    return f.get("protocol") == "system" and f.get("type") == "login"
