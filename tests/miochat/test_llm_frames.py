"""The web client's `llm` frames as plain data: parsing, the time wrapper, replies as frames."""

from __future__ import annotations

import json
from typing import Any

from adapters.miochat import llm_frames as L
from adapters.miochat import socketio_frames as S
from adapters.miochat.envelope import FrameError
from bridge.errors import ErrorCode
from bridge.models import Delta, Done, Failed, ToolCall


def frame(**over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "request_id": "1234567890123456",
        "protocol": "llm",
        "type": "completions",
        "data": {
            "settings": {"provider": "fake", "base": {"model": "echo"}, "chatParams": {}},
            "messages": [{"role": "user", "content": "hi"}],
        },
        "metaData": {"contactorId": "77", "messageId": "1234567890123456"},
    }
    f.update(over)
    return f


def parse(f: dict[str, Any]) -> Any:
    return S.parse(json.dumps(f))


def test_completions_parsed() -> None:
    f = frame()
    f["data"]["settings"]["chatParams"] = {
        "temperature": "0.5",
        "top_p": 0.9,
        "max_tokens": 100.0,
        "reasoning_effort": 3,
        "presence_penalty": True,
    }
    f["metaData"].update(contactorName="x" * 300, namePolicy=2, extra={"deep": [1]})
    req = parse(f)
    assert isinstance(req, L.Completions)
    assert (req.contactor_id, req.message_id, req.provider, req.model) == (
        "77",
        "1234567890123456",
        "fake",
        "echo",
    )
    assert req.params == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 100}
    # Only short, known metaData keys are echoed back.
    assert req.meta == {"contactorId": "77", "messageId": "1234567890123456", "namePolicy": 2}


def test_bad_completions_are_invalid_data_with_the_field() -> None:
    cases = [
        (frame(metaData={}), "contactorId"),
        (frame(metaData={"contactorId": "a b"}), "contactorId"),
        (frame(data={"settings": {}, "messages": [{"role": "user", "content": "x"}]}), "model"),
        (frame(data={"settings": {"base": {"model": "m"}}, "messages": []}), "messages"),
        (frame(data={"settings": {"base": {"model": "m"}}, "messages": [{"role": "x"}]}), "role"),
        (frame(data=[]), "data"),
    ]
    for f, word in cases:
        err = parse(f)
        assert isinstance(err, FrameError) and err.code is ErrorCode.INVALID_DATA, (f, err)
        assert word in err.reason and err.request_id == f["request_id"]


def test_hostile_frames_are_refused_before_parsing() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    err = parse(frame(data=deep))
    assert isinstance(err, FrameError) and err.code is ErrorCode.BAD_FRAME
    err = S.parse(
        '{"request_id": "1", "protocol": "llm", "type": "completions", "data": "\\ud800"}'
    )
    assert isinstance(err, FrameError) and err.code is ErrorCode.BAD_FRAME
    err = parse(frame(request_id={"x": 1}))
    assert isinstance(err, FrameError) and err.code is ErrorCode.BAD_FRAME
    err = parse(frame(type="nope"))
    assert isinstance(err, FrameError) and err.code is ErrorCode.UNKNOWN_TYPE


def test_enter_chat_ack_and_interrupt() -> None:
    e = parse(
        {"request_id": "r", "protocol": "llm", "type": "enter_chat", "data": {"contactorId": 5}}
    )
    assert e == L.EnterChat("r", "5")
    a = parse(
        {
            "request_id": "r",
            "protocol": "llm",
            "type": "ack_message",
            "data": {"contactorId": "5", "messageId": "9"},
        }
    )
    assert a == L.AckMessage("r", "5", "9")
    bad = parse(
        {"request_id": "r", "protocol": "llm", "type": "ack_message", "data": {"contactorId": "5"}}
    )
    assert isinstance(bad, FrameError) and "messageId" in bad.reason
    assert L.parse_interrupt({"contactorId": "5", "messageId": 9}) == L.Interrupt("5", "9")
    assert L.parse_interrupt({"contactorId": "5"}) is None
    assert L.parse_interrupt("5") is None


def test_time_wrapper_stripped_and_what_is_outside_kept() -> None:
    wrapped = '<message time="2026-11-30T01:02:03.000Z">\nhello\nthere\n</message>'
    assert L.unwrap(wrapped) == "hello\nthere"
    assert L.unwrap("> quoted\n" + wrapped) == "> quoted\nhello\nthere"
    assert L.unwrap("no wrapper <message time=") == "no wrapper <message time="
    parts = {"role": "user", "content": [{"type": "text", "text": wrapped}, {"type": "image_url"}]}
    assert L.unwrapped(parts)["content"] == [
        {"type": "text", "text": "hello\nthere"},
        {"type": "image_url"},
    ]


def test_reply_log_frames_and_merged_chunks() -> None:
    clock = iter([1.0, 1.5, 3.0]).__next__
    log = L.ReplyLog("mid", {"contactorId": "7", "messageId": "mid"}, clock=clock)
    assert log.pending() == {
        "protocol": "llm",
        "message": "pending",
        "request_id": "mid",
        "data": {"metaData": {"contactorId": "7", "messageId": "mid"}},
    }
    out = log.feed(Delta(reasoning="think "))
    out += log.feed(Delta(reasoning="more"))
    assert [f["data"]["data"] for f in out] == [
        {"text": "think ", "startTime": 1000, "duration": 0},
        {"text": "more", "startTime": 1000, "duration": 500},
    ]
    log.feed(Delta("Hel"))
    log.feed(Delta("lo"))
    calls = log.feed(ToolCall("f", "started", index=0))
    calls += log.feed(ToolCall("f", "pending", '{"a"', index=0))
    calls += log.feed(ToolCall("f", "pending", '{"a": 1}', index=0))
    calls += log.feed(ToolCall("f", "finished", '{"a": 1}', result="ok", index=0))
    calls += log.feed(ToolCall("f", "started", index=0))  # a new call at the same index
    ids = [f["data"]["content"]["id"] for f in calls]
    assert ids[:4] == [ids[0]] * 4 and ids[4] != ids[0]
    assert [f["data"]["content"]["parameters"] for f in calls[1:3]] == ['{"a"', ": 1}"]
    end = log.feed(Done())
    assert [f["message"] for f in end] == ["complete"] and log.status == "completed"
    assert log.feed(Delta("late")) == []
    assert log.chunks == [
        {"type": "reason", "data": {"text": "think more", "startTime": 1000, "duration": 500}},
        {"type": "content", "content": "Hello"},
        {
            "type": "toolCall",
            "content": {
                "id": ids[0],
                "name": "f",
                "action": "finished",
                "parameters": '{"a": 1}',
                "result": "ok",
            },
        },
        {
            "type": "toolCall",
            "content": {
                "id": ids[4],
                "name": "f",
                "action": "started",
                "parameters": "",
                "result": None,
            },
        },
    ]
    sync = log.sync()
    assert sync["message"] == "sync" and sync["data"]["status"] == "completed"
    assert sync["data"]["chunks"] is log.chunks and sync["data"]["messageId"] == "mid"


def test_failure_and_whole_text_replies() -> None:
    log = L.ReplyLog("m", {"contactorId": "7", "messageId": "m"})
    (failed,) = log.feed(Failed(ErrorCode.UPSTREAM_ERROR, "boom"))
    assert failed["message"] == "failed" and failed["data"]["message"] == "boom"
    assert failed["data"]["code"] == "UPSTREAM_ERROR" and log.error["message"] == "boom"
    whole = L.ReplyLog("w", {"contactorId": "7", "messageId": "w"})
    frames = whole.feed(Done(text="all at once"))
    assert [f["message"] for f in frames] == ["update", "complete"]
    assert whole.chunks == [{"type": "content", "content": "all at once"}]


def test_every_llm_request_names_its_protocol_and_type() -> None:
    """Metrics and logs label frames by them: none may be blank."""
    for cls in (L.Completions, L.EnterChat, L.AckMessage, L.Interrupt):
        assert cls.protocol == "llm" and cls.type
