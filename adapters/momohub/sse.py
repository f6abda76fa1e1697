"""A pure, incremental Server-Sent Events parser that survives MomoHub's unescaped data.

No sockets, no awaits: feed it bytes as they arrive, get complete events back.

Why not a strict SSE parser: MomoHub writes every event as ``"event: " + type + "\\ndata: " + data +
"\\n\\n"`` without escaping ``data``. A token holding a line break therefore arrives as a ``data:``
line followed by BARE lines (no field name), which the SSE spec tells a parser to ignore -- the text
would be lost. A token holding a blank line even ends the event early, and the rest of it arrives as
a block with no ``event:`` field.

How the text is put back together (the continuation rule):

* Inside a block, once the ``data:`` line has been seen, every following line up to the blank line is
  part of the data, joined with ``"\\n"``: bare lines, lines whose "field" is not an SSE field
  ("note: hi"), and even ``event:``/``id:``/``retry:``/``:`` lines, because MomoHub always writes the
  event type *before* its single data line, so anything after it is the token's own text. Only
  another ``data:`` line is read as a field (multi-line data per the spec, for builds that do escape).
* After a block ends, a new event starts only with an ``event:`` line, a ``:`` comment, or
  ``data: [DONE]`` (or any ``data:`` line if the previous event had no type: streams that never
  name their events are not MomoHub's raw format). Any other first line means the blank line that
  ended the block was inside the token: that block is *continuation* text of the previous event,
  read verbatim.
* Blank lines between events are counted: the first one is the terminator, each extra one is a
  ``"\\n"`` the previous token ended with. They are given back as a continuation (with the right
  number of newlines) when the next event starts or the stream ends.

Continuations are emitted as separate ``SSEEvent(continuation=True)`` whose ``data`` is exactly the
text to append (leading newlines included), so ``first.data + cont.data + ...`` is the original
payload. Latency trade-off: an event is emitted as soon as its block ends -- never held back in case
a continuation follows -- so deltas stream without delay; the price is that callers must accept
extra text for an event they have already seen. Only trailing newlines of a token wait, until the
next event (the next token, a heartbeat, or the end of the stream) proves they were not the
terminator.

Known ambiguities, inherent to the unescaped format (resolved toward the SSE spec): a token line
that starts with ``data:`` loses that prefix, and text after a blank line inside a token that starts
with ``event:``, ``:`` or is ``data: [DONE]`` is read as a new event/comment. A CR or CRLF inside a
token comes back as LF (all three end a line in SSE).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["SSEEvent", "SSEParser", "SSEProtocolError"]

_LINE_END = re.compile(r"\r\n|\r|\n")
_DONE = "[DONE]"
# A line longer than this means a broken or hostile server, not a long reply: stop buffering.
MAX_LINE_CHARS = 4 * 1024 * 1024


class SSEProtocolError(ValueError):
    """The byte stream cannot be an event stream (e.g. an endless line)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One parsed unit of the stream.

    ``kind="comment"``: a ``:`` line (heartbeats); ``data`` is its text.
    ``kind="event"``: a dispatched event; ``event`` is its type ("" when the block had none).
    ``continuation=True``: ``data`` is more text of the previous event, to append verbatim.
    """

    kind: Literal["event", "comment"]
    event: str = ""
    data: str = ""
    id: str | None = None
    retry: int | None = None
    continuation: bool = False


@dataclass(slots=True)
class _Block:
    event: str | None = None
    data: list[str] | None = None
    id: str | None = None
    retry: int | None = None
    # A continuation block collects raw lines for the previous event; `lead` is its newline prefix.
    continuation: bool = False
    lead: str = ""
    lines: list[str] = field(default_factory=list)


def _split_field(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep:
        return line, ""
    # The spec strips exactly one leading space; "data:x" and "data: x" are both "x".
    return name, value[1:] if value.startswith(" ") else value


class SSEParser:
    """Incremental SSE parser: ``feed`` bytes in any chunking, ``close`` at end of stream."""

    def __init__(self, *, max_line: int = MAX_LINE_CHARS) -> None:
        self._max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" belongs to it
        self._started = False
        self._block: _Block | None = None
        # The event that later continuation text would belong to (None after a comment/at start).
        self._open: str | None = None
        # Blank lines since the last block ended (the first is its terminator).
        self._blanks = 0
        self._closed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse the next bytes; returns the events they completed (possibly none)."""
        if self._closed:
            raise RuntimeError("SSEParser.feed after close")
        return self._consume(self._decoder.decode(chunk))

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch an unterminated last event and any pending trailing newlines.

        The spec drops an unterminated event; we keep it because losing the end of a reply is
        worse than accepting a server that forgot the final blank line.
        """
        if self._closed:
            return []
        out = self._consume(self._decoder.decode(b"", final=True))
        self._closed = True
        if self._buf:
            self._line(self._buf, out)
            self._buf = ""
        if self._block is not None:
            self._end_block(out)
        self._flush_trailing(out)
        self._open = None
        return out

    # ----- line splitting -------------------------------------------------------------------

    def _consume(self, text: str) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if not text:
            return out
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        buf = self._buf + text
        if "\r" not in buf:
            self._lines(buf.split("\n"), out)
            return out
        pos = 0
        for m in _LINE_END.finditer(buf):
            self._line(buf[pos : m.start()], out)
            pos = m.end()
            if m.group() == "\r" and pos == len(buf):
                # Could be the first half of "\r\n" split across chunks: end the line now (no
                # waiting) and drop the "\n" if it turns up at the start of the next chunk.
                self._skip_lf = True
        self._buf = buf[pos:]
        if len(self._buf) > self._max_line:
            raise SSEProtocolError(f"line longer than {self._max_line} characters")
        return out

    def _lines(self, lines: list[str], out: list[SSEEvent]) -> None:
        """LF-only text split into lines; the last one is unfinished and stays buffered.

        MomoHub's usual block -- ``event:`` line, one ``data:`` line, blank line -- met with
        no block open is dispatched here in one step: exactly what `_line` would do for its
        three lines, without the per-line dispatch that dominates a burst of tokens.
        """
        last = len(lines) - 1
        i = 0
        while i < last:
            line = lines[i]
            if (
                i + 2 < last
                and self._block is None
                and line.startswith("event:")
                and lines[i + 1].startswith("data:")
                and lines[i + 2] == ""
            ):
                event = line[7:] if line.startswith("event: ") else line[6:]
                data = lines[i + 1]
                data = data[6:] if data.startswith("data: ") else data[5:]
                self._flush_trailing(out)
                out.append(SSEEvent("event", event=event, data=data))
                self._open = event
                self._blanks = 1
                i += 3
                continue
            self._line(line, out)
            i += 1
        self._buf = lines[last]
        if len(self._buf) > self._max_line:
            raise SSEProtocolError(f"line longer than {self._max_line} characters")

    # ----- event assembly -------------------------------------------------------------------

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if line == "":
            if self._block is not None:
                self._end_block(out)
                self._blanks = 1
            else:
                self._blanks += 1
            return
        block = self._block
        if block is None:
            self._start_block(line, out)
            return
        if block.continuation:
            block.lines.append(line)
        elif block.data is not None:
            name, value = _split_field(line)
            # After the data line everything is the token's own text (see module doc), except a
            # further `data:` field, which is the spec's multi-line data.
            block.data.append(value if name == "data" and ":" in line else line)
        else:
            self._header_line(block, line, out)

    def _start_block(self, line: str, out: list[SSEEvent]) -> None:
        name, value = _split_field(line)
        if line.startswith(":"):
            self._flush_trailing(out)
            self._open = None
            out.append(SSEEvent("comment", data=value))
            return
        # `data:` opens a new event when no named event is open: streams that never name their
        # events (one JSON object per block) don't have the unescaped-text quirk.
        new_event = name == "event" or (name == "data" and (value == _DONE or not self._open))
        if not new_event and self._open is not None:
            self._block = _Block(continuation=True, lead="\n" * (self._blanks + 1), lines=[line])
            self._blanks = 0
            return
        self._flush_trailing(out)
        self._open = None
        self._block = _Block()
        self._header_line(self._block, line, out)

    def _header_line(self, block: _Block, line: str, out: list[SSEEvent]) -> None:
        if line.startswith(":"):
            out.append(SSEEvent("comment", data=_split_field(line)[1]))
            return
        name, value = _split_field(line)
        if name == "event":
            block.event = value
        elif name == "data":
            block.data = [value]
        elif name == "id":
            if "\0" not in value:
                block.id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                block.retry = int(value)
        # Anything else before the data line is an unknown field: ignored, as the spec says.

    def _end_block(self, out: list[SSEEvent]) -> None:
        block = self._block
        self._block = None
        if block is None:
            return
        if block.continuation:
            assert self._open is not None
            out.append(
                SSEEvent(
                    "event",
                    event=self._open,
                    data=block.lead + "\n".join(block.lines),
                    continuation=True,
                )
            )
            return
        if block.event is None and block.data is None:
            return  # only id/retry/unknown fields: nothing to dispatch
        event = block.event or ""
        out.append(
            SSEEvent(
                "event",
                event=event,
                data="\n".join(block.data or []),
                id=block.id,
                retry=block.retry,
            )
        )
        self._open = event

    def _flush_trailing(self, out: list[SSEEvent]) -> None:
        """Extra blank lines after an event were newlines its token ended with."""
        if self._open is not None and self._blanks > 1:
            out.append(
                SSEEvent(
                    "event", event=self._open, data="\n" * (self._blanks - 1), continuation=True
                )
            )
        self._blanks = 0
