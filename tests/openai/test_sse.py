"""The raw SSE reader of OpenAI-compatible streams, and the merging of deltas from one read."""

from __future__ import annotations

import json

import pytest

from adapters.openai.chunks import ChunkAssembler, merge_deltas
from adapters.openai.sse import MAX_EVENT, MAX_LINE, SSEError, SSEReader
from bridge.models import Delta, Done, ToolCall

STREAM = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think "}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"h\\u00e9llo "}}]}\r\n\r\n'
    b"event: message\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"w\xc3\xb6rld"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":'
    b'{"name":"clock","arguments":"{\\"tz\\":"}}]}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":'
    b'{"arguments":"\\"UTC\\"}"}}]}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"total_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)


def _payloads(pieces: list[bytes]) -> list[bytes]:
    reader = SSEReader()
    out: list[bytes] = []
    for piece in pieces:
        out += reader.feed(piece)
    return out + reader.close()


def test_whole_stream_in_one_read() -> None:
    payloads = _payloads([STREAM])
    assert payloads[-1] == b"[DONE]"
    assert len(payloads) == 7
    assert json.loads(payloads[2])["choices"][0]["delta"]["content"] == "wörld"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_split_gives_the_same_payloads(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert _payloads(pieces) == _payloads([STREAM])


def test_multi_line_data_and_a_missing_final_blank_line() -> None:
    assert _payloads([b"data: a\ndata: b\n\ndata:c"]) == [b"a\nb", b"c"]


def test_an_endless_line_is_refused() -> None:
    reader = SSEReader()
    with pytest.raises(SSEError):
        reader.feed(b"data: " + b"x" * (MAX_LINE + 1))


def test_an_endless_event_is_refused_however_its_lines_arrive() -> None:
    line = b"data: x\n"
    # Each piece is well under MAX_LINE and ends its lines: only the event's size can trip.
    piece = line * 1024
    reader = SSEReader()
    fed = 0
    with pytest.raises(SSEError, match="stream event is longer than"):
        while fed <= MAX_EVENT + len(piece):
            assert reader.feed(piece) == []
            fed += len(piece)
    # Refused as soon as it passed the bound, not after holding much more.
    assert fed <= MAX_EVENT


def test_the_event_bound_counts_one_event_only() -> None:
    # Many events together far past the bound are fine: each blank line starts the count anew.
    event = b"data: " + b"y" * 1000 + b"\n" + b"data: z\n\n"
    reader = SSEReader()
    count = 0
    for _ in range(2 * MAX_EVENT // len(event) + 1):
        count += len(reader.feed(event))
    assert count == 2 * MAX_EVENT // len(event) + 1
    # An event just under the bound, in lines, still passes.
    lines = b"data: w\n" * ((MAX_EVENT - 1) // 8)
    assert reader.feed(lines + b"\n") == [b"\n".join([b"w"] * ((MAX_EVENT - 1) // 8))]
    reader.feed(lines)
    assert reader.close() == [b"\n".join([b"w"] * ((MAX_EVENT - 1) // 8))]


def test_events_from_one_read_merge_into_one_delta_but_keep_tool_calls_apart() -> None:
    assembler = ChunkAssembler()
    events = []
    for payload in _payloads([STREAM]):
        if payload != b"[DONE]":
            events += assembler.feed(json.loads(payload))
    merged = merge_deltas(events)
    assert merged[0] == Delta(text="héllo wörld", reasoning="think ")
    assert [e.action for e in merged[1:] if isinstance(e, ToolCall)] == [
        "started",
        "pending",
        "pending",
        "finished",
    ]
    assert merged[-1] == ToolCall("clock", "finished", '{"tz":"UTC"}', index=0)
    assert assembler.done() == Done(finish_reason="stop", usage={"total_tokens": 9})
    assert merge_deltas([Delta("a")]) == [Delta("a")]


def test_runs_of_deltas_merge_on_either_side_of_a_tool_call() -> None:
    call = ToolCall("clock", "started", "", index=0)
    events = [Delta("a", "r1"), Delta("b"), call, Delta("c"), Delta("d", "r2"), Delta("e")]
    assert merge_deltas(events) == [Delta("ab", "r1"), call, Delta("cde", "r2")]


def test_crlf_and_data_without_a_space() -> None:
    assert _payloads([b"data:x\r\n\r\n", b"data:  y\r", b"\n\r\n"]) == [b"x", b" y"]
