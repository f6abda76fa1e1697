"""MOMO AI's streamed answers, read incrementally (pure: bytes in, events out).

The docs show ``data: {"delta": "..."}`` lines and a client that parses every line starting with
``data: ``; they say nothing about how a stream ends or fails. `StreamParser` therefore takes
what the docs show and what such APIs send in practice:

- lines end with ``\\n`` or ``\\r\\n``; the network's pieces may split them anywhere (inside a
  UTF-8 character, between ``\\r`` and ``\\n``);
- ``data: `` or ``data:``; comments (``: keep-alive``), ``id:`` and ``retry:`` lines are ignored;
  an ``event: error`` makes its event's data a failure, an ``event: done`` (or ``end``,
  ``complete``...) ends the stream; a line that is a bare JSON object (NDJSON) counts as data;
- a ``data:`` line whose payload is complete JSON is handled when the line ends, so a server that
  never sends blank lines still streams live; a payload that is not complete JSON yet is joined
  with the event's following ``data:`` lines (SSE multi-line data) until it parses; at the blank
  line that ends the event (or the end of the body) it must parse, else `StreamError`;
- text: ``{"delta": "..."}`` (or ``{"delta": {"content": ...}}``), ``{"content": ...}``,
  ``{"text": ...}``, any of those inside ``data``, OpenAI's ``choices[0].delta.content``;
- the end: ``[DONE]``; a JSON line with ``"done": true``, a ``finish_reason`` (top level, in
  ``data`` or in ``choices[0]``), ``"type"``/``"event"``/``"status"`` ``"done"``; or a whole
  success envelope ``{"success": true, "data": {"content", "tokens_used", "cost", "id"}}`` (whose
  content is emitted only when no text was streamed before it). Text in an end line is emitted
  before the end; counts are read from the line, its ``usage`` and its ``data``;
- a failure: ``{"success": false, "error": {...}}``, ``{"error": ...}``, ``{"type": "error"}``;
- any other JSON (``{"ping": 1}``, a number) is ignored; so is everything after an end or failure.

Nothing is held beyond `MAX_LINE` bytes of one line or `MAX_EVENT` bytes of one event's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.momoai.wire import (
    ApiFailure,
    finite_float,
    non_negative_int,
    parse_failure,
    scrub,
)

__all__ = [
    "MAX_EVENT",
    "MAX_LINE",
    "StreamEnd",
    "StreamError",
    "StreamEvent",
    "StreamFailure",
    "StreamParser",
    "TextDelta",
]

# A stream that never ends a line is not a line stream; bound what it can make us hold.
MAX_LINE = 4 << 20
# Nor is one that never ends an event (its data lines counted as their bytes on the wire).
MAX_EVENT = 4 << 20
# A multi-line payload is re-parsed after each of its lines that could close it while it is this
# small; past it, only once it has doubled since the last try (and at the event's end), so a
# payload of many lines costs linear, not quadratic, parsing.
_EAGER = 8 << 10
# An event's data lines are counted as their bytes on the wire (`data: ...\n`), so that a flood
# of tiny lines (each held as its own bytes object) trips MAX_EVENT as soon as long lines would.
_LINE_OVERHEAD = 7
# Words that end a stream as a line's "type"/"event"/"status" or as an `event:` field.
_END_WORDS = frozenset({"done", "end", "finish", "finished", "complete", "completed"})
_END_EVENTS = frozenset(w.encode() for w in _END_WORDS)
_MAX_FINISH_REASON = 64
# Keys that make a chunk more than text: an error, an end, a nested or OpenAI-style chunk.
_SPECIAL_KEYS = frozenset(
    {"error", "success", "type", "event", "status", "done", "finish_reason", "choices", "data"}
)
_BOM = b"\xef\xbb\xbf"


class StreamError(ValueError):
    """MOMO AI's stream cannot be read (a line or event too long, data that is not JSON)."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    tokens_used: int | None = None
    cost: float | None = None
    request_id: str | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True, slots=True)
class StreamFailure:
    failure: ApiFailure


StreamEvent = TextDelta | StreamEnd | StreamFailure

# What `_loads` returns for a payload that is not (yet) JSON.
_INCOMPLETE: Any = object()


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    # What orjson refuses and the stdlib takes: lone surrogate escapes (proxies cutting text by
    # UTF-16 units send them), NaN, numbers past a double; invalid UTF-8 becomes U+FFFD.
    try:
        return _scrubbed(json.loads(payload.decode("utf-8", "replace")))
    except (ValueError, RecursionError):
        return _INCOMPLETE


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def _text(d: dict[str, Any]) -> str | None:
    """The text a chunk object carries: ``delta`` (a string or ``{"content"|"text"}``), else
    ``content`` (a string or a list of text parts), else ``text``."""
    v = d.get("delta")
    if isinstance(v, dict):
        v = v.get("content", v.get("text"))
    if v is None:
        v = d.get("content")
        if v is None:
            v = d.get("text")
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = [
            p["text"]
            for p in v
            if isinstance(p, dict)
            and p.get("type", "text") == "text"
            and isinstance(p.get("text"), str)
        ]
        return "".join(parts)
    return None


def _end_word(d: dict[str, Any]) -> bool:
    for key in ("type", "event", "status"):
        v = d.get(key)
        if isinstance(v, str) and v.lower() in _END_WORDS:
            return True
    return False


def _finish_reason(d: dict[str, Any]) -> str | None:
    v = d.get("finish_reason")
    return scrub(v[:_MAX_FINISH_REASON]) if isinstance(v, str) and v else None


def _is_error(d: dict[str, Any]) -> bool:
    if d.get("success") is False:
        return True
    err = d.get("error")
    if err and isinstance(err, dict | str):
        return True
    v = d.get("type", d.get("event"))
    return isinstance(v, str) and v.lower() == "error"


def _end(sources: list[dict[str, Any]], finish: str | None) -> StreamEnd:
    """A StreamEnd with the first counts found in ``sources`` (the line, then its ``data``)."""
    tokens = cost = request_id = None
    for d in sources:
        if tokens is None:
            tokens = non_negative_int(d.get("tokens_used"))
            usage = d.get("usage")
            if tokens is None and isinstance(usage, dict):
                tokens = non_negative_int(usage.get("total_tokens", usage.get("tokens_used")))
        if cost is None:
            cost = finite_float(d.get("cost"))
            if cost is not None and cost < 0:
                cost = None
        if request_id is None:
            v = d.get("request_id", d.get("id"))
            if isinstance(v, int) and not isinstance(v, bool):
                request_id = str(v)
            elif isinstance(v, str) and v:
                request_id = scrub(v[:200])
        if finish is None:
            finish = _finish_reason(d)
    return StreamEnd(
        tokens_used=tokens, cost=cost, request_id=request_id, finish_reason=finish or "stop"
    )


class StreamParser:
    """Feed it the body's pieces as they arrive; ``close`` it at a clean end of the body.

    `ended` turns True with the first `StreamEnd` or `StreamFailure`; everything after is
    ignored. A body that ends without either is a stream that broke off: ``close`` does not
    invent an end.
    """

    __slots__ = (
        "_event",
        "_held",
        "_parts",
        "_pending",
        "_pending_size",
        "_seen_text",
        "_started",
        "_tried",
        "ended",
    )

    def __init__(self) -> None:
        # The unfinished line's pieces, and their size.
        self._parts: list[bytes] = []
        self._held = 0
        # The data lines of a payload that is not complete JSON yet.
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        # The pending payload's size when it last failed to parse.
        self._tried = 0
        # The current event's `event:` field (lowercased), if any.
        self._event: bytes | None = None
        self._seen_text = False
        self._started = False
        self.ended = False

    def feed(self, piece: bytes) -> list[StreamEvent]:
        """The events completed by ``piece``."""
        if self.ended or not piece:
            return []
        if b"\n" not in piece:
            self._parts.append(piece)
            self._held += len(piece)
            if self._held > MAX_LINE:
                raise StreamError(f"a stream line is longer than {MAX_LINE} bytes")
            return []
        if self._parts:
            self._parts.append(piece)
            piece = b"".join(self._parts)
            self._parts = []
        lines = piece.split(b"\n")
        rest = lines.pop()
        self._held = len(rest)
        if rest:
            if self._held > MAX_LINE:
                raise StreamError(f"a stream line is longer than {MAX_LINE} bytes")
            self._parts.append(rest)
        if not self._started:
            self._started = True
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        out: list[StreamEvent] = []
        # No line can be too long when all of them together are not.
        check = len(piece) > MAX_LINE
        loads = orjson.loads
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if check and len(line) > MAX_LINE:
                raise StreamError(f"a stream line is longer than {MAX_LINE} bytes")
            if line.startswith(b"data:"):
                payload = line[6:] if line[5:6] == b" " else line[5:]
                # The common line, a complete JSON chunk, straight through; the rest (a payload
                # orjson refuses, [DONE], one line of several) in `_data`.
                if self._pending is None and payload[:1] == b"{":
                    try:
                        value = loads(payload)
                    except orjson.JSONDecodeError:
                        self._data(payload, out)
                    else:
                        self._handle(value, out)
                else:
                    self._data(payload, out)
            elif not line:
                if self._pending is not None or self._event is not None:
                    self._blank(out)
            elif line[:1] == b"{":
                # A bare JSON line (NDJSON). One that does not parse is not ours to judge.
                if self._pending is None:
                    value = _loads(line)
                    if value is not _INCOMPLETE:
                        self._handle(value, out)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().lower()
            # Comments (keep-alives), `id:`, `retry:` and anything else carry nothing.
            if self.ended:
                self._drop()
                break
        return out

    def close(self) -> list[StreamEvent]:
        """At a clean end of the body: the events of a last unterminated line and of an event
        the body ended without a blank line; `StreamError` if held data is not JSON."""
        if self.ended:
            return []
        out = self.feed(b"\n") if self._parts else []
        if not self.ended:
            self._blank(out)
        return out

    # ----- internals ---------------------------------------------------------------------------

    def _drop(self) -> None:
        self._parts = []
        self._held = 0
        self._pending = None
        self._pending_size = 0

    def _data(self, payload: bytes, out: list[StreamEvent]) -> None:
        pending = self._pending
        if pending is None:
            if payload.startswith(b"[DONE]") and not payload[6:].strip():
                self._finish(StreamEnd(), out)
                return
            if not payload:
                return
            value = _loads(payload)
            if value is _INCOMPLETE:
                self._pending = [payload]
                self._pending_size = self._tried = len(payload) + _LINE_OVERHEAD
            else:
                self._handle(value, out)
            return
        pending.append(payload)
        size = self._pending_size + len(payload) + _LINE_OVERHEAD
        self._pending_size = size
        if size > MAX_EVENT:
            raise StreamError(f"a stream event is longer than {MAX_EVENT} bytes")
        if payload.rstrip()[-1:] in (b"}", b"]") and (size <= _EAGER or size >= 2 * self._tried):
            value = _loads(b"\n".join(pending))
            if value is _INCOMPLETE:
                self._tried = size
            else:
                self._pending = None
                self._handle(value, out)

    def _blank(self, out: list[StreamEvent]) -> None:
        """The end of an event: its pending data must parse now."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            joined = b"\n".join(pending)
            if joined.strip():
                value = _loads(joined)
                if value is not _INCOMPLETE:
                    self._handle(value, out)
                elif self._event == b"error":
                    text = joined.decode("utf-8", "replace")
                    self._finish(StreamFailure(parse_failure(0, None, text)), out)
                else:
                    start = joined[:80].decode("utf-8", "replace")
                    raise StreamError(f"a stream event's data is not JSON: {start!r}")
        event = self._event
        if event is not None:
            self._event = None
            if not self.ended and event in _END_EVENTS:
                self._finish(StreamEnd(), out)

    def _finish(self, event: StreamEnd | StreamFailure, out: list[StreamEvent]) -> None:
        out.append(event)
        self.ended = True

    def _emit(self, text: str | None, out: list[StreamEvent]) -> None:
        if text:
            out.append(TextDelta(text))
            self._seen_text = True

    def _handle(self, value: Any, out: list[StreamEvent]) -> None:
        """One JSON payload."""
        event = self._event
        if event is None and type(value) is dict and value.keys().isdisjoint(_SPECIAL_KEYS):
            # An ordinary chunk: text, if any, and nothing else to look for.
            text = value.get("delta")
            if type(text) is not str:
                text = _text(value)
            if text:
                out.append(TextDelta(text))
                self._seen_text = True
            return
        if self.ended:
            return
        if not isinstance(value, dict):
            if event == b"error":
                text = value if isinstance(value, str) else json.dumps(value)
                self._finish(StreamFailure(parse_failure(0, None, text)), out)
            return
        if event == b"error" or _is_error(value):
            self._finish(StreamFailure(parse_failure(0, value)), out)
            return
        data = value.get("data")
        if not isinstance(data, dict):
            data = None
        if value.get("success") is True and data is not None and "delta" not in data:
            # The whole answer as one envelope: its content only if nothing was streamed.
            if not self._seen_text:
                self._emit(_text(data), out)
            self._finish(_end([value, data], None), out)
            return
        text = _text(value)
        finish = _finish_reason(value)
        final = (
            finish is not None
            or value.get("done") is True
            or _end_word(value)
            or (event is not None and event in _END_EVENTS)
        )
        if text is None:
            choices = value.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                choice = choices[0]
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    text = delta.get("content")
                if text is None:
                    message = choice.get("message")
                    text = message.get("content") if isinstance(message, dict) else None
                    if text is None:
                        text = choice.get("text")
                if not isinstance(text, str):
                    text = None
                reason = _finish_reason(choice)
                if reason is not None:
                    finish = finish or reason
                    final = True
            elif data is not None:
                text = _text(data)
        if data is not None and not final:
            finish = _finish_reason(data)
            final = finish is not None or data.get("done") is True or _end_word(data)
        self._emit(text, out)
        if final:
            self._finish(_end([value] if data is None else [value, data], finish), out)
