"""Let the websockets server answer small HTTP requests that carry a body (POST /api/share).

websockets parses only body-less handshake requests. This connection subclass reads a request's
body itself (bounded), strips it from the byte stream, and hands the rest to the normal parser, so
`process_request` sees the method and path and finds the body on the connection.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.server import ServerConnection

MAX_HEAD = 16 * 1024


class HubConnection(ServerConnection):
    max_body: int = 1 << 20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http_body: bytes = b""
        self.body_too_large = False
        self._sniffing = True
        self._head = bytearray()
        self._need: int | None = None

    def data_received(self, data: bytes) -> None:
        if not self._sniffing:
            super().data_received(data)
            return
        self._head += data
        if self._need is None:
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._release(bytes(self._head))
                return
            head = bytes(self._head[: end + 4])
            length = 0
            kept: list[bytes] = []
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        length = -1
                    continue
                kept.append(line)
            if length <= 0:
                self._release(bytes(self._head))
                return
            if length > self.max_body:
                # Swallow nothing more; process_request answers 413 from this flag.
                self.body_too_large = True
                self._release(b"\r\n".join(kept))
                return
            self._need = length
            self._stripped_head = b"\r\n".join(kept)
            self._head = self._head[end + 4 :]
        if self._need is not None and len(self._head) >= self._need:
            self.http_body = bytes(self._head[: self._need])
            self._release(self._stripped_head)

    def _release(self, data: bytes) -> None:
        self._sniffing = False
        self._head = bytearray()
        super().data_received(data)
