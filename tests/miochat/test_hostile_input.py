"""Hostile frames: every one gets a FrameError with the right code, never an unexpected exception,
and the failure frame answering it is always valid UTF-8 JSON (plain data, no sockets)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.miochat import protocol as P
from bridge.errors import ErrorCode


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def answer_of(raw: str | bytes) -> dict[str, Any]:
    """What the server would write back, parsed again from the bytes it would send."""
    got = P.parse_request(raw)
    assert isinstance(got, P.FrameError), got
    text = P.dumps(P.failure_from(got))
    return json.loads(text.encode("utf-8"))


def error_of(raw: str | bytes, **kw: Any) -> P.FrameError:
    got = P.parse_request(raw, **kw)
    assert isinstance(got, P.FrameError), got
    return got


HB = '{"request_id":%s,"protocol":"system","type":"heartbeat","data":{"timestamp":%s}}'
DEL = '{"request_id":1,"protocol":"onebot","type":"del_message","data":{"id":"c","content":{"message_id":MID}}}'
FWD = (
    '{"request_id":1,"protocol":"onebot","type":"forward_msg",'
    '"data":{"id":"c","content":[{"message_id":1},{"message_id":MID}]}}'
)


# ----- BAD_FRAME at the envelope, echoing request_id null --------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":' + "[" * 100_000,
        frame(request_id=1, protocol="system", type="heartbeat", data={"x": [[[[[[[[[[1]]]]]]]]]]})
        .replace("[[[[[[[[[[", "[" * 40)
        .replace("]]]]]]]]]]", "]" * 40),
    ],
)
def test_deep_frames_are_bad_frames(raw: str) -> None:
    e = error_of(raw)
    assert e.code is ErrorCode.BAD_FRAME and e.request_id is None
    with pytest.raises(P.FrameError):
        P.parse_frame(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # lone surrogates, escaped, in every kind of field
        '{"request_id":"\\ud800","protocol":"system","type":"login","data":{"mio-chat-id":"u"}}',
        '{"request_id":"ok\\udfff","protocol":"system","type":"heartbeat"}',
        '{"request_id":1,"protocol":"sys\\ud800","type":"login"}',
        '{"request_id":1,"protocol":"system","type":"\\ud800"}',
        '{"request_id":1,"protocol":"onebot","type":"message","id":"\\ud800","data":[]}',
        '{"request_id":1,"protocol":"system","type":"login","data":{"mio-chat-token":"\\udc00"}}',
        '{"request_id":1,"protocol":"onebot","type":"message","id":"c",'
        '"data":[{"type":"text","data":{"text":"hi \\ud83d"}}]}',
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"\\ud800":1}}',
        # raw surrogate code points in a str frame
        '{"request_id":"\ud800","protocol":"system","type":"login"}',
        '{"request_id":1,"protocol":"openai","type":"completions","data":{"model":"\udc00"}}',
        # numbers JSON cannot carry safely
        HB % ("9223372036854775808", "1"),
        HB % ("1", "1" + "0" * 400),
        HB % ("1", "1e400"),
        HB % ("1", "-1e400"),
        HB % ("NaN", "1"),
        HB % ("1", "Infinity"),
        '{"request_id":1,"protocol":"onebot","type":"del_message",'
        '"data":{"content":{"message_id":' + "9" * 30 + "}}}",
    ],
)
def test_unsafe_values_anywhere_are_bad_frames_echoing_null(raw: str) -> None:
    e = error_of(raw)
    assert e.code is ErrorCode.BAD_FRAME
    assert e.request_id is None and e.protocol is None and e.type is None
    answer = answer_of(raw)
    assert answer["request_id"] is None
    assert answer["data"]["error"] == "BAD_FRAME"


def test_surrogate_in_request_id_before_login_is_bad_frame_not_unauthenticated() -> None:
    raw = '{"request_id":"\\ud800","protocol":"onebot","type":"message","data":[]}'
    e = error_of(raw, logged_in=False)
    assert e.code is ErrorCode.BAD_FRAME and e.request_id is None


def test_bytes_frames_with_encoded_surrogates_are_bad_frames() -> None:
    raw = b'{"request_id":"\xed\xa0\x80","protocol":"system","type":"heartbeat"}'
    e = error_of(raw)
    assert e.code is ErrorCode.BAD_FRAME and e.request_id is None


def test_valid_surrogate_pairs_are_fine() -> None:
    raw = '{"request_id":"\\ud83d\\ude00","protocol":"system","type":"heartbeat"}'
    got = P.parse_request(raw)
    assert isinstance(got, P.HeartbeatRequest) and got.request_id == "😀"


# ----- INVALID_DATA in the payloads -------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "needle"),
    [
        ('"' + "1" * 401 + '"', "longer than 32"),
        ('"' + "9" * 25 + '"', "64-bit"),
        ("1e300", "64-bit"),
        ("true", "number"),
        ("[1]", "number"),
    ],
)
def test_bad_heartbeat_timestamps_are_invalid_data(timestamp: str, needle: str) -> None:
    e = error_of(HB % ('"h"', timestamp))
    assert e.code is ErrorCode.INVALID_DATA
    assert (e.request_id, e.protocol, e.type) == ("h", "system", "heartbeat")
    assert e.reason.startswith("timestamp: ") and needle in e.reason


@pytest.mark.parametrize("ts", [10**401, 2**63, -(2**63) - 1, 1e300, "1" * 401])
def test_heartbeat_data_refuses_huge_timestamps_instead_of_crashing(ts: Any) -> None:
    with pytest.raises(ValidationError):
        P.HeartbeatData.model_validate({"timestamp": ts})


@pytest.mark.parametrize(
    ("ts", "now", "delay"),
    [
        (1000, 1500.7, 500),
        ("", 5.0, 0),
        ("soon", 5.0, 0),
        (-(2**63), 1e12, 2**63 - 1),  # clamped to int64
        (2**63 - 1, 0.0, -(2**63)),
    ],
)
def test_heartbeat_delay(ts: Any, now: float, delay: int) -> None:
    assert P.HeartbeatData.model_validate({"timestamp": ts}).delay(now) == delay


@pytest.mark.parametrize("mid", ["1e20", "1.5", '"abc"', str(2**31), str(-(2**31) - 1), "true"])
def test_del_message_ids_must_be_int32(mid: str) -> None:
    raw = DEL.replace("MID", mid)
    e = error_of(raw)
    assert e.code is ErrorCode.INVALID_DATA
    assert "content.message_id" in e.reason and "integer" in e.reason


@pytest.mark.parametrize("mid", ["1e20", "1.5", '"abc"', str(2**31), '"2147483648"'])
def test_forward_ids_must_be_int32(mid: str) -> None:
    raw = FWD.replace("MID", mid)
    e = error_of(raw)
    assert e.code is ErrorCode.INVALID_DATA and "content[1].message_id" in e.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2**31 - 1, 2**31 - 1), (-(2**31), -(2**31)), ("  42 ", 42), ("-7", -7), (0, 0)],
)
def test_int32_message_ids_accepted(value: Any, expected: int) -> None:
    assert P.message_id_of(value, "message_id") == expected


@pytest.mark.parametrize(
    "value",
    [2**31, -(2**31) - 1, 10**20, 1e20, 1.5, 3.0, "abc", "１２", "--5", "", None, True, [1]],
)
def test_bad_message_ids_raise_data_error_naming_the_field(value: Any) -> None:
    with pytest.raises(P.DataError) as ei:
        P.message_id_of(value, "content[3].message_id")
    assert ei.value.code is ErrorCode.INVALID_DATA
    assert ei.value.reason.startswith("content[3].message_id ")
    assert isinstance(ei.value, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize(
    ("data", "contact", "needle"),
    [
        ([{"type": "text", "data": {"text": "a\ud800"}}], "c", "segment 0 data.text"),
        ({"id": "c", "data": {"message": "plain \udfff"}}, None, "message text"),
        ([{"type": "te\ud800xt", "data": {}}], "c", "segment 0 type"),
        ([{"type": "image", "data": {"url": ["\ud800"]}}], "c", "segment 0 data.url[0]"),
        ([{"type": "text", "data": {"n": float("nan")}}], "c", "finite"),
        ([{"type": "text", "data": {"n": 2**64}}], "c", "64-bit"),
        ({"id": "c\ud800", "data": {"message": "hi"}}, None, "contact"),
    ],
)
def test_unsafe_message_content_is_invalid_data(data: Any, contact: Any, needle: str) -> None:
    req = P.Request(request_id=1, protocol="onebot", type="message", data=data, contact=contact)
    with pytest.raises(P.DataError) as ei:
        P.parse_send_message(req)
    assert ei.value.code is ErrorCode.INVALID_DATA and needle in ei.value.reason


def test_surrogate_in_forwarded_text_and_recall_contact_is_invalid_data() -> None:
    fwd = P.Request(
        1, "onebot", "forward_msg", {"id": "c", "content": [{"message": "x\ud800"}]}, None
    )
    with pytest.raises(P.DataError, match="surrogate"):
        P.parse_forward(fwd)
    rec = P.Request(1, "onebot", "del_message", {"id": "\ud800", "message_id": 1}, None)
    with pytest.raises(P.DataError, match="surrogate"):
        P.parse_del_message(rec)


@pytest.mark.parametrize(
    ("model", "data", "needle"),
    [
        (P.LoginData, {"mio-chat-id": "u", "mio-chat-token": "t\ud800"}, "mio-chat-token"),
        (P.CompletionsData, {"messages": [{"content": "\ud800"}]}, "messages[0].content"),
        (
            P.CompletionsData,
            {"messages": [{"role": "user", "content": "hi"}], "temperature": float("nan")},
            "temperature",
        ),
        (
            P.CompletionsData,
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**70},
            "max_tokens",
        ),
        (P.ShareData, {"contactor": {"name": "\udc00"}}, "contactor.name"),
        (P.AbortData, {"request_id": "\ud800"}, "request_id"),
        (P.AbortData, {"request_id": True}, "request_id"),
        (P.AbortData, {"request_id": float("inf")}, "request_id"),
    ],
)
def test_payload_models_refuse_unsafe_values(model: Any, data: Any, needle: str) -> None:
    with pytest.raises(ValidationError) as ei:
        model.model_validate(data)
    assert needle in P.validation_reason(ei.value)


@pytest.mark.parametrize("model", [P.LoginData, P.CompletionsData, P.ShareData, P.AckData])
@pytest.mark.parametrize("data", [[], "x", 5, None])
def test_payload_models_need_an_object(model: Any, data: Any) -> None:
    with pytest.raises(ValidationError) as ei:
        model.model_validate(data)
    assert "data must be an object" in P.validation_reason(ei.value)


# ----- conversation_id --------------------------------------------------------------------------


@pytest.mark.parametrize("cid", ["a", "default", "x" * 64, "A-Z_0.9:b", "thread:42"])
def test_conversation_id_accepted(cid: str) -> None:
    assert (
        P.CompletionsData.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "conversation_id": cid}
        ).conversation_id
        == cid
    )


def test_conversation_id_null_means_default() -> None:
    d = P.CompletionsData.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "conversation_id": None}
    )
    assert d.conversation_id == "default"


@pytest.mark.parametrize(
    "cid", ["", "x" * 65, "a b", "a/b", "a\n", "名", "a\ud800", 5, True, ["a"], {"a": 1}]
)
def test_conversation_id_rejected(cid: Any) -> None:
    with pytest.raises(ValidationError) as ei:
        P.CompletionsData.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "conversation_id": cid}
        )
    assert "conversation_id" in P.validation_reason(ei.value)


def test_conversation_id_over_the_wire_is_invalid_data() -> None:
    raw = frame(
        request_id="c1",
        protocol="openai",
        type="completions",
        data={"messages": [{"role": "user", "content": "hi"}], "conversation_id": "../../etc"},
    )
    e = error_of(raw)
    assert e.code is ErrorCode.INVALID_DATA and e.request_id == "c1"
    assert e.reason.startswith("conversation_id: ")


# ----- request_id echo --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "echo"),
    [
        ("ok", "ok"),
        (7, 7),
        (2.5, 2.5),
        ("bad\ud800", None),
        (float("nan"), None),
        (float("inf"), None),
        (2**63, None),
        (True, None),
        ([1], None),
        (None, None),
    ],
)
def test_failure_and_success_echo_only_json_safe_request_ids(rid: Any, echo: Any) -> None:
    for built in (
        P.failure(rid, "system", "x", ErrorCode.INTERNAL, "r"),
        P.success(rid, "system", "x"),
        P.failure_from(P.FrameError(ErrorCode.INVALID_DATA, "r", request_id=rid)),
    ):
        assert built["request_id"] == echo and type(built["request_id"]) is type(echo)
        json.loads(P.dumps(built).encode("utf-8"))


# ----- fuzz: nothing unexpected escapes ---------------------------------------------------------

SEEDS = [
    frame(request_id=1, protocol="system", type="login", data={"mio-chat-id": "u"}),
    frame(request_id="h", protocol="system", type="heartbeat", data={"timestamp": 17}),
    frame(request_id=2, protocol="system", type="ack", data={"seq": 3}),
    frame(request_id=3, protocol="onebot", type="message", id="c", data=[{"type": "text"}]),
    frame(request_id=4, protocol="onebot", data={"id": "c", "content": {"message_id": 1}}),
    frame(request_id=5, protocol="onebot", type="forward_msg", data={"id": "c", "content": [{}]}),
    frame(request_id=6, protocol="openai", type="completions", data={"messages": []}),
    frame(request_id=7, protocol="openai", type="abort", data={"request_id": 6}),
    frame(request_id=8, protocol="system", type="share", data={"contactor": {}}),
]
NASTY = [
    "\\ud800",
    "\\udfff",
    "\ud800",
    "\\u0000",
    "1e400",
    "-0",
    "9" * 25,
    "NaN",
    "[" * 40,
    "]" * 40,
    "{",
    '"',
    "\\",
    "null",
    "true",
    "😀",
    "\x00",
    ",",
    ":",
    '{"a":' * 50,
    "2147483648",
    "1.5",
]


def test_fuzzed_frames_never_raise_and_always_answer_with_valid_json() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        text = rng.choice(SEEDS)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            cut = rng.choice([0, 0, 1, 3])
            text = text[:at] + rng.choice(NASTY) + text[at + cut :]
        for raw in (text, text.encode("utf-8", "surrogatepass")):
            got = P.parse_request(raw, logged_in=rng.random() < 0.8)
            if isinstance(got, P.FrameError):
                assert got.code is not ErrorCode.INTERNAL
                if got.code is ErrorCode.BAD_FRAME:
                    assert got.request_id is None
                out = P.dumps(P.failure_from(got))
            else:
                out = P.dumps(P.success(got.request_id, got.protocol, got.type))
            json.loads(out.encode("utf-8"))


def _nasty_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(12 if depth < 3 else 9)
    if pick == 0:
        return rng.choice([0, -1, 2**31, 2**63 - 1, -(2**63), 10**18, 2**31 - 1])
    if pick == 1:
        return rng.choice([1.5, -0.0, 1e300, 1e-300, 3.0])
    if pick == 2:
        return rng.choice(["", "x", "\ud800", "a\udfffb", "😀", "１２", " 12 ", "-5", "a" * 300])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick in (4, 5, 6, 7, 8):
        key = rng.choice(["message_id", "message", "type", "data", "id", "content", "text"])
        return {key: _nasty_value(rng, depth + 1)}
    return [_nasty_value(rng, depth + 1) for _ in range(rng.randrange(3))]


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.7:
        out = dict(value)
        key = rng.choice(list(out))
        out[key] = _mutate(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = _mutate(rng, out_list[i], depth + 1)
        return out_list
    return _nasty_value(rng)


DATA_SEEDS: list[dict[str, Any]] = [json.loads(s) for s in SEEDS] + [
    {
        "request_id": 9,
        "protocol": "onebot",
        "type": "message",
        "data": {
            "id": "c",
            "type": "message",
            "data": {"message": [{"type": "text", "data": {"text": "t"}}]},
        },
    },
    {
        "request_id": 10,
        "protocol": "onebot",
        "type": "forward_msg",
        "data": {
            "id": "c",
            "content": [{"message_id": 1, "message": [{"type": "text", "data": {}}]}],
        },
    },
]


def test_fuzzed_data_values_never_raise_and_always_answer_with_valid_json() -> None:
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(4000):
        value = _mutate(rng, rng.choice(DATA_SEEDS))
        raw = json.dumps(value)  # ensure_ascii: lone surrogates travel as \udXXX escapes
        got = P.parse_request(raw)
        if isinstance(got, P.FrameError):
            assert got.code is not ErrorCode.INTERNAL
            seen.add(str(got.code))
            out = P.dumps(P.failure_from(got))
        else:
            seen.add(type(got).__name__)
            out = P.dumps(P.success(got.request_id, got.protocol, got.type))
        json.loads(out.encode("utf-8"))
    assert {"BAD_FRAME", "INVALID_DATA", "MessageRequest", "ForwardRequest"} <= seen
