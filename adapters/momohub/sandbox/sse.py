"""The real server's SSE writer, faithfully naive.

It formats `"event: " + type + "\\ndata: " + data + "\\n\\n"` and never escapes `data`, so a payload with
a line break yields a bare continuation line (and a blank line ends the event early). That is the
whole point: clients are tested against what MomoHub actually sends, not what the SSE spec allows.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

# A client that stops reading must not pin a writer (and its chat) forever.
WRITE_TIMEOUT = 30.0


class StreamGone(Exception):
    """The client went away (or stopped reading) while we were writing."""


def format_event(event: str, data: str) -> bytes:
    return ("event: " + event + "\ndata: " + data + "\n\n").encode()


def format_comment(text: str) -> bytes:
    return (": " + text + "\n\n").encode()


class SSEWriter:
    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._lock = asyncio.Lock()
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream;charset=UTF-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )

    async def open(self) -> None:
        await self.response.prepare(self._request)
        await self._write(format_comment("connected"))

    async def comment(self, text: str) -> None:
        await self._write(format_comment(text))

    async def event(self, event: str, data: str) -> None:
        await self._write(format_event(event, data))

    def abort(self) -> None:
        """Cut the TCP connection without ending the chunked body, like a crashed proxy."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def _write(self, payload: bytes) -> None:
        # Heartbeats and events come from different tasks; one lock keeps frames whole.
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                async with self._lock:
                    await self.response.write(payload)
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            # aiohttp raises ClientConnectionResetError (a ConnectionError) on a closing transport,
            # RuntimeError if the payload writer is already gone.
            raise StreamGone(str(e) or type(e).__name__) from e
