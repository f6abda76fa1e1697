"""permessage-deflate (RFC 7692) for the messages the hub sends: pure, no I/O.

Our own compressor rather than aiohttp's: aiohttp deflates with the full window the client
allows (32 KB, and zlib's default memory level), which costs about 125 KB per idle connection
once one large frame has gone out. A compressor may always use a smaller window than was
negotiated (the peer's inflater handles any distance up to its own window), so the hub uses
4 KB and a small memory level, as `websockets` does: a few percent less compression, a fifth of
the memory.
"""

from __future__ import annotations

import zlib

# 2**12 bytes of history; zlib's raw deflate accepts 9..15.
WINDOW_BITS = 12
MEM_LEVEL = 5
_TAIL = b"\x00\x00\xff\xff"


class Deflater:
    __slots__ = ("_bits", "_reset", "_z")

    def __init__(self, window_bits: int = 15, *, no_context_takeover: bool = False) -> None:
        self._bits = max(9, min(window_bits, WINDOW_BITS))
        # Without context takeover each message starts from an empty window.
        self._reset = no_context_takeover
        # Created on the first message that is worth compressing: until then it costs nothing.
        self._z: zlib._Compress | None = None

    def compress(self, data: bytes) -> bytes:
        """One message's compressed payload, the sync-flush tail removed (RFC 7692 7.2.1)."""
        z = self._z
        if z is None:
            z = zlib.compressobj(1, zlib.DEFLATED, -self._bits, MEM_LEVEL)
            if not self._reset:
                self._z = z
        out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(_TAIL):
            out = out[:-4]
        return out or b"\x00"


def negotiated(extensions: str) -> tuple[int, bool] | None:
    """The server's window bits and no-context-takeover from the Sec-WebSocket-Extensions
    header the server answered with; None when permessage-deflate is not in it."""
    for offer in extensions.split(","):
        params = [p.strip() for p in offer.split(";")]
        if params[0].lower() != "permessage-deflate":
            continue
        bits, takeover_off = 15, False
        for p in params[1:]:
            name, _, value = p.partition("=")
            name = name.strip().lower()
            if name == "server_max_window_bits" and value.strip().strip('"').isdigit():
                bits = int(value.strip().strip('"'))
            elif name == "server_no_context_takeover":
                takeover_off = True
        return bits, takeover_off
    return None
