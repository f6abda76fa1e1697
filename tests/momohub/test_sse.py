"""The SSE parser and the MomoHub event decoder, with plain data (no sockets).

The central property: whatever the chunking (every split point, byte by byte, through multi-byte
UTF-8 and between CR and LF), the parser yields the same events, and the reply text rebuilt from the
deltas equals exactly what the server's tokens held -- newlines, blank lines and all.
"""

from __future__ import annotations

import itertools

import pytest

from adapters.momohub.sse import SSEEvent, SSEParser, SSEProtocolError
from adapters.momohub.types import (
    StreamDecoder,
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    StreamHeartbeat,
    StreamToolResult,
    StreamToolStart,
    decode_stream,
)

# ----- helpers ---------------------------------------------------------------------------------


def momohub_event(event: str, data: str) -> bytes:
    """Exactly how the real server writes an event: no escaping at all."""
    return ("event: " + event + "\ndata: " + data + "\n\n").encode()


def comment(text: str) -> bytes:
    return (": " + text + "\n\n").encode()


def parse_chunks(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    return out


def split_at(raw: bytes, *points: int) -> list[bytes]:
    edges = [0, *points, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(edges)]


def reply(events: list[StreamEvent]) -> tuple[str, str | None]:
    """(text rebuilt from deltas, done text or None)."""
    text = "".join(e.text for e in events if isinstance(e, StreamDelta))
    done = [e.text for e in events if isinstance(e, StreamDone)]
    assert len(done) <= 1
    return text, done[0] if done else None


# Tokens chosen to hit every corner of the unescaped format: newlines inside and at the ends, blank
# lines (which end the event early), text that looks like SSE fields or comments inside an event,
# multi-byte characters, JSON-looking text, an empty token.
TOKENS = [
    "Hello",
    " wörld",
    "\n",
    "line2\nline3",
    "\n\n",
    "para",
    "\n\n\nthree",
    "\nnote: hi",
    "\nid: 5\nretry: x\nevent: not-an-event",
    "x\n:) smile",
    "😀",
    "中文字",
    '{"not": "content"}',
    "",
    "a\n\nb\n\n\nc",
    "ends with newline\n",
]
FULL = "".join(TOKENS)


def quirk_stream(tokens: list[str], *, heartbeat_every: int = 3) -> bytes:
    parts = [comment("connected")]
    for i, token in enumerate(tokens):
        parts.append(momohub_event("delta", token))
        if i % heartbeat_every == 0:
            parts.append(comment("heartbeat"))
    parts.append(momohub_event("done", "".join(tokens)))
    return b"".join(parts)


RAW = quirk_stream(TOKENS)
REFERENCE = parse_chunks([RAW])


# ----- the reconstruction property --------------------------------------------------------------


def test_whole_stream_reconstructs_exact_text() -> None:
    text, done = reply(decode_stream(REFERENCE))
    assert text == FULL
    assert done == FULL


def test_every_two_way_split_gives_the_same_events() -> None:
    for point in range(len(RAW) + 1):
        assert parse_chunks(split_at(RAW, point)) == REFERENCE, f"split at byte {point}"


def test_byte_by_byte_gives_the_same_events() -> None:
    chunks = [RAW[i : i + 1] for i in range(len(RAW))]
    assert parse_chunks(chunks) == REFERENCE


def test_every_three_way_split_of_a_small_stream() -> None:
    tokens = ["é\n", "\n\n😀", "x\ny"]
    raw = quirk_stream(tokens, heartbeat_every=2)
    reference = parse_chunks([raw])
    assert reply(decode_stream(reference)) == ("".join(tokens), "".join(tokens))
    for a in range(len(raw) + 1):
        for b in range(a, len(raw) + 1):
            assert parse_chunks(split_at(raw, a, b)) == reference, (a, b)


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_endings_split_everywhere(newline: str) -> None:
    # A spec-conforming stream (escaped data) in each line-ending style.
    text = (
        ": hi\n"
        "event: delta\ndata: 你好\n\n"
        "event: delta\ndata:no-space\n\n"
        "event: done\ndata: first\ndata: second\n\n"
    )
    raw = text.replace("\n", newline).encode()
    expected = [
        SSEEvent("comment", data="hi"),
        SSEEvent("event", event="delta", data="你好"),
        SSEEvent("event", event="delta", data="no-space"),
        SSEEvent("event", event="done", data="first\nsecond"),
    ]
    assert parse_chunks([raw]) == expected
    for point in range(len(raw) + 1):
        assert parse_chunks(split_at(raw, point)) == expected, point
    assert parse_chunks([raw[i : i + 1] for i in range(len(raw))]) == expected


def test_cr_then_lf_in_separate_chunks_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: delta\r") == []
    assert parser.feed(b"\ndata: x\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("event", event="delta", data="x")]
    assert parser.feed(b"\n") == []  # the LF of the CRLF above, not a second blank line
    assert parser.close() == []


# ----- parser details ----------------------------------------------------------------------------


def test_comments_surface_as_events() -> None:
    events = parse_chunks([b": connected\n\n:heartbeat\n\n"])
    assert events == [SSEEvent("comment", data="connected"), SSEEvent("comment", data="heartbeat")]
    assert decode_stream(events) == [StreamHeartbeat(), StreamHeartbeat()]


def test_data_with_and_without_leading_space_and_only_one_space_stripped() -> None:
    events = parse_chunks([b"event: a\ndata:x\n\nevent: b\ndata: y\n\nevent: c\ndata:  z\n\n"])
    assert [e.data for e in events] == ["x", "y", " z"]


def test_bare_line_and_unknown_field_are_continuation_data() -> None:
    raw = b"event: delta\ndata: first\nsecond\nnote: hi\n\n"
    assert parse_chunks([raw]) == [SSEEvent("event", event="delta", data="first\nsecond\nnote: hi")]


def test_blank_line_inside_token_continues_previous_event() -> None:
    raw = momohub_event("delta", "a\n\nb") + momohub_event("delta", "c")
    events = parse_chunks([raw])
    assert events == [
        SSEEvent("event", event="delta", data="a"),
        SSEEvent("event", event="delta", data="\n\nb", continuation=True),
        SSEEvent("event", event="delta", data="c"),
    ]


def test_trailing_newlines_of_a_token_come_when_the_next_event_starts() -> None:
    parser = SSEParser()
    first = parser.feed(momohub_event("delta", "a\n\n"))
    # The delta itself is not held back; only its trailing newlines wait for proof.
    assert first == [SSEEvent("event", event="delta", data="a")]
    assert parser.feed(momohub_event("delta", "b")) == [
        SSEEvent("event", event="delta", data="\n\n", continuation=True),
        SSEEvent("event", event="delta", data="b"),
    ]


def test_trailing_newlines_before_a_heartbeat_and_at_eof() -> None:
    raw = momohub_event("delta", "a\n") + comment("heartbeat") + momohub_event("done", "a\n\n")
    text, done = reply(decode_stream(parse_chunks([raw])))
    assert (text, done) == ("a\n", "a\n\n")


def test_delta_is_emitted_as_soon_as_its_block_ends() -> None:
    parser = SSEParser()
    decoder = StreamDecoder()
    assert decoder.feed(parser.feed(b"event: delta\ndata: one\n\n")) == [StreamDelta("one")]
    # A continuation block arrives later and is appended as one more delta.
    assert decoder.feed(parser.feed(b"two\n\n")) == [StreamDelta("\n\ntwo")]
    assert decoder.feed(parser.feed(momohub_event("done", "one\n\ntwo"))) == []
    assert decoder.feed(parser.close()) + decoder.close() == [StreamDone("one\n\ntwo")]


def test_id_retry_and_bom_at_stream_start() -> None:
    raw = "\ufeffid: 7\nretry: 1500\nevent: delta\ndata: x\n\n".encode()
    assert parse_chunks([raw]) == [SSEEvent("event", event="delta", data="x", id="7", retry=1500)]


def test_unterminated_last_event_is_flushed_at_close() -> None:
    assert parse_chunks([b"event: done\ndata: all of it"]) == [
        SSEEvent("event", event="done", data="all of it")
    ]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    events = parse_chunks([b"event: delta\ndata: a\xffb\n\n"])
    assert events == [SSEEvent("event", event="delta", data="a\ufffdb")]


def test_feed_after_close_is_an_error() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_endless_line_is_refused() -> None:
    parser = SSEParser(max_line=64)
    parser.feed(b"event: delta\ndata: " + b"x" * 50)
    with pytest.raises(SSEProtocolError):
        parser.feed(b"y" * 50)


def test_documented_ambiguities() -> None:
    # A token line starting with "data:" is read as a data field (loses its prefix), and text after
    # a blank line that starts with ":" is a comment. Pinned so a change is a conscious decision.
    events = decode_stream(parse_chunks([momohub_event("delta", "a\ndata: b")]))
    assert reply(events)[0] == "a\nb"
    events = decode_stream(parse_chunks([momohub_event("delta", "a\n\n:b")]))
    assert reply(events)[0] == "a"


# ----- the typed decoder -------------------------------------------------------------------------


def test_delta_as_raw_text_or_json_content() -> None:
    raw = (
        momohub_event("delta", '{"content": "json"}')
        + momohub_event("delta", '{"text": "not content"}')
        + momohub_event("delta", "[1, 2]")
        + momohub_event("done", "x")
    )
    assert decode_stream(parse_chunks([raw])) == [
        StreamDelta("json"),
        StreamDelta('{"text": "not content"}'),
        StreamDelta("[1, 2]"),
        StreamDone("x"),
    ]


def test_data_done_marker_is_done_with_the_delta_text() -> None:
    raw = b'data: {"content": "hi "}\n\ndata: {"content": "there"}\n\ndata: [DONE]\n\n'
    events = decode_stream(parse_chunks([raw]))
    assert events == [StreamDelta("hi "), StreamDelta("there"), StreamDone("hi there")]
    # After a named event, `data: [DONE]` still starts a new event instead of continuing it.
    raw = momohub_event("delta", "x") + b"data: [DONE]\n\n"
    assert decode_stream(parse_chunks([raw])) == [StreamDelta("x"), StreamDone("x")]


def test_tool_events() -> None:
    raw = (
        momohub_event("tool_call_start", '{"name": "search", "arguments": {"q": "cats"}}')
        + momohub_event("tool_call_result", '{"name": "search", "result": "3 cats"}')
        + momohub_event("tool_call_start", '{"name": "calc", "arguments": "{\\"x\\": 1}"}')
        + momohub_event("tool_call_result", '{"name": "calc", "result": {"x": 1}}')
        + momohub_event("done", "")
    )
    assert decode_stream(parse_chunks([raw])) == [
        StreamToolStart("search", {"q": "cats"}),
        StreamToolResult("search", "3 cats"),
        StreamToolStart("calc", {"x": 1}),
        StreamToolResult("calc", '{"x": 1}'),
        StreamDone(""),
    ]


def test_error_event_with_multiline_message() -> None:
    raw = momohub_event("delta", "partial") + momohub_event("error", "model failed:\n\ndetails")
    assert decode_stream(parse_chunks([raw])) == [
        StreamDelta("partial"),
        StreamError("model failed:\n\ndetails"),
    ]


def test_unknown_events_are_ignored_with_their_continuations() -> None:
    raw = momohub_event("usage", "tokens: 5\n\nmore") + momohub_event("done", "ok")
    assert decode_stream(parse_chunks([raw])) == [StreamDone("ok")]


def test_heartbeat_flushes_a_held_done() -> None:
    decoder = StreamDecoder()
    parser = SSEParser()
    assert decoder.feed(parser.feed(momohub_event("done", "bye"))) == []
    assert decoder.has_held
    assert decoder.feed(parser.feed(comment("heartbeat"))) == [StreamDone("bye"), StreamHeartbeat()]
