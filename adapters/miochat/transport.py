"""The hub's listener: one aiohttp server carrying the WebSocket hub and plain HTTP on one port.

aiohttp was chosen by measurement (bench/hub_bench.py, heartbeat scenario: a bare aiohttp echo
needs ~20 % less CPU per round trip than a bare `websockets` echo on the same machine), and
because the same application can also carry python-socketio for today's mio-chat client.
Everything above this module sees only `HubSocket` and `web.Request`, so the listener can be
swapped without touching the connection logic.

`HubSocket` is the small surface a hub connection needs: read data frames, write a frame at
once when the kernel buffer is empty (no task, no lock), write what queued behind a backlog in
one go and wait for the buffer to drain, confirm delivery with a ping whose pong comes back,
close or abort. Data frames are framed (and compressed, see `deflate`) here; aiohttp's writer
only sends control frames.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from adapters.miochat.deflate import Deflater, negotiated

# A data frame a server sends is never masked: 2-10 header bytes, then the payload.
_FIN_TEXT = 0x81
# The same with RSV1 set: a compressed message.
_FIN_TEXT_DEFLATED = 0xC1
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
# permessage-deflate lets any message go uncompressed (RFC 7692 7.2.3.2): a frame this small
# gains next to nothing from deflate, so it skips the compressor (CPU, and the compressor's
# memory is allocated only once a larger frame needs it).
_SMALL = 512
# Larger messages are compressed in a worker thread, not on the loop.
_DEFLATE_ON_LOOP = 64 * 1024
# The first byte of our own ping payloads, so the pong to a keep-alive ping (empty payload,
# sent by aiohttp when the peer is quiet) is never taken for a delivery confirmation.
_CONFIRM = b"c"


class SocketClosed(Exception):
    """The peer is gone (closed, aborted, or the connection failed)."""


class HubSocket:
    __slots__ = (
        "_closed",
        "_deflater",
        "_drain",
        "_pong_waiters",
        "_sent_close",
        "_transport",
        "remote_address",
        "request",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self.ws = ws
        self._drain = drain
        self.request = request
        transport = request.transport
        self._transport: asyncio.Transport | None = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") if transport is not None else None
        self.remote_address: tuple[str, int] | None = tuple(peer[:2]) if peer else None
        deflate = (
            negotiated(ws.headers.get("Sec-WebSocket-Extensions", "")) if ws.compress else None
        )
        self._deflater = (
            Deflater(deflate[0], no_context_takeover=deflate[1]) if deflate is not None else None
        )
        self._pong_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._closed = False
        self._sent_close: int | None = None

    @property
    def open(self) -> bool:
        transport = self._transport
        return not (self._closed or self.ws.closed or transport is None or transport.is_closing())

    @property
    def close_code(self) -> int | None:
        """The code this side closed with, else the peer's (aiohttp records 1000 for both once
        the closing handshake ends)."""
        return self._sent_close if self._sent_close is not None else self.ws.close_code

    def write_now(self, data: bytes) -> bool:
        """Write a text frame straight into the transport when that cannot wait on the peer:
        nothing is buffered ahead of it and it stays under the high-water mark."""
        transport = self._transport
        if (
            not self.open
            or transport is None
            or transport.get_write_buffer_size()
            or len(data) + 10 > transport.get_write_buffer_limits()[1]
        ):
            return False
        deflater = self._deflater
        if deflater is None or len(data) <= _SMALL:
            transport.write(_framed(data))
        elif len(data) <= _DEFLATE_ON_LOOP:
            transport.write(_framed(deflater.compress(data), _FIN_TEXT_DEFLATED))
        else:
            return False
        return True

    async def send_many(self, frames: list[bytes]) -> None:
        """Write text frames behind whatever is buffered, in one write, then wait while the
        peer's buffer is full."""
        deflater = self._deflater
        out: list[bytes] = []
        for data in frames:
            if deflater is None or len(data) <= _SMALL:
                out.append(_framed(data))
            else:
                if len(data) <= _DEFLATE_ON_LOOP:
                    payload = deflater.compress(data)
                else:
                    # The deflater is this connection's alone and its writes are sequential:
                    # nothing else uses it while the thread runs.
                    payload = await asyncio.to_thread(deflater.compress, data)
                out.append(_framed(payload, _FIN_TEXT_DEFLATED))
        transport = self._transport
        if not self.open or transport is None:
            raise SocketClosed
        try:
            transport.write(b"".join(out))
            # A peer that stops reading holds the frames here, in sight of the caller's send
            # timeout, not in an unbounded transport buffer.
            await self._drain()
        except (ConnectionError, RuntimeError) as e:
            raise SocketClosed from e

    async def confirm(self, token: int, done: Callable[[bool], None]) -> None:
        """Send a ping; ``done(True)`` when its pong comes back (the peer read everything written
        before it), ``done(False)`` if the connection ends first."""
        payload = _CONFIRM + str(token).encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pong_waiters[payload] = fut
        fut.add_done_callback(lambda f: done(not f.cancelled()))
        try:
            await self.ws.ping(payload)
        except (ConnectionError, RuntimeError) as e:
            self._pong_waiters.pop(payload, None)
            fut.cancel()
            raise SocketClosed from e

    async def recv(self) -> str | bytes:
        """The next data frame. Answers pings, takes pongs; raises SocketClosed at the end."""
        ws = self.ws
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                return msg.data  # type: ignore[no-any-return]
            if kind is WSMsgType.PING:
                try:
                    await ws.pong(msg.data)
                except (ConnectionError, RuntimeError):
                    pass
                continue
            if kind is WSMsgType.PONG:
                fut = self._pong_waiters.pop(bytes(msg.data), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            self._ended()
            raise SocketClosed

    def _ended(self) -> None:
        self._closed = True
        waiters, self._pong_waiters = self._pong_waiters, {}
        for fut in waiters.values():
            fut.cancel()

    async def close(self, code: int, reason: str) -> None:
        if self._sent_close is None:
            self._sent_close = code
        try:
            await self.ws.close(code=code, message=reason.encode()[:123])
        finally:
            self._ended()

    def abort(self) -> None:
        self._ended()
        transport = self._transport
        if transport is not None:
            transport.abort()


async def accept(
    request: web.Request,
    *,
    max_size: int,
    compression: bool,
    idle_timeout: float,
) -> HubSocket:
    """Complete the upgrade. Keep-alive: aiohttp pings after 2/3 of the idle timeout without
    a byte from the peer and drops it if no pong comes in the remaining third."""
    ws = web.WebSocketResponse(
        max_msg_size=max_size,
        compress=compression,
        autoping=False,
        heartbeat=idle_timeout * 2 / 3,
        timeout=2.0,
    )
    writer = await ws.prepare(request)
    return HubSocket(ws, request, writer.drain)


def _framed(data: bytes, first: int = _FIN_TEXT) -> bytes:
    n = len(data)
    if n < 126:
        return bytes((first, n)) + data
    if n < 65536:
        return _LEN2(first, 126, n) + data
    return _LEN8(first, 127, n) + data


def is_upgrade(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and "websocket" in request.headers.get("Upgrade", "").lower()
        and "upgrade" in request.headers.get("Connection", "").lower()
    )
