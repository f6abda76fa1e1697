"""Hub peers that misbehave on purpose, a strict frame checker, and the server's log as text.

- `StrictClient`: a `HubClient` that reads raw bytes and records every frame that is not strict
  UTF-8 JSON (NaN/Infinity, lone surrogates), so a test can assert the server never wrote one.
- `MutePeer`: a real websockets client that never answers pings (it still reads frames), so the
  server can only learn that it read a push from an explicit `system/ack`. `stall()` also stops
  reading at the transport, with a tiny receive buffer: a peer that is still connected but
  silently dead, whose kernel buffers fill up behind it.
- `server_log()`: everything the bridge logs (structlog and stdlib) rendered as the console
  lines a terminal would show, tracebacks included, for asserting on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from tests.support.hub_client import WAIT, Frame, HubClient


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _surrogate_path(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return path or "<root>" if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _surrogate_path(k, f"{path}.<key>") or _surrogate_path(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def strict_parse(raw: bytes) -> Frame:
    """One frame as the wire carries it: UTF-8, JSON without NaN/Infinity or lone surrogates."""
    text = raw.decode("utf-8")  # strict: raises on invalid UTF-8
    frame = json.loads(text, parse_constant=_strict_constant)
    where = _surrogate_path(frame)
    if where is not None:
        raise ValueError(f"lone surrogate at {where}")
    if not isinstance(frame, dict):
        raise ValueError(f"frame is a {type(frame).__name__}, not an object")
    return frame


class StrictClient(HubClient):
    """Records each frame that fails `strict_parse` in `violations` (and keeps reading)."""

    violations: list[tuple[bytes, str]]

    async def _read(self) -> None:
        self.violations = []
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                try:
                    frame = strict_parse(raw)
                except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
                    self.violations.append((raw[:200], str(e)))
                    continue
                async with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            async with self._cond:
                self._cond.notify_all()

    def terminal(self, rid: Any) -> list[Frame]:
        """The frames that end request ``rid``: its failure, or its success/`completed`
        (a streamed request's ack is not an end: its `pending` follows)."""
        mine = [f for f in self.frames if f.get("request_id") == rid]
        ends = [f for f in mine if f.get("code") == 1 or f.get("message") == "completed"]
        streamed = any(f.get("message") == "pending" for f in mine)
        if not streamed:
            ends += [f for f in mine if f.get("code") == 0 and f.get("message") == "success"]
        return ends


class MutePeer:
    """A websockets client that never sends a pong (and, once stalled, never reads)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        proto = ws.protocol
        recv_frame = proto.recv_frame

        def no_pong(frame: Any) -> None:
            if frame.opcode is Opcode.PING:
                return  # dropped: no pong goes back, the ping is never seen
            recv_frame(frame)

        proto.recv_frame = no_pong  # type: ignore[method-assign]

    @classmethod
    async def open(cls, url: str, *, rcvbuf: int | None = None) -> MutePeer:
        sock = None
        if rcvbuf is not None:
            # Set before connecting, so the advertised TCP window stays this small.
            parts = urlsplit(url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        ws = await connect(url, sock=sock, ping_interval=None, max_size=None, open_timeout=WAIT)
        peer = cls(ws)
        peer._reader = asyncio.create_task(peer._read())
        return peer

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                async with self._changed:
                    self.frames.append(json.loads(raw))
                    self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def request(self, protocol: str, type_: str, data: Any, rid: str, **extra: Any) -> Frame:
        frame = {"request_id": rid, "protocol": protocol, "type": type_, "data": data, **extra}
        await self.ws.send(json.dumps(frame))
        return await self.wait_for(lambda f: f.get("request_id") == rid)

    async def login(self, user_id: str) -> Frame:
        f = await self.request(
            "system", "login", {"mio-chat-id": user_id, "mio-chat-token": ""}, "login"
        )
        assert f["code"] == 0, f
        return f

    async def wait_for(self, pred: Any, timeout: float = WAIT) -> Frame:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for f in self.frames:
                    if pred(f):
                        return f
                await self._changed.wait()

    def pushes(self) -> list[Frame]:
        return [f for f in self.frames if str(f.get("request_id", "")).startswith("s-")]

    async def stall(self) -> None:
        """Stop reading at the transport: from now on the server's writes pile up."""
        assert self.ws.transport is not None
        self.ws.transport.pause_reading()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    def kill(self) -> None:
        """Drop the TCP connection without a closing handshake (what a crashed peer does)."""
        if self.ws.transport is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.kill()


@contextlib.contextmanager
def server_log() -> Iterator[io.StringIO]:
    """Capture what the bridge logs, as console text: structlog events (exceptions rendered as
    plain tracebacks, the way a terminal shows them) and stdlib records (asyncio's
    "Task exception was never retrieved", websockets' "connection handler failed")."""
    buf = io.StringIO()
    old = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buf),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        structlog.configure(**old)


def tracebacks(log: io.StringIO) -> list[str]:
    """The lines of ``log`` that begin a plain-text traceback, with the event line above."""
    lines = log.getvalue().splitlines()
    return [
        f"{lines[i - 1] if i else ''} / {line}"
        for i, line in enumerate(lines)
        if line.lstrip().startswith("Traceback")
    ]
