"""Typed hub requests (a union narrowed by protocol/type Literals) and the frames the server writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.miochat import protocol as P
from bridge.errors import ErrorCode
from bridge.models import Segment

SEGS = [{"type": "text", "data": {"text": "hi"}}]


def raw(**fields: Any) -> str:
    return json.dumps(fields)


def typed(**fields: Any) -> Any:
    got = P.parse_request(raw(**fields))
    assert not isinstance(got, P.FrameError), got
    return got


def error(text: str, **kw: Any) -> P.FrameError:
    got = P.parse_request(text, **kw)
    assert isinstance(got, P.FrameError), got
    return got


# ----- one model per (protocol, type) ----------------------------------------------------------


def test_login() -> None:
    got = typed(
        request_id="l", protocol="system", type="login", data={"mio-chat-id": 12345, "x": 1}
    )
    assert isinstance(got, P.LoginRequest)
    assert (got.request_id, got.data.user_id, got.data.token) == ("l", "12345", "")


@pytest.mark.parametrize("data", [{"timestamp": 1700000000000}, {}, None, "", [1]])
def test_heartbeat_is_lenient_about_its_data(data: Any) -> None:
    fields: dict[str, Any] = {"request_id": 1, "protocol": "system", "type": "heartbeat"}
    if data is not None:
        fields["data"] = data
    got = typed(**fields)
    assert isinstance(got, P.HeartbeatRequest)
    expected = 1700000000000.0 if isinstance(data, dict) and data else None
    assert got.data.millis() == expected


def test_share() -> None:
    got = typed(request_id=1, protocol="system", type="share", data={"contactor": {"name": "n"}})
    assert isinstance(got, P.ShareRequest) and got.data.contactor == {"name": "n"}


@pytest.mark.parametrize("seq", [0, 1, 2**63 - 1])
def test_ack(seq: int) -> None:
    got = typed(request_id="a", protocol="system", type="ack", data={"seq": seq})
    assert isinstance(got, P.AckRequest) and got.data.seq == seq


@pytest.mark.parametrize("data", [{"seq": -1}, {"seq": "3"}, {"seq": 1.0}, {"seq": True}, {}, []])
def test_bad_ack_is_invalid_data(data: Any) -> None:
    e = error(raw(request_id="a", protocol="system", type="ack", data=data))
    assert e.code is ErrorCode.INVALID_DATA
    assert (e.request_id, e.protocol, e.type) == ("a", "system", "ack")


def test_message_real_client_shape() -> None:
    got = typed(request_id=5, protocol="onebot", type="message", id=10000, data=SEGS)
    assert isinstance(got, P.MessageRequest)
    assert got.contact == "10000"
    assert got.data == P.SendMessage("10000", [Segment.text("hi")])


def test_message_document_shape_without_top_level_type() -> None:
    got = typed(
        request_id=1,
        protocol="onebot",
        data={"id": "c", "type": "message", "data": {"message": SEGS, "message_id": 9}},
    )
    assert isinstance(got, P.MessageRequest) and got.data.contact == "c"


def test_del_message_explicit_and_document_recall_form() -> None:
    data = {"id": "c", "type": "message", "content": {"message_id": "12"}}
    for fields in (
        {"request_id": 1, "protocol": "onebot", "type": "del_message", "data": data},
        {"request_id": 1, "protocol": "onebot", "data": data},  # no top-level type
    ):
        got = typed(**fields)
        assert isinstance(got, P.DeleteMessageRequest)
        assert got.type == "del_message"
        assert got.data == P.DeleteMessage("c", 12)


def test_forward() -> None:
    got = typed(
        request_id=1,
        protocol="onebot",
        data={"id": "c", "type": "forward_msg", "content": [{"message_id": 1, "message": SEGS}]},
    )
    assert isinstance(got, P.ForwardRequest)
    assert got.data == P.ForwardMessage("c", [P.ForwardItem(1, [Segment.text("hi")])])


@pytest.mark.parametrize("data", [None, {}, [], "x"])
def test_models_ignores_data(data: Any) -> None:
    assert isinstance(
        typed(request_id=1, protocol="openai", type="models", data=data), P.ModelsRequest
    )


def test_completions() -> None:
    got = typed(
        request_id="c",
        protocol="openai",
        type="completions",
        data={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert isinstance(got, P.CompletionsRequest)
    assert got.data.stream is True and got.data.conversation_id == "default"


@pytest.mark.parametrize("target", ["x", 3, 2.5])
def test_abort_keeps_the_target_request_id_type(target: Any) -> None:
    got = typed(request_id=1, protocol="openai", type="abort", data={"request_id": target})
    assert isinstance(got, P.AbortRequest)
    assert got.data.request_id == target and type(got.data.request_id) is type(target)


@pytest.mark.parametrize("rid", ["abc", "", 7, 0, -3, 1.5, 2**63 - 1])
def test_request_id_type_preserved(rid: Any) -> None:
    got = typed(request_id=rid, protocol="system", type="heartbeat")
    assert got.request_id == rid and type(got.request_id) is type(rid)


def test_models_are_frozen() -> None:
    got = typed(request_id=1, protocol="system", type="heartbeat")
    with pytest.raises(ValidationError):
        got.request_id = 2


# ----- dispatch by class -------------------------------------------------------------------------


def test_every_protocol_and_type_has_its_own_class() -> None:
    classes = list(P.REQUEST_MODELS.values())
    assert len(set(classes)) == len(classes) == 10
    assert P.PROTOCOLS == ("onebot", "openai", "system")
    for (protocol, ftype), cls in P.REQUEST_MODELS.items():
        assert cls.model_fields["protocol"].default == protocol
        assert cls.model_fields["type"].default == ftype


def test_a_handler_table_keyed_by_class_dispatches() -> None:
    seen: list[str] = []
    handlers = {
        P.HeartbeatRequest: lambda f: seen.append(f"hb {f.request_id}"),
        P.AckRequest: lambda f: seen.append(f"ack {f.data.seq}"),
    }
    for text in (
        raw(request_id=1, protocol="system", type="heartbeat"),
        raw(request_id=2, protocol="system", type="ack", data={"seq": 4}),
    ):
        got = P.parse_request(text)
        handlers[type(got)](got)
    assert seen == ["hb 1", "ack 4"]


def test_union_validates_raw_frame_dicts_directly() -> None:
    got = P.REQUEST_FRAME.validate_python(
        {"request_id": 1, "protocol": "onebot", "data": {"id": "c", "content": {"message_id": 3}}}
    )
    assert isinstance(got, P.DeleteMessageRequest) and got.data.message_id == 3
    got = P.REQUEST_FRAME.validate_python(
        {"request_id": 1, "protocol": "onebot", "type": "message", "id": "c", "data": SEGS}
    )
    assert isinstance(got, P.MessageRequest) and got.data.contact == "c"
    with pytest.raises(ValidationError):
        P.REQUEST_FRAME.validate_python({"request_id": 1, "protocol": "system", "type": "nope"})


def test_frame_tag() -> None:
    assert P.frame_tag({"protocol": "system", "type": "ack"}) == "system/ack"
    assert P.frame_tag({"protocol": "onebot", "data": {"content": [{}]}}) == "onebot/forward_msg"
    assert P.frame_tag({"protocol": "onebot"}) is None
    assert P.frame_tag([]) is None
    assert P.frame_tag(P.HeartbeatRequest(request_id=1)) == "system/heartbeat"


def test_models_can_be_built_directly_for_tests() -> None:
    hb = P.HeartbeatRequest(request_id="x")
    assert (hb.protocol, hb.type, hb.data.millis(), hb.contact) == (
        "system",
        "heartbeat",
        None,
        None,
    )
    msg = P.MessageRequest(request_id=1, data=P.SendMessage("c", [Segment.text("a")]))
    assert msg.data.segments == [Segment.text("a")]


# ----- the errors parse_request returns -----------------------------------------------------------


def test_envelope_errors_come_back_not_raised() -> None:
    e = error("not json")
    assert e.code is ErrorCode.BAD_FRAME and e.request_id is None
    e = error(raw(request_id=1, type="heartbeat"))
    assert e.code is ErrorCode.UNKNOWN_PROTOCOL and e.request_id == 1


def test_unknown_protocol_and_type() -> None:
    e = error(raw(request_id=1, protocol="nope", type="x"))
    assert e.code is ErrorCode.UNKNOWN_PROTOCOL
    assert (e.request_id, e.protocol, e.type) == (1, "nope", "x")
    assert "'nope'" in e.reason and "system" in e.reason
    e = error(raw(request_id=2, protocol="openai", type="x" * 5000))
    assert e.code is ErrorCode.UNKNOWN_TYPE and e.request_id == 2
    assert len(e.reason) < 200  # a hostile name is not echoed in full


def test_unauthenticated_only_lets_login_through() -> None:
    e = error(raw(request_id=3, protocol="system", type="heartbeat"), logged_in=False)
    assert e.code is ErrorCode.UNAUTHENTICATED
    assert (e.request_id, e.protocol, e.type) == (3, "system", "heartbeat")
    e = error(raw(request_id=3, protocol="nope", type="x"), logged_in=False)
    assert e.code is ErrorCode.UNAUTHENTICATED
    got = P.parse_request(
        raw(request_id=4, protocol="system", type="login", data={"mio-chat-id": "u"}),
        logged_in=False,
    )
    assert isinstance(got, P.LoginRequest)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mio-chat-id": "bad id"}, "mio-chat-id: "),
        ({}, "mio-chat-id: "),
        ([], "data must be an object"),
        (None, "data must be an object"),
    ],
)
def test_bad_login_data_is_login_failed(data: Any, needle: str) -> None:
    e = error(raw(request_id="L", protocol="system", type="login", data=data), logged_in=False)
    assert e.code is ErrorCode.LOGIN_FAILED and e.request_id == "L"
    assert e.reason.startswith(needle)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"protocol": "onebot", "type": "message", "data": SEGS}, "contact"),
        ({"protocol": "onebot", "type": "message", "id": "c", "data": []}, "empty"),
        ({"protocol": "onebot", "type": "del_message", "data": {"id": "c"}}, "message_id"),
        ({"protocol": "onebot", "type": "forward_msg", "data": {"id": "c"}}, "non-empty list"),
        ({"protocol": "openai", "type": "completions", "data": {}}, "messages: "),
        ({"protocol": "openai", "type": "completions", "data": "x"}, "data must be an object"),
        ({"protocol": "openai", "type": "abort", "data": {}}, "request_id: "),
        ({"protocol": "system", "type": "share", "data": {"contactor": 1}}, "contactor: "),
    ],
)
def test_bad_data_is_invalid_data_with_a_plain_reason(fields: dict[str, Any], needle: str) -> None:
    e = error(raw(request_id="r", **fields))
    assert e.code is ErrorCode.INVALID_DATA
    assert (e.request_id, e.protocol, e.type) == ("r", fields["protocol"], fields["type"])
    assert needle in e.reason
    assert "Value error" not in e.reason and not e.reason.startswith("data: ")


def test_typed_request_from_an_already_parsed_envelope() -> None:
    req = P.parse_frame(raw(request_id=1, protocol="system", type="ack", data={"seq": 2}))
    got = P.typed_request(req)
    assert isinstance(got, P.AckRequest) and got.data.seq == 2


# ----- builders ------------------------------------------------------------------------------------


def test_failure_from_a_frame_error() -> None:
    e = error(raw(request_id="q", protocol="system", type="ack", data={"seq": -1}))
    assert P.failure_from(e) == {
        "request_id": "q",
        "protocol": "system",
        "type": "ack",
        "code": 1,
        "message": "failed",
        "data": {"reason": e.reason, "error": "INVALID_DATA"},
    }


def test_ack_success_is_plain_success() -> None:
    assert P.success("a", "system", "ack") == {
        "request_id": "a",
        "protocol": "system",
        "type": "ack",
        "code": 0,
        "message": "success",
    }


def test_heartbeat_reply() -> None:
    data = P.HeartbeatData.model_validate({"timestamp": 1000})
    assert P.heartbeat_reply(7, data, 1250.9) == {
        "request_id": 7,
        "protocol": "system",
        "type": "heartbeat",
        "code": 0,
        "message": "success",
        "data": {"delay": 250, "revTime": 1250},
    }
    empty = P.heartbeat_reply(7, P.HeartbeatData(), 99.0)
    assert empty["data"] == {"delay": 0, "revTime": 99}


def test_stream_update_and_completed() -> None:
    assert P.stream_update(4, "openai", "completions", seq=0, chunk="a")["data"] == {
        "index": 0,
        "seq": 0,
        "chunk": "a",
        "tool_call": None,
    }
    call = {"name": "f", "action": "started", "params": "{}"}
    upd = P.stream_update(
        4, "onebot", "message", seq=3, tool_call=call, reasoning_content="r", index=1
    )
    assert upd["message"] == "update" and upd["code"] == 0 and upd["type"] == "message"
    assert upd["data"] == {
        "index": 1,
        "seq": 3,
        "chunk": "",
        "tool_call": call,
        "reasoning_content": "r",
    }
    assert P.stream_completed(4, "openai", "completions", "stop") == {
        "request_id": 4,
        "protocol": "openai",
        "type": "completions",
        "code": 0,
        "message": "completed",
        "data": {"finish_reason": "stop"},
    }
    done = P.stream_completed(4, "openai", "completions", "stop", {"total_tokens": 3})
    assert done["data"]["usage"] == {"total_tokens": 3}


def test_message_push_seq_is_top_level() -> None:
    segs = [{"type": "text", "data": {"text": "hi"}}]
    f = P.message_push("s-1", "momo", segs, 42, 1700000000, "momo", "Momo", seq=17)
    assert f["seq"] == 17 and "seq" not in f["data"]["content"]
    without = P.message_push("s-1", "momo", segs, 42, 1700000000, "momo", "Momo")
    assert "seq" not in without
    assert {k: v for k, v in f.items() if k != "seq"} == without
    assert P.message_push("s-1", "c", [], 1, 0, "c", "C", seq=0)["seq"] == 0


def test_message_push_with_stream_request_id_and_seq() -> None:
    f = P.message_push("s-2", "c", [], 1, 0, "c", "C", "r-9", seq=3)
    assert f["seq"] == 3 and f["data"]["content"]["stream_request_id"] == "r-9"


def test_interrupted_reply_notice() -> None:
    f = P.message_push(
        "s-5", "c", [{"type": "text", "data": {"text": "…"}}], 8, 1, "c", "C",
        seq=9, interrupted=True, reply_to=7,
    )  # fmt: skip
    assert f["data"]["content"]["interrupted"] is True
    assert f["data"]["content"]["reply_to"] == 7
    plain = P.message_push("s-5", "c", [], 8, 1, "c", "C")["data"]["content"]
    assert "interrupted" not in plain and "reply_to" not in plain


def test_recall_push_seq_is_top_level() -> None:
    f = P.recall_push("s-4", "momo", 42, seq=5)
    assert f == {
        "request_id": "s-4",
        "protocol": "onebot",
        "type": "del_msg",
        "code": 0,
        "message": "success",
        "seq": 5,
        "data": {"id": "momo", "type": "del_msg", "content": {"message_id": 42}},
    }
    assert "seq" not in P.recall_push("s-4", "momo", 42)


def test_pushes_survive_dumps_with_unsafe_content() -> None:
    f = P.message_push(
        "s-6", "c", [{"type": "text", "data": {"text": "a\ud800"}}], 1, 0, "c", "C\udfff", seq=1
    )
    back = json.loads(P.dumps(f).encode("utf-8"))
    assert back["data"]["content"]["message"][0]["data"]["text"] == "a\ufffd"
    assert back["data"]["content"]["sender"]["name"] == "C\ufffd"
    assert back["seq"] == 1
