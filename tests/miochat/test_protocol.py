"""The sans-I/O hub protocol core, tested with plain data (no sockets).

Contract: docs/protocol.md. The document's frames and the real mio-chat client's
frames differ; both must parse. Builders must produce the contract's shapes exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.miochat import protocol as P
from bridge.errors import ErrorCode
from bridge.models import Segment

T = Segment.text


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def req(data: Any, *, type_: str = "message", contact: str | None = None) -> P.Request:
    return P.Request(request_id=1, protocol="onebot", type=type_, data=data, contact=contact)


# ----- parse_frame: envelope -------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["abc", "", "7", 7, 0, -3, 1.5, 1234567890123])
def test_request_id_type_and_value_preserved(rid: Any) -> None:
    r = P.parse_frame(frame(request_id=rid, protocol="system", type="heartbeat"))
    assert r.request_id == rid
    assert type(r.request_id) is type(rid)


def test_parse_frame_fields_and_bytes_input() -> None:
    raw = {"request_id": "r1", "protocol": "system", "type": "login", "data": {"a": [1, 2]}}
    for text in (json.dumps(raw), json.dumps(raw).encode()):
        r = P.parse_frame(text)
        assert r == P.Request("r1", "system", "login", {"a": [1, 2]}, None)


def test_missing_data_is_none() -> None:
    assert P.parse_frame(frame(request_id=1, protocol="system", type="heartbeat")).data is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("not json", "JSON"),
        ("", "JSON"),
        (b"\xff\xfe{", "JSON"),
        ("[1, 2]", "object"),
        ('"str"', "object"),
        ("null", "object"),
        ("42", "object"),
        (frame(protocol="system", type="heartbeat"), "request_id"),
        (frame(request_id=None, protocol="system", type="heartbeat"), "request_id"),
        (frame(request_id=True, protocol="system", type="heartbeat"), "request_id"),
        (frame(request_id=False, protocol="system", type="heartbeat"), "request_id"),
        (frame(request_id=[1], protocol="system", type="heartbeat"), "request_id"),
        (frame(request_id={"a": 1}, protocol="system", type="heartbeat"), "request_id"),
    ],
)
def test_bad_frames(raw: str | bytes, needle: str) -> None:
    with pytest.raises(P.FrameError) as ei:
        P.parse_frame(raw)
    e = ei.value
    assert e.code is ErrorCode.BAD_FRAME
    assert e.request_id is None  # a BAD_FRAME answer carries request_id null
    assert needle in e.reason


@pytest.mark.parametrize("protocol", [None, 5, ["system"]])
def test_missing_protocol_is_unknown_protocol_with_request_id(protocol: Any) -> None:
    fields: dict[str, Any] = {"request_id": "q", "type": "heartbeat"}
    if protocol is not None:
        fields["protocol"] = protocol
    with pytest.raises(P.FrameError) as ei:
        P.parse_frame(json.dumps(fields))
    assert ei.value.code is ErrorCode.UNKNOWN_PROTOCOL
    assert ei.value.request_id == "q"


def test_missing_type_is_unknown_type_with_request_id_and_protocol() -> None:
    with pytest.raises(P.FrameError) as ei:
        P.parse_frame(frame(request_id=9, protocol="system", data={"type": "login"}))
    e = ei.value
    assert e.code is ErrorCode.UNKNOWN_TYPE
    assert (e.request_id, e.protocol, e.type) == (9, "system", None)


@pytest.mark.parametrize("data", [None, [], {"id": "1"}, {"type": 5}, "message"])
def test_onebot_frame_without_any_type_is_unknown_type(data: Any) -> None:
    fields: dict[str, Any] = {"request_id": 3, "protocol": "onebot"}
    if data is not None:
        fields["data"] = data
    with pytest.raises(P.FrameError) as ei:
        P.parse_frame(json.dumps(fields))
    assert ei.value.code is ErrorCode.UNKNOWN_TYPE
    assert ei.value.protocol == "onebot"


# The document's onebot frames have no top-level type; it lives in data.type.
DOC_SEND = {
    "request_id": 1234567890,
    "protocol": "onebot",
    "data": {
        "id": "1234567890",
        "type": "message",
        "data": {
            "message": [
                {"type": "text", "data": {"text": "Hello, world!"}},
                {"type": "image", "data": {"image": "https://example.com/image.jpg"}},
            ],
            "message_id": 1234567890,
        },
    },
}
DOC_DEL = {
    "request_id": 1234567890,
    "protocol": "onebot",
    "data": {"id": "1234567890", "type": "message", "content": {"message_id": "1234567890"}},
}
DOC_FORWARD = {
    "request_id": 1234567890,
    "protocol": "onebot",
    "data": {
        "id": "1234567890",
        "type": "forward_msg",
        "content": [{"message_id": 1234567890, "message": []}],
    },
}


def test_document_send_frame_without_top_level_type() -> None:
    r = P.parse_frame(json.dumps(DOC_SEND))
    assert (r.protocol, r.type, r.request_id) == ("onebot", "message", 1234567890)
    msg = P.parse_send_message(r)
    assert msg.contact == "1234567890"
    assert msg.segments == [
        T("Hello, world!"),
        Segment("image", {"image": "https://example.com/image.jpg"}),
    ]


def test_document_forward_frame_without_top_level_type() -> None:
    r = P.parse_frame(json.dumps(DOC_FORWARD))
    assert r.type == "forward_msg"
    fwd = P.parse_forward(r)
    assert fwd == P.ForwardMessage("1234567890", [P.ForwardItem(1234567890, [])])


def test_document_del_message_frame_parses_with_explicit_type() -> None:
    r = P.parse_frame(json.dumps({**DOC_DEL, "type": "del_message"}))
    assert r.type == "del_message"
    assert P.parse_del_message(r) == P.DeleteMessage("1234567890", 1234567890)


def test_document_del_message_frame_without_top_level_type() -> None:
    r = P.parse_frame(json.dumps(DOC_DEL))
    assert r.type == "del_message"


def test_top_level_type_wins_over_data_type() -> None:
    r = P.parse_frame(json.dumps({**DOC_FORWARD, "type": "message"}))
    assert r.type == "message"


@pytest.mark.parametrize(
    ("contact", "expected"),
    [("10000", "10000"), (10000, "10000"), (True, None), ([1], None), (None, None)],
)
def test_top_level_contact(contact: Any, expected: str | None) -> None:
    fields: dict[str, Any] = {"request_id": 1, "protocol": "onebot", "type": "message", "data": []}
    if contact is not None:
        fields["id"] = contact
    assert P.parse_frame(json.dumps(fields)).contact == expected


# ----- onebot/message ----------------------------------------------------------------------------

SEGS = [{"type": "text", "data": {"text": "hi"}}, {"type": "at", "data": {"qq": "10000"}}]
EXPECTED = [T("hi"), Segment("at", {"qq": "10000"})]


def test_real_client_shape_top_level_id_and_segment_list() -> None:
    r = P.parse_frame(frame(request_id=5, protocol="onebot", type="message", id="bot", data=SEGS))
    assert P.parse_send_message(r) == P.SendMessage("bot", EXPECTED)


def test_real_client_shape_numeric_contact() -> None:
    r = P.parse_frame(frame(request_id=5, protocol="onebot", type="message", id=10000, data=SEGS))
    assert P.parse_send_message(r).contact == "10000"


def test_real_client_shape_needs_a_contact() -> None:
    with pytest.raises(ValueError, match="contact"):
        P.parse_send_message(req(SEGS))


@pytest.mark.parametrize(
    "data",
    [
        {"id": "c", "type": "message", "data": {"message": SEGS}},
        {"id": "c", "type": "message", "data": {"message": SEGS, "message_id": 77}},
        {"id": "c", "type": "message", "content": {"message": SEGS}},
        {"id": "c", "data": SEGS},
        {"id": "c", "message": SEGS},
    ],
)
def test_document_shapes(data: dict[str, Any]) -> None:
    assert P.parse_send_message(req(data)) == P.SendMessage("c", EXPECTED)


def test_document_shape_contact_falls_back_to_top_level_id() -> None:
    msg = P.parse_send_message(req({"type": "message", "data": {"message": SEGS}}, contact="top"))
    assert msg.contact == "top"


def test_document_shape_inner_id_wins_over_top_level() -> None:
    msg = P.parse_send_message(req({"id": 42, "data": {"message": SEGS}}, contact="top"))
    assert msg.contact == "42"


def test_single_segment_object_is_a_one_segment_message() -> None:
    seg = {"type": "face", "data": {"id": "14"}}
    assert P.parse_send_message(req({"id": "c", "data": {"message": seg}})).segments == [
        Segment("face", {"id": "14"})
    ]
    assert P.parse_send_message(req({"id": "c", "message": seg})).segments == [
        Segment("face", {"id": "14"})
    ]


def test_string_message_is_one_text_segment() -> None:
    assert P.parse_send_message(req({"id": "c", "data": {"message": "plain"}})).segments == [
        T("plain")
    ]


def test_segment_data_missing_or_null_becomes_empty_dict() -> None:
    segs = P.parse_send_message(
        req([{"type": "text", "data": None}, {"type": "shake"}], contact="c")
    ).segments
    assert segs == [Segment("text", {}), Segment("shake", {})]


def test_segment_data_is_copied() -> None:
    inner = {"text": "hi"}
    segs = P.parse_send_message(req([{"type": "text", "data": inner}], contact="c")).segments
    inner["text"] = "changed"
    assert segs == [T("hi")]


@pytest.mark.parametrize(
    ("data", "contact", "needle"),
    [
        ({"id": "c", "data": {"message": []}}, None, "empty"),
        ({"id": "c", "data": {"message": ""}}, None, "empty"),
        ([], "c", "empty"),
        ({"id": "c", "data": {}}, None, "segments"),
        ({"id": "c", "type": "message"}, None, "missing"),
        ({"data": {"message": SEGS}}, None, "contact"),
        ({"id": True, "data": {"message": SEGS}}, None, "contact"),
        ({"id": "c", "data": {"message": 5}}, None, "list"),
        (["just text"], "c", "segment 0"),
        ([{"type": "text", "data": {"text": "ok"}}, {"data": {}}], "c", "segment 1"),
        ([{"type": 3, "data": {}}], "c", "segment 0"),
        ([{"type": "text", "data": "hi"}], "c", "segment 0 data"),
        ("text instead of segments", "c", "object or a list"),
        (None, "c", "object or a list"),
        (12, "c", "object or a list"),
    ],
)
def test_bad_send_message(data: Any, contact: str | None, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        P.parse_send_message(req(data, contact=contact))


# ----- onebot/del_message --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"id": "c", "type": "message", "content": {"message_id": 12}}, P.DeleteMessage("c", 12)),
        ({"id": "c", "content": {"message_id": "12"}}, P.DeleteMessage("c", 12)),
        ({"id": "c", "content": {"message_id": " 12 "}}, P.DeleteMessage("c", 12)),
        ({"id": 10000, "content": {"message_id": 3}}, P.DeleteMessage("10000", 3)),
        ({"content": {"message_id": 3}}, P.DeleteMessage(None, 3)),
        ({"id": True, "content": {"message_id": 3}}, P.DeleteMessage(None, 3)),
        ({"message_id": 4}, P.DeleteMessage(None, 4)),
    ],
)
def test_del_message(data: dict[str, Any], expected: P.DeleteMessage) -> None:
    got = P.parse_del_message(req(data, type_="del_message"))
    assert got == expected
    assert type(got.message_id) is int


def test_del_message_contact_falls_back_to_top_level_id() -> None:
    got = P.parse_del_message(req({"content": {"message_id": 1}}, type_="del_message", contact="t"))
    assert got.contact == "t"


@pytest.mark.parametrize(
    "data",
    [
        None,
        [{"message_id": 1}],
        {"id": "c", "content": {}},
        {"id": "c", "content": "12"},
        {"id": "c", "content": {"message_id": "abc"}},
        {"id": "c", "content": {"message_id": "1.5"}},
        {"id": "c", "content": {"message_id": 1.5}},
        {"id": "c", "content": {"message_id": True}},
        {"id": "c", "content": {"message_id": None}},
        {"id": "c", "content": {"message_id": ""}},
    ],
)
def test_bad_del_message(data: Any) -> None:
    with pytest.raises(ValueError):
        P.parse_del_message(req(data, type_="del_message"))


# ----- onebot/forward_msg ----------------------------------------------------------------------


def test_forward() -> None:
    data = {
        "id": "c",
        "type": "forward_msg",
        "content": [
            {"message_id": 1, "message": SEGS},
            {"message_id": "2", "message": "quoted text"},
            {"message": [{"type": "image", "data": {"url": "u"}}]},
        ],
    }
    fwd = P.parse_forward(req(data, type_="forward_msg"))
    assert fwd == P.ForwardMessage(
        "c",
        [
            P.ForwardItem(1, EXPECTED),
            P.ForwardItem(2, [T("quoted text")]),
            P.ForwardItem(None, [Segment("image", {"url": "u"})]),
        ],
    )


def test_forward_numeric_contact_and_top_level_fallback() -> None:
    item = [{"message_id": 1, "message": SEGS}]
    assert P.parse_forward(req({"id": 7, "content": item})).contact == "7"
    assert P.parse_forward(req({"content": item}, contact="top")).contact == "top"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (None, "object"),
        ([], "object"),
        ({"content": [{"message_id": 1}]}, "contact"),
        ({"id": False, "content": [{"message_id": 1}]}, "contact"),
        ({"id": "c"}, "non-empty list"),
        ({"id": "c", "content": []}, "non-empty list"),
        ({"id": "c", "content": {"message_id": 1}}, "non-empty list"),
        ({"id": "c", "content": ["x"]}, r"content\[0\]"),
        ({"id": "c", "content": [{"message_id": 1}, {"message_id": "x"}]}, r"content\[1\]"),
        ({"id": "c", "content": [{"message_id": 1, "message": [{"data": {}}]}]}, "segment 0"),
    ],
)
def test_bad_forward(data: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        P.parse_forward(req(data, type_="forward_msg"))


# ----- system/login ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ("12345", "12345"),
        (12345, "12345"),
        ("a", "a"),
        ("Alice_Bob-9", "Alice_Bob-9"),
        ("x" * 64, "x" * 64),
        (0, "0"),
    ],
)
def test_login_ids_accepted(raw_id: Any, expected: str) -> None:
    d = P.LoginData.model_validate({"mio-chat-id": raw_id, "mio-chat-token": "tok"})
    assert d.user_id == expected and d.token == "tok"


@pytest.mark.parametrize(
    "raw_id",
    ["", "x" * 65, "has space", "dot.ted", "名字", "semi;colon", True, False, 1.5, None, ["1"], {}],
)
def test_login_ids_rejected(raw_id: Any) -> None:
    with pytest.raises(ValidationError):
        P.LoginData.model_validate({"mio-chat-id": raw_id})


def test_login_id_is_required() -> None:
    with pytest.raises(ValidationError) as ei:
        P.LoginData.model_validate({"mio-chat-token": "t"})
    assert "mio-chat-id" in P.validation_reason(ei.value)


@pytest.mark.parametrize("raw_id", ["alice\n", "12345\n"])
def test_login_id_with_trailing_newline_rejected(raw_id: str) -> None:
    with pytest.raises(ValidationError):
        P.LoginData.model_validate({"mio-chat-id": raw_id})


@pytest.mark.parametrize(("token", "expected"), [(None, ""), ("s3cret", "s3cret"), (123, "123")])
def test_login_token(token: Any, expected: str) -> None:
    assert P.LoginData.model_validate({"mio-chat-id": "u", "mio-chat-token": token}).token == (
        expected
    )


def test_login_token_defaults_to_empty_and_extra_keys_ignored() -> None:
    d = P.LoginData.model_validate({"mio-chat-id": "u", "extra": 1})
    assert d.token == ""


@pytest.mark.parametrize("token", [True, [1], {"a": 1}, 1.5])
def test_login_token_rejected(token: Any) -> None:
    with pytest.raises(ValidationError):
        P.LoginData.model_validate({"mio-chat-id": "u", "mio-chat-token": token})


def test_validation_reason_names_the_field_without_pydantic_prefix() -> None:
    with pytest.raises(ValidationError) as ei:
        P.LoginData.model_validate({"mio-chat-id": "bad id"})
    reason = P.validation_reason(ei.value)
    assert reason.startswith("mio-chat-id: ")
    assert "1-64 characters" in reason and "Value error" not in reason
    assert P.validation_reason(ValueError("plain")) == "plain"


# ----- system/heartbeat -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"timestamp": 1700000000123}, 1700000000123.0),
        ({"timestamp": 1700000000123.5}, 1700000000123.5),
        ({"timestamp": "1700000000123"}, 1700000000123.0),
        ({"timestamp": ""}, None),
        ({"timestamp": None}, None),
        ({"timestamp": "soon"}, None),
        ({}, None),
    ],
)
def test_heartbeat_millis(data: dict[str, Any], expected: float | None) -> None:
    assert P.HeartbeatData.model_validate(data).millis() == expected


@pytest.mark.parametrize("data", [{"timestamp": "inf"}, {"timestamp": "nan"}, {"timestamp": 1e999}])
def test_heartbeat_non_finite_timestamp_treated_as_absent(data: dict[str, Any]) -> None:
    assert P.HeartbeatData.model_validate(data).millis() is None


# ----- other payloads -----------------------------------------------------------------------------


def test_completions_defaults_and_validation() -> None:
    d = P.CompletionsData.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert d.stream is True and d.conversation_id == "default" and d.model == ""
    with pytest.raises(ValidationError):
        P.CompletionsData.model_validate({"model": "m"})
    with pytest.raises(ValidationError):
        P.CompletionsData.model_validate({"messages": "hi"})


@pytest.mark.parametrize("rid", ["x", 3, 2.5])
def test_abort_keeps_request_id_type(rid: Any) -> None:
    got = P.AbortData.model_validate({"request_id": rid}).request_id
    assert got == rid and type(got) is type(rid)


def test_share_data_needs_an_object() -> None:
    assert P.ShareData.model_validate({"contactor": {"name": "n"}}).contactor == {"name": "n"}
    with pytest.raises(ValidationError):
        P.ShareData.model_validate({"contactor": "n"})


# ----- builders -----------------------------------------------------------------------------------


def test_success_without_data_has_no_data_key() -> None:
    assert P.success(7, "onebot", "del_message") == {
        "request_id": 7,
        "protocol": "onebot",
        "type": "del_message",
        "code": 0,
        "message": "success",
    }


def test_success_with_data_including_falsy_data() -> None:
    assert P.success("r", "system", "heartbeat", {"delay": 0})["data"] == {"delay": 0}
    assert P.success("r", "system", "x", {})["data"] == {}
    assert P.success("r", "system", "x", [])["data"] == []


def test_failure_shape() -> None:
    f = P.failure(None, None, None, ErrorCode.BAD_FRAME, "frame is not valid JSON")
    assert f == {
        "request_id": None,
        "protocol": None,
        "type": None,
        "code": 1,
        "message": "failed",
        "data": {"reason": "frame is not valid JSON", "error": "BAD_FRAME"},
    }
    assert type(f["data"]["error"]) is str
    assert json.loads(P.dumps(f))["data"]["error"] == "BAD_FRAME"


def test_stream_frames() -> None:
    assert P.stream_frame(4, "openai", "completions", "pending") == {
        "request_id": 4,
        "protocol": "openai",
        "type": "completions",
        "code": 0,
        "message": "pending",
    }
    upd = P.stream_frame(4, "openai", "completions", "update", {"index": 0, "seq": 0, "chunk": "a"})
    assert upd["message"] == "update" and upd["data"]["chunk"] == "a" and upd["code"] == 0


def test_message_push_shape() -> None:
    segs = [{"type": "text", "data": {"text": "hi"}}]
    f = P.message_push("s-1", "momo", segs, 42, 1700000000, "momo", "Momo")
    assert f == {
        "request_id": "s-1",
        "protocol": "onebot",
        "type": "message",
        "code": 0,
        "message": "success",
        "data": {
            "id": "momo",
            "type": "message",
            "content": {
                "message": segs,
                "message_id": 42,
                "time": 1700000000,
                "sender": {"id": "momo", "name": "Momo"},
            },
        },
    }


@pytest.mark.parametrize("srid", ["r-9", 9, 0])
def test_message_push_with_stream_request_id(srid: Any) -> None:
    f = P.message_push("s-2", "c", [], 1, 0, "c", "C", stream_request_id=srid)
    assert f["data"]["content"]["stream_request_id"] == srid
    assert type(f["data"]["content"]["stream_request_id"]) is type(srid)


def test_forward_push_shape() -> None:
    nodes = [{"type": "nodes", "data": {"messages": [{"message_id": 1}]}}]
    f = P.message_push("s-3", "c", nodes, 5, 1, "c", "C")
    assert f["data"]["content"]["message"] == nodes and f["type"] == "message"


def test_recall_push_shape() -> None:
    assert P.recall_push("s-4", "momo", 42) == {
        "request_id": "s-4",
        "protocol": "onebot",
        "type": "del_msg",
        "code": 0,
        "message": "success",
        "data": {"id": "momo", "type": "del_msg", "content": {"message_id": 42}},
    }


def test_dumps_is_compact_utf8_and_round_trips() -> None:
    f = P.success(1, "system", "x", {"name": "桃 Momo"})
    text = P.dumps(f)
    assert "桃" in text and ", " not in text and ": " not in text
    assert json.loads(text) == f


@pytest.mark.parametrize(
    "raw",
    [
        '{"request_id": NaN, "protocol": "system", "type": "heartbeat"}',
        '{"request_id": 1, "protocol": "system", "type": "heartbeat", "data": {"timestamp": Infinity}}',
    ],
)
def test_non_json_constants_are_bad_frames(raw: str) -> None:
    with pytest.raises(P.FrameError) as e:
        P.parse_frame(raw)
    assert e.value.code == ErrorCode.BAD_FRAME and "not valid JSON" in e.value.reason
