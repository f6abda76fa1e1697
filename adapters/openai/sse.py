"""Incremental Server-Sent Events reader for OpenAI-compatible streams (pure: bytes in, payloads out).

The per-chunk hot path reads the upstream's `data:` lines itself instead of letting the SDK build
a model object for every chunk; this module turns whatever byte pieces the network delivers into
complete event payloads, in order, without losing a split line or a split UTF-8 character.
"""

from __future__ import annotations

# A stream that never ends a line is not an SSE stream; bound what it can make us hold.
MAX_LINE = 4 << 20
# Nor is one that never ends an event: its `data:` lines would pile up, then be joined and parsed
# in one go on the event loop. Counted as the lines' bytes on the wire, so that a flood of tiny
# lines (each held as its own bytes object) trips it as soon as one long line would.
MAX_EVENT = 4 << 20


class SSEError(ValueError):
    """The upstream's stream cannot be read as Server-Sent Events."""


class SSEReader:
    __slots__ = ("_buf", "_data", "_size")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        # Bytes of the `data:` lines of the unfinished event.
        self._size = 0

    def feed(self, piece: bytes) -> list[bytes]:
        """The `data` of every event completed by ``piece`` (multi-line data joined by \\n)."""
        lines = (self._buf + piece if self._buf else piece).split(b"\n")
        # The last element is the unfinished line (b"" when the piece ended a line).
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE:
            raise SSEError(f"a stream line is longer than {MAX_LINE} bytes")
        out: list[bytes] = []
        data = self._data
        size = self._size
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
                    size = 0
            elif line[:5] == b"data:":
                size += len(line) + 1
                if size > MAX_EVENT:
                    raise SSEError(f"a stream event is longer than {MAX_EVENT} bytes")
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # Comments (keep-alives), `event:`, `id:` and `retry:` carry nothing we relay.
        self._size = size
        return out

    def close(self) -> list[bytes]:
        """An event left unterminated when the stream ended (some servers omit the blank line)."""
        if self._buf:
            self.feed(b"\n")
        if self._data:
            data, self._data, self._size = b"\n".join(self._data), [], 0
            return [data]
        return []
