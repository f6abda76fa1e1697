"""MOMO AI's streamed answers read incrementally: every accepted shape, every split, every bound."""

from __future__ import annotations

import json
import time

import pytest

from adapters.momoai.stream import (
    MAX_EVENT,
    MAX_LINE,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamFailure,
    StreamParser,
    TextDelta,
)
from adapters.momoai.wire import ApiFailure


def parse(*pieces: bytes, close: bool = True) -> list[StreamEvent]:
    p = StreamParser()
    out: list[StreamEvent] = []
    for piece in pieces:
        out += p.feed(piece)
    if close:
        out += p.close()
    return out


def lines(*payloads: object) -> bytes:
    """``data: <json>`` lines, each followed by a blank line."""
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# A realistic stream: keep-alives, CRLF and LF, Chinese text, an event: line, an id:, an
# OpenAI-style chunk, a multi-line payload, a final line with counts, [DONE] and trailing junk.
REALISTIC = (
    ": keep-alive\r\n\r\n"
    'data: {"delta": "你好"}\r\n\r\n'
    'data:{"delta": ",世界"}\n'
    "retry: 3000\n"
    "id: 7\n"
    "event: message\n"
    'data: {"delta": "!😀 "}\n\n'
    'data: {"choices": [{"delta": {"content": "多行"}, "finish_reason": null}]}\r\n'
    "data: {\r\n"
    'data: "delta": "数据"\r\n'
    "data: }\r\n"
    "\r\n"
    ": ping\n"
    'data: {"content": "。"}\n'
    'data: {"done": true, "tokens_used": 150, "cost": 0.015, "id": "req_123456"}\r\n\r\n'
    "data: [DONE]\n\n"
    'data: {"delta": "ignored"}\n\n'
).encode()

REALISTIC_EVENTS = [
    TextDelta("你好"),
    TextDelta(",世界"),
    TextDelta("!😀 "),
    TextDelta("多行"),
    TextDelta("数据"),
    TextDelta("。"),
    StreamEnd(tokens_used=150, cost=0.015, request_id="req_123456"),
]


def test_realistic_stream_in_one_piece() -> None:
    assert parse(REALISTIC) == REALISTIC_EVENTS


def test_realistic_stream_split_at_every_byte() -> None:
    for i in range(len(REALISTIC) + 1):
        assert parse(REALISTIC[:i], REALISTIC[i:]) == REALISTIC_EVENTS, i


def test_realistic_stream_split_at_every_pair_of_points() -> None:
    step = 7
    for i in range(0, len(REALISTIC), step):
        for j in range(i, len(REALISTIC) + 1, 5):
            assert parse(REALISTIC[:i], REALISTIC[i:j], REALISTIC[j:]) == REALISTIC_EVENTS


def test_realistic_stream_byte_by_byte() -> None:
    assert parse(*(REALISTIC[i : i + 1] for i in range(len(REALISTIC)))) == REALISTIC_EVENTS


def test_events_arrive_as_soon_as_lines_end() -> None:
    p = StreamParser()
    assert p.feed(b'data: {"delta": "a"}') == []
    assert p.feed(b"\r") == []
    # No blank line needed: the line's JSON is complete.
    assert p.feed(b'\ndata: {"delta": "b"}\n') == [TextDelta("a"), TextDelta("b")]
    assert p.feed(b'data: {"delta": "\xe4\xbd') == []
    assert p.feed(b'\xa0"}\n') == [TextDelta("你")]
    assert not p.ended
    assert p.feed(b"data: [DONE]\n") == [StreamEnd()]
    assert p.ended
    assert p.feed(b'data: {"delta": "late"}\n\n') == []
    assert p.close() == []


def test_documented_client_shape_without_blank_lines_or_end() -> None:
    body = 'data: {"delta": "一"}\ndata: {"delta": "二"}\n'.encode()
    p = StreamParser()
    assert p.feed(body) == [TextDelta("一"), TextDelta("二")]
    # A body that ends without an end marker broke off: close invents none.
    assert p.close() == []
    assert not p.ended


def test_unterminated_last_line_is_flushed_at_close() -> None:
    assert parse(b'data: {"delta": "a"}\ndata: {"delta": "b"}') == [TextDelta("a"), TextDelta("b")]
    assert parse(b"data: [DONE]") == [StreamEnd()]
    assert parse(b'data: {"delta": "a"}\r') == [TextDelta("a")]


# ----- line syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"delta":"x"}\n',
        b'data:{"delta":"x"}\n',
        b'data:  {"delta":"x"}\n',
        b'data: {"delta":"x"} \n',
        b'data: {"delta":"x"}\r\n',
        b'\xef\xbb\xbfdata: {"delta":"x"}\n',
        b': comment\nevent: message\nid: 1\nretry: 10\ndata: {"delta":"x"}\n\n',
        b'\n\n\ndata: {"delta":"x"}\n\n\n',
        b'data:\ndata: {"delta":"x"}\n\n',
        b'{"delta":"x"}\n',  # NDJSON
    ],
)
def test_line_syntax(body: bytes) -> None:
    assert parse(body) == [TextDelta("x")]


def test_keep_alives_only() -> None:
    assert parse(b": keep-alive\n\n" * 100 + b":\n\n") == []


def test_unknown_lines_are_ignored() -> None:
    assert parse(b"hello there\nfoo: bar\n{not json\n" + lines({"delta": "x"})) == [TextDelta("x")]


def test_done_marker_variants() -> None:
    assert parse(b"data: [DONE]\n") == [StreamEnd()]
    assert parse(b"data:[DONE]\r\n") == [StreamEnd()]
    assert parse(b"data: [DONE]  \n") == [StreamEnd()]
    assert parse(lines({"delta": "a"}), b"data: [DONE]\n\ndata: [DONE]\n\n") == [
        TextDelta("a"),
        StreamEnd(),
    ]


# ----- multi-line data --------------------------------------------------------------------------


def test_multi_line_payload_is_joined() -> None:
    body = b'data: {"delta":\ndata: "a\\u4e2d",\ndata: "cost": 1}\n\n'
    assert parse(body) == [TextDelta("a中")]


def test_multi_line_payload_is_handled_when_it_parses_without_a_blank_line() -> None:
    p = StreamParser()
    assert p.feed(b'data: {"delta":\n') == []
    assert p.feed(b'data: "a"}\n') == [TextDelta("a")]
    assert p.feed(b'data: {"delta": "b"}\n') == [TextDelta("b")]


def test_pretty_printed_final_envelope() -> None:
    payload = json.dumps(
        {"success": True, "data": {"content": "全文", "tokens_used": 3, "cost": 0.1, "id": "r"}},
        indent=2,
        ensure_ascii=False,
    )
    body = "".join(f"data: {line}\n" for line in payload.splitlines()).encode() + b"\n"
    assert parse(body) == [
        TextDelta("全文"),
        StreamEnd(tokens_used=3, cost=0.1, request_id="r"),
    ]


def test_many_line_payload_parses_linearly() -> None:
    # A large payload split over many lines that each could close it: parsed in well under the
    # time quadratic re-parsing would take.
    items = ",\n".join(f'data: {{"k": {i}}}' for i in range(40_000))
    body = b'data: {"delta": "x", "items": [\n' + items.encode() + b"\ndata: ]}\n\n"
    assert len(body) < MAX_EVENT
    start = time.perf_counter()
    assert parse(body) == [TextDelta("x")]
    assert time.perf_counter() - start < 5


def test_unparseable_payload_at_a_blank_line() -> None:
    with pytest.raises(StreamError, match="not JSON"):
        parse(b"data: hello world\n\n")
    with pytest.raises(StreamError):
        parse(b'data: {"delta": "a"\ndata: oops\n\n')


def test_unparseable_payload_at_the_end_of_the_body() -> None:
    p = StreamParser()
    assert p.feed(b'data: {"delta": "a"\n') == []
    with pytest.raises(StreamError):
        p.close()
    p = StreamParser()
    assert p.feed(b'data: {"delta": "a') == []
    with pytest.raises(StreamError):
        p.close()


def test_whitespace_only_payloads_are_nothing() -> None:
    assert parse(b"data: \n\ndata:\n\ndata:   \n\n") == []


def test_pending_garbage_is_not_rescued_by_done() -> None:
    # A broken payload followed by more lines without a blank line: the event cannot be read.
    with pytest.raises(StreamError):
        parse(b"data: {broken\ndata: [DONE]\n")


# ----- text shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"delta": "x"},
        {"delta": {"content": "x"}},
        {"delta": {"text": "x"}},
        {"content": "x"},
        {"text": "x"},
        {"data": {"delta": "x"}},
        {"data": {"content": "x"}},
        {"data": {"text": "x"}},
        {"success": True, "data": {"delta": "x"}},
        {"choices": [{"delta": {"content": "x"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "x"}}]},
        {"content": [{"type": "text", "text": "x"}, {"type": "image"}]},
        {"delta": "x", "error": None},
    ],
)
def test_text_shapes(payload: object) -> None:
    p = StreamParser()
    assert p.feed(lines(payload)) == [TextDelta("x")]
    assert not p.ended


@pytest.mark.parametrize(
    "payload",
    [
        {"delta": ""},
        {"content": None},
        {"delta": {"role": "assistant"}},
        {"choices": [{"delta": {}}]},
        {"choices": []},
        {"choices": [{"delta": {"content": None}}]},
        {"data": None},
        {"data": "text"},
        {"ping": 1},
        {"delta": 5},
        {},
        1,
        "a string",
        [1, 2],
        None,
        True,
    ],
)
def test_nothing_to_show(payload: object) -> None:
    p = StreamParser()
    assert p.feed(lines(payload)) == []
    assert not p.ended


def test_invalid_utf8_and_lone_surrogates() -> None:
    assert parse(b'data: {"delta": "a\xffb"}\n') == [TextDelta("a\ufffdb")]
    assert parse(b'data: {"delta": "a\\ud83d"}\n') == [TextDelta("a\ufffd")]
    assert parse(b'data: {"delta": "\\ud83d\\ude00"}\n') == [TextDelta("😀")]
    # NaN, which orjson refuses, is read (and a NaN cost is no cost).
    assert parse(b'data: {"delta": "x", "cost": NaN, "done": true}\n') == [
        TextDelta("x"),
        StreamEnd(),
    ]


# ----- the end ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "end"),
    [
        ({"done": True}, StreamEnd()),
        ({"finish_reason": "stop"}, StreamEnd()),
        ({"finish_reason": "length"}, StreamEnd(finish_reason="length")),
        ({"event": "done"}, StreamEnd()),
        ({"type": "done"}, StreamEnd()),
        ({"type": "DONE"}, StreamEnd()),
        ({"status": "completed"}, StreamEnd()),
        ({"data": {"done": True, "tokens_used": 4}}, StreamEnd(tokens_used=4)),
        ({"data": {"finish_reason": "length"}}, StreamEnd(finish_reason="length")),
        (
            {"done": True, "tokens_used": 150, "cost": 0.015, "id": "req_1"},
            StreamEnd(150, 0.015, "req_1"),
        ),
        (
            {"done": True, "usage": {"total_tokens": 42}, "request_id": 9},
            StreamEnd(tokens_used=42, request_id="9"),
        ),
        (
            {"done": True, "data": {"tokens_used": 7, "cost": "0.5", "id": "r"}},
            StreamEnd(7, 0.5, "r"),
        ),
        (
            {
                "id": "chatcmpl-1",
                "choices": [{"delta": {}, "finish_reason": "stop"}],
                "usage": {"total_tokens": 9},
            },
            StreamEnd(tokens_used=9, request_id="chatcmpl-1"),
        ),
        (
            {"choices": [{"delta": {}, "finish_reason": "content_filter"}]},
            StreamEnd(finish_reason="content_filter"),
        ),
        ({"done": True, "tokens_used": -1, "cost": -2, "id": True}, StreamEnd()),
        ({"success": True, "data": {"tokens_used": 1}}, StreamEnd(tokens_used=1)),
    ],
)
def test_end_lines(payload: object, end: StreamEnd) -> None:
    p = StreamParser()
    assert p.feed(lines(payload)) == [end]
    assert p.ended


def test_not_ends() -> None:
    for payload in (
        {"done": False},
        {"finish_reason": None},
        {"finish_reason": ""},
        {"type": "delta"},
        {"choices": [{"delta": {"content": ""}, "finish_reason": None}]},
    ):
        p = StreamParser()
        assert p.feed(lines(payload)) == []
        assert not p.ended


def test_text_in_the_end_line_comes_first() -> None:
    assert parse(lines({"delta": "last", "done": True, "tokens_used": 5})) == [
        TextDelta("last"),
        StreamEnd(tokens_used=5),
    ]
    assert parse(lines({"choices": [{"delta": {"content": "z"}, "finish_reason": "stop"}]})) == [
        TextDelta("z"),
        StreamEnd(),
    ]
    assert parse(lines({"data": {"content": "y", "done": True}})) == [TextDelta("y"), StreamEnd()]


def test_success_envelope_after_deltas_does_not_repeat_the_text() -> None:
    final = {
        "success": True,
        "data": {"id": "req_1", "content": "ab", "tokens_used": 2, "cost": 0.1},
    }
    assert parse(lines({"delta": "a"}, {"delta": "b"}, final)) == [
        TextDelta("a"),
        TextDelta("b"),
        StreamEnd(2, 0.1, "req_1"),
    ]


def test_success_envelope_alone_carries_the_whole_answer() -> None:
    final = {"success": True, "data": {"id": "req_1", "content": "全部", "tokens_used": 2}}
    assert parse(lines({"delta": ""}, final)) == [
        TextDelta("全部"),
        StreamEnd(tokens_used=2, request_id="req_1"),
    ]


def test_sse_end_events() -> None:
    assert parse(b'event: done\ndata: {"tokens_used": 3}\n\n') == [StreamEnd(tokens_used=3)]
    assert parse(b"event: end\n\n") == [StreamEnd()]
    assert parse(b"event: done\n") == [StreamEnd()]
    # The event type belongs to one event only.
    assert parse(b'event: message\n\ndata: {"delta": "x"}\n\n', close=False) == [TextDelta("x")]


def test_everything_after_the_end_is_ignored() -> None:
    p = StreamParser()
    events = p.feed(lines({"done": True}) + lines({"delta": "late"}) + b"data: {broken\n\n")
    assert events == [StreamEnd()]
    assert p.feed(b"x" * (MAX_LINE + 10)) == []
    assert p.close() == []


# ----- failures ---------------------------------------------------------------------------------


def test_error_envelope_in_the_stream() -> None:
    payload = {
        "success": False,
        "error": {
            "code": "INSUFFICIENT_BALANCE",
            "message": "余额不足",
            "details": "当前余额: 0.5 元,本次请求需要: 1.2 元",
        },
    }
    p = StreamParser()
    assert p.feed(lines({"delta": "a"}, payload, {"delta": "b"})) == [
        TextDelta("a"),
        StreamFailure(
            ApiFailure("INSUFFICIENT_BALANCE", "余额不足", "当前余额: 0.5 元,本次请求需要: 1.2 元")
        ),
    ]
    assert p.ended


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        ({"error": {"code": "RATE_LIMIT", "message": "慢点"}}, "RATE_LIMIT", "慢点"),
        ({"error": "boom"}, "UNKNOWN_ERROR", "boom"),
        ({"success": False, "message": "失败"}, "UNKNOWN_ERROR", "失败"),
        ({"type": "error", "code": "AGENT_NOT_FOUND", "message": "m"}, "AGENT_NOT_FOUND", "m"),
        ({"event": "error", "message": "m"}, "UNKNOWN_ERROR", "m"),
        ({"error": {"message": "x"}, "delta": "not shown"}, "UNKNOWN_ERROR", "x"),
    ],
)
def test_error_payloads(payload: object, code: str, message: str) -> None:
    events = parse(lines(payload))
    assert len(events) == 1
    assert isinstance(events[0], StreamFailure)
    assert (events[0].failure.code, events[0].failure.message) == (code, message)
    assert events[0].failure.status == 0


def test_sse_error_events() -> None:
    events = parse(b'event: error\ndata: {"code": "RATE_LIMIT", "message": "m"}\n\n')
    assert events == [StreamFailure(ApiFailure("RATE_LIMIT", "m"))]
    events = parse(b"event: error\ndata: internal failure\n\n")
    assert events == [StreamFailure(ApiFailure("UNKNOWN_ERROR", "internal failure"))]
    events = parse(b'event: error\ndata: "quota"\n\n')
    assert events == [StreamFailure(ApiFailure("UNKNOWN_ERROR", "quota"))]


def test_error_null_is_not_a_failure() -> None:
    assert parse(lines({"error": None, "delta": "x"}, {"error": {}, "delta": "y"})) == [
        TextDelta("x"),
        TextDelta("y"),
    ]


# ----- bounds -----------------------------------------------------------------------------------


def test_a_line_too_long_in_pieces() -> None:
    p = StreamParser()
    piece = b"a" * (1 << 20)
    with pytest.raises(StreamError, match="line"):
        for _ in range(5):
            p.feed(piece)


def test_a_line_too_long_in_one_piece() -> None:
    with pytest.raises(StreamError, match="line"):
        parse(b"data: " + b"a" * MAX_LINE + b"\n")
    with pytest.raises(StreamError, match="line"):
        parse(b": " + b"a" * MAX_LINE + b"\n")
    with pytest.raises(StreamError, match="line"):
        parse(b'data: {"delta": "a"}\n' + b"b" * (MAX_LINE + 1))


def test_a_long_line_within_the_bound_is_fine() -> None:
    text = "字" * ((MAX_LINE - 64) // 3)
    body = b'data: {"delta": "' + text.encode() + b'"}\n'
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    assert parse(*pieces) == [TextDelta(text)]


def test_an_event_too_long() -> None:
    line = b"data: " + b"a" * 1000 + b"\n"
    with pytest.raises(StreamError, match="event"):
        parse(line * (MAX_EVENT // 1000 + 10))
    # Many tiny lines count by their bytes too.
    with pytest.raises(StreamError, match="event"):
        parse(b"data: [\n" + b"data:\n" * (MAX_EVENT + 1))


def test_held_data_is_bounded() -> None:
    p = StreamParser()
    p.feed(b"a" * (MAX_LINE - 1))
    with pytest.raises(StreamError):
        p.feed(b"aa")


def test_a_long_stream_of_short_events_is_fine() -> None:
    body = lines(*({"delta": "字"} for _ in range(20_000)))
    events = parse(body)
    assert len(events) == 20_000
    assert text_of(events) == "字" * 20_000
