"""Incremental Server-Sent Events reader for OpenAI-compatible streams (pure: bytes in, payloads out).

The per-chunk hot path reads the upstream's `data:` lines itself instead of letting the SDK build
a model object for every chunk; this module turns whatever byte pieces the network delivers into
complete event payloads, in order, without losing a split line or a split UTF-8 character.
"""

from __future__ import annotations

# A stream that never ends a line is not an SSE stream; bound what it can make us hold.
MAX_LINE = 4 << 20


class SSEError(ValueError):
    """The upstream's stream cannot be read as Server-Sent Events."""


class SSEReader:
    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        """The `data` of every event completed by ``piece`` (multi-line data joined by \\n)."""
        lines = (self._buf + piece if self._buf else piece).split(b"\n")
        # The last element is the unfinished line (b"" when the piece ended a line).
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE:
            raise SSEError(f"a stream line is longer than {MAX_LINE} bytes")
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # Comments (keep-alives), `event:`, `id:` and `retry:` carry nothing we relay.
        return out

    def close(self) -> list[bytes]:
        """An event left unterminated when the stream ended (some servers omit the blank line)."""
        if self._buf:
            self.feed(b"\n")
        if self._data:
            data, self._data = b"\n".join(self._data), []
            return [data]
        return []
