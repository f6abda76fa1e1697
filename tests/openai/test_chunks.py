"""The pure chunk assembler, with plain dicts."""

from __future__ import annotations

from adapters.openai.chunks import ChunkAssembler
from bridge.models import Delta, Done, ToolCall


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_content_reasoning_and_done_with_usage() -> None:
    a = ChunkAssembler()
    events = a.feed(chunk({"role": "assistant", "content": ""}))
    events += a.feed(chunk({"reasoning_content": "hmm"}))
    events += a.feed(chunk({"reasoning": "alt"}))
    events += a.feed(chunk({"content": "Hi"}))
    events += a.feed(chunk({}, "stop"))
    events += a.feed({"choices": [], "usage": {"total_tokens": 3}})
    assert events == [Delta(reasoning="hmm"), Delta(reasoning="alt"), Delta(text="Hi")]
    assert a.done() == Done(finish_reason="stop", usage={"total_tokens": 3})


def test_fragmented_interleaved_tool_calls() -> None:
    a = ChunkAssembler()
    frags = [
        {"index": 0, "function": {"name": "weather", "arguments": ""}},
        {"index": 1, "function": {"name": "time", "arguments": '{"tz"'}},
        {"index": 0, "function": {"arguments": '{"city": '}},
        {"index": 1, "function": {"arguments": ': "UTC"}'}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    events = []
    for f in frags:
        events += a.feed(chunk({"tool_calls": [f]}))
    events += a.feed(chunk({}, "tool_calls"))
    assert events == [
        ToolCall("weather", "started", "", index=0),
        ToolCall("time", "started", "", index=1),
        ToolCall("time", "pending", '{"tz"', index=1),
        ToolCall("weather", "pending", '{"city": ', index=0),
        ToolCall("time", "pending", '{"tz": "UTC"}', index=1),
        ToolCall("weather", "pending", '{"city": "Paris"}', index=0),
        ToolCall("weather", "finished", '{"city": "Paris"}', index=0),
        ToolCall("time", "finished", '{"tz": "UTC"}', index=1),
    ]
    assert a.done() == Done(finish_reason="tool_calls")


def test_no_finish_reason_means_no_done() -> None:
    a = ChunkAssembler()
    a.feed(chunk({"content": "cut"}))
    assert a.done() is None


def test_other_choices_and_junk_are_ignored() -> None:
    a = ChunkAssembler()
    assert a.feed(chunk({"content": "second choice"}, index=1)) == []
    assert a.feed({"choices": None}) == []
    assert a.feed({"choices": ["junk"]}) == []
