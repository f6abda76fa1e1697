"""OneBot v11 frames: actions and responses, events both ways, and action parameters."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from adapters.onebot.message import ForwardNode
from adapters.onebot.protocol import (
    NO_ECHO,
    ActionRequest,
    DeleteMsgParams,
    FriendRecallNotice,
    GetForwardMsgParams,
    GetGroupMemberInfoParams,
    GroupMessageEvent,
    GroupRecallNotice,
    HandleQuickOperationParams,
    HeartbeatEvent,
    LifecycleEvent,
    MessageSentEvent,
    PrivateMessageEvent,
    ProtocolError,
    RetCode,
    SendForwardMsgParams,
    SendGroupMsgParams,
    SendMsgParams,
    SendPrivateForwardMsgParams,
    SendPrivateMsgParams,
    UnknownEvent,
    base_action,
    failed,
    friend_recall_notice,
    group_message_event,
    group_recall_notice,
    heartbeat_event,
    is_response_frame,
    lifecycle_connect,
    ok,
    parse_action,
    parse_event,
    parse_response,
    private_message_event,
    validate_params,
)
from bridge.models import Segment

T = Segment.text
NOW = 1_700_000_000


def _wire(obj: Any) -> Any:
    """What a peer receives: the dict through real JSON."""
    return json.loads(json.dumps(obj))


# ----- actions ------------------------------------------------------------------------------------


def test_parse_action_minimal() -> None:
    req = parse_action('{"action": "get_login_info"}')
    assert req.action == "get_login_info"
    assert req.params == {}
    assert not req.has_echo


def test_parse_action_bytes_and_mapping() -> None:
    raw = {"action": "send_msg", "params": {"user_id": 1, "message": "x"}, "echo": "7"}
    for form in (json.dumps(raw).encode(), raw):
        req = parse_action(form)
        assert (req.action, req.params, req.echo, req.has_echo) == (
            "send_msg",
            raw["params"],
            "7",
            True,
        )


def test_parse_action_null_params() -> None:
    assert parse_action('{"action": "x", "params": null}').params == {}


def test_parse_action_ignores_extra_keys() -> None:
    assert parse_action('{"action": "x", "self_id": 1}').action == "x"


@pytest.mark.parametrize(
    ("echo_json", "expected"),
    [
        ('"123"', "123"),
        ("42", 42),
        ('{"seq": 1, "k": [1]}', {"seq": 1, "k": [1]}),
        ("null", None),
        ('[1,"a"]', [1, "a"]),
        ("1.5", 1.5),
        ('""', ""),
    ],
)
def test_echo_comes_back_unchanged(echo_json: str, expected: Any) -> None:
    req = parse_action(f'{{"action": "get_status", "echo": {echo_json}}}')
    assert req.has_echo
    for response in (req.ok({"online": True}), req.failed(1404, "nope")):
        wire = _wire(response)
        assert "echo" in wire
        assert wire["echo"] == expected
        assert type(wire["echo"]) is type(expected)


def test_absent_echo_is_not_sent_back() -> None:
    req = parse_action('{"action": "get_status"}')
    assert "echo" not in req.ok(None)
    assert "echo" not in req.failed(1404, "x")
    assert req.echo_or_absent is NO_ECHO


def test_null_echo_is_sent_back_as_null() -> None:
    req = parse_action('{"action": "get_status", "echo": null}')
    assert req.ok()["echo"] is None
    assert "echo" in req.ok()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "request is not valid JSON"),
        (b"\xff\xfe", "request is not valid JSON"),
        ("", "request is not valid JSON"),
        ("[1, 2]", "request must be a JSON object, not an array"),
        ('"send_msg"', "request must be a JSON object, not a string"),
        ("5", "request must be a JSON object, not a number"),
        ("null", "request must be a JSON object, not null"),
        ('{"params": {}}', "action: is required"),
        ('{"action": 5}', "action: must be a non-empty string"),
        ('{"action": null}', "action: must be a non-empty string"),
        ('{"action": ""}', "action: must be a non-empty string"),
        ('{"action": ["send_msg"]}', "action: must be a non-empty string"),
        ('{"action": "x", "params": [1]}', "params: must be an object, not an array"),
        ('{"action": "x", "params": "user_id=1"}', "params: must be an object, not a string"),
        ('{"action": "x", "params": 0}', "params: must be an object, not a number"),
    ],
)
def test_parse_action_errors(raw: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_action(raw)
    assert exc.value.retcode == 1400
    assert message in exc.value.message


def test_protocol_error_keeps_echo_for_its_response() -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_action('{"action": 5, "echo": {"id": 9}}')
    assert exc.value.response() == {
        "status": "failed",
        "retcode": 1400,
        "data": None,
        "message": "action: must be a non-empty string",
        "wording": "action: must be a non-empty string",
        "echo": {"id": 9},
    }
    with pytest.raises(ProtocolError) as exc:
        parse_action("[]")
    assert "echo" not in exc.value.response()


def test_ok_and_failed_shapes() -> None:
    assert ok({"message_id": 5}) == {
        "status": "ok",
        "retcode": 0,
        "data": {"message_id": 5},
        "message": "",
        "wording": "",
    }
    assert ok() == {"status": "ok", "retcode": 0, "data": None, "message": "", "wording": ""}
    assert ok(None, echo="e")["echo"] == "e"
    assert failed(RetCode.NOT_FOUND, "unknown action", echo=3) == {
        "status": "failed",
        "retcode": 1404,
        "data": None,
        "message": "unknown action",
        "wording": "unknown action",
        "echo": 3,
    }
    assert type(failed(RetCode.NOT_FOUND, "x")["retcode"]) is int
    json.dumps(failed(RetCode.BAD_REQUEST, "x", echo=None))


def test_base_action() -> None:
    assert base_action("send_msg_async") == "send_msg"
    assert base_action("send_msg_rate_limited") == "send_msg"
    assert base_action("send_msg") == "send_msg"
    assert base_action("_async") == "_async"


def test_action_request_to_json() -> None:
    assert ActionRequest(action="get_msg", params={"message_id": -1}, echo=5).to_json() == {
        "action": "get_msg",
        "params": {"message_id": -1},
        "echo": 5,
    }
    assert ActionRequest(action="get_status").to_json() == {"action": "get_status", "params": {}}
    assert ActionRequest(action="x", echo=None).to_json()["echo"] is None


def test_parse_response() -> None:
    resp = parse_response(
        '{"status": "ok", "retcode": 0, "data": {"message_id": -2147483000}, "echo": "12"}'
    )
    assert resp.is_ok and resp.has_echo and resp.echo == "12"
    assert resp.data == {"message_id": -2147483000}
    bad = parse_response(
        {"status": "failed", "retcode": 1200, "data": None, "message": "", "wording": "too long"}
    )
    assert not bad.is_ok and not bad.has_echo
    assert bad.reason == "too long"
    assert parse_response({"status": "failed", "retcode": "100"}).reason == "retcode 100"
    assert parse_response({"status": "async", "retcode": 1}).is_ok


@pytest.mark.parametrize(
    "raw", ["[]", '"x"', "nope", '{"retcode": 0}', '{"status": "ok", "retcode": "zero"}']
)
def test_parse_response_errors(raw: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_response(raw)
    assert exc.value.retcode == 1400


def test_is_response_frame() -> None:
    assert is_response_frame({"status": "ok", "retcode": 0, "data": None})
    assert not is_response_frame({"post_type": "meta_event", "status": {"online": True}})
    assert not is_response_frame([])


# ----- events the bridge emits ----------------------------------------------------------------------


def test_private_message_event_exact() -> None:
    segs = [T("hi [there] & you, "), Segment("face", {"id": "14"})]
    assert private_message_event(10000, 20001, 5, segs, "Alice", NOW) == {
        "time": NOW,
        "self_id": 10000,
        "post_type": "message",
        "message_type": "private",
        "sub_type": "friend",
        "message_id": 5,
        "user_id": 20001,
        "message": [
            {"type": "text", "data": {"text": "hi [there] & you, "}},
            {"type": "face", "data": {"id": "14"}},
        ],
        "raw_message": "hi &#91;there&#93; &amp; you, [CQ:face,id=14]",
        "font": 0,
        "sender": {"user_id": 20001, "nickname": "Alice", "sex": "unknown", "age": 0},
    }


def test_private_message_event_sub_type_and_types() -> None:
    ev = private_message_event(1, 2, 3, [T("x")], "n", NOW, sub_type="group")
    assert ev["sub_type"] == "group"
    for key in ("time", "self_id", "message_id", "user_id", "font"):
        assert type(ev[key]) is int
    assert _wire(ev) == ev


def test_group_message_event_exact() -> None:
    ev = group_message_event(
        10000, 20001, 77, [T("hey")], "Bob", NOW, 30001, role="admin", card="Bobby"
    )
    assert ev == {
        "time": NOW,
        "self_id": 10000,
        "post_type": "message",
        "message_type": "group",
        "sub_type": "normal",
        "message_id": 77,
        "user_id": 20001,
        "group_id": 30001,
        "anonymous": None,
        "message": [{"type": "text", "data": {"text": "hey"}}],
        "raw_message": "hey",
        "font": 0,
        "sender": {
            "user_id": 20001,
            "nickname": "Bob",
            "sex": "unknown",
            "age": 0,
            "card": "Bobby",
            "role": "admin",
            "title": "",
        },
    }


def test_group_message_event_defaults() -> None:
    ev = group_message_event(1, 2, 3, [T("x")], "n", NOW, 4)
    assert ev["sender"]["role"] == "member"
    assert ev["sender"]["card"] == ""


def test_builders_take_seconds_even_when_given_milliseconds() -> None:
    assert private_message_event(1, 2, 3, [T("x")], "n", NOW * 1000 + 999)["time"] == NOW


@pytest.mark.parametrize("message_id", [2**31, -(2**31) - 1, 1_700_000_000_000])
def test_builders_refuse_ids_outside_int32(message_id: int) -> None:
    with pytest.raises(ValueError, match="int32"):
        private_message_event(1, 2, message_id, [T("x")], "n", NOW)
    with pytest.raises(ValueError, match="int32"):
        group_message_event(1, 2, message_id, [T("x")], "n", NOW, 3)


def test_qq_ids_above_int32_are_fine() -> None:
    # QQ numbers exceed int32; only message ids are int32.
    ev = private_message_event(3_000_000_000, 3_500_000_000, 2**31 - 1, [T("x")], "n", NOW)
    assert ev["self_id"] == 3_000_000_000
    assert ev["message_id"] == 2**31 - 1


def test_nested_node_content_serializes() -> None:
    node = Segment("node", {"user_id": "1", "nickname": "a", "content": [T("x")]})
    ev = private_message_event(1, 2, 3, [node], "n", NOW)
    assert ev["message"] == [
        {
            "type": "node",
            "data": {
                "user_id": "1",
                "nickname": "a",
                "content": [{"type": "text", "data": {"text": "x"}}],
            },
        }
    ]
    json.dumps(ev)


def test_recall_notices() -> None:
    assert group_recall_notice(1, 30001, 20001, 20002, -5, time_s=NOW) == {
        "time": NOW,
        "self_id": 1,
        "post_type": "notice",
        "notice_type": "group_recall",
        "group_id": 30001,
        "user_id": 20001,
        "operator_id": 20002,
        "message_id": -5,
    }
    assert friend_recall_notice(1, 20001, 9, time_s=NOW) == {
        "time": NOW,
        "self_id": 1,
        "post_type": "notice",
        "notice_type": "friend_recall",
        "user_id": 20001,
        "message_id": 9,
    }


def test_meta_events() -> None:
    assert lifecycle_connect(10000, time_s=NOW) == {
        "time": NOW,
        "self_id": 10000,
        "post_type": "meta_event",
        "meta_event_type": "lifecycle",
        "sub_type": "connect",
    }
    assert heartbeat_event(10000, 30000, time_s=NOW) == {
        "time": NOW,
        "self_id": 10000,
        "post_type": "meta_event",
        "meta_event_type": "heartbeat",
        "status": {"online": True, "good": True},
        "interval": 30000,
    }
    assert heartbeat_event(1, 5000, online=False, good=False, time_s=NOW)["status"] == {
        "online": False,
        "good": False,
    }


def test_default_time_is_now_in_seconds() -> None:
    before = int(time.time())
    t = lifecycle_connect(1)["time"]
    assert before <= t <= int(time.time()) + 1


def test_emitted_events_parse_back() -> None:
    segs = [T("a&b"), Segment("at", {"qq": "20001"})]
    p = parse_event(_wire(private_message_event(1, 2, 3, segs, "n", NOW)))
    assert isinstance(p, PrivateMessageEvent) and p.message == segs and p.sender.nickname == "n"
    g = parse_event(_wire(group_message_event(1, 2, 3, segs, "n", NOW, 4, role="owner")))
    assert isinstance(g, GroupMessageEvent) and g.group_id == 4 and g.sender.role == "owner"
    assert isinstance(parse_event(group_recall_notice(1, 2, 3, 4, 5)), GroupRecallNotice)
    assert isinstance(parse_event(friend_recall_notice(1, 2, 3)), FriendRecallNotice)
    assert isinstance(parse_event(lifecycle_connect(1)), LifecycleEvent)
    assert isinstance(parse_event(heartbeat_event(1, 5000)), HeartbeatEvent)


def test_nonebot_accepts_emitted_events() -> None:
    nb = pytest.importorskip("nonebot.adapters.onebot.v11")
    segs = [T("hi [x], &#91;"), Segment("face", {"id": "1"})]
    cases = [
        (private_message_event(1, 2, 3, segs, "n", NOW), nb.PrivateMessageEvent),
        (group_message_event(1, 2, 3, segs, "n", NOW, 4), nb.GroupMessageEvent),
        (group_recall_notice(1, 2, 3, 4, 5), nb.GroupRecallNoticeEvent),
        (friend_recall_notice(1, 2, 3), nb.FriendRecallNoticeEvent),
        (lifecycle_connect(1), nb.LifecycleMetaEvent),
        (heartbeat_event(1, 5000), nb.HeartbeatMetaEvent),
    ]
    for event, model in cases:
        parsed = nb.Adapter.json_to_event(_wire(event))
        assert type(parsed) is model, event
    msg = nb.Adapter.json_to_event(_wire(cases[0][0]))
    assert [(s.type, s.data) for s in msg.original_message] == [(s.type, s.data) for s in segs]
    assert [(s.type, s.data) for s in nb.Message(msg.raw_message)] == [
        (s.type, s.data) for s in segs
    ]


# ----- events posted to the bridge (application role) -------------------------------------------

NAPCAT_PRIVATE = {
    "self_id": 3_000_000_001,
    "user_id": 2_000_000_002,
    "time": 1_718_000_000,
    "message_id": -1_234_567_890,
    "message_seq": -1_234_567_890,
    "real_id": -1_234_567_890,
    "message_type": "private",
    "sender": {"user_id": 2_000_000_002, "nickname": "小明", "card": ""},
    "raw_message": "你好[CQ:face,id=14]",
    "font": 14,
    "sub_type": "friend",
    "message": [{"type": "text", "data": {"text": "你好"}}, {"type": "face", "data": {"id": "14"}}],
    "message_format": "array",
    "post_type": "message",
}

GOCQ_GROUP = {
    "post_type": "message",
    "message_type": "group",
    "time": 1_718_000_001,
    "self_id": 10000,
    "sub_type": "normal",
    "message_id": 987654,
    "group_id": 30001,
    "user_id": 20001,
    "anonymous": None,
    "message": "[CQ:reply,id=-42][CQ:at,qq=10000] 帮我看看 &#91;这个&#93;, ok?",
    "raw_message": "[CQ:reply,id=-42][CQ:at,qq=10000] 帮我看看 &#91;这个&#93;, ok?",
    "font": 0,
    "sender": {
        "user_id": 20001,
        "nickname": "Bob",
        "card": "bobby",
        "sex": "male",
        "age": 20,
        "area": "",
        "level": "1",
        "role": "admin",
        "title": "",
    },
}


def test_napcat_private_message() -> None:
    ev = parse_event(NAPCAT_PRIVATE)
    assert isinstance(ev, PrivateMessageEvent)
    assert ev.message_id == -1_234_567_890
    assert ev.self_id == 3_000_000_001
    assert ev.message == [T("你好"), Segment("face", {"id": "14"})]
    assert ev.sender.nickname == "小明"
    assert ev.model_extra is not None and ev.model_extra["message_format"] == "array"
    assert ev.real_id == -1_234_567_890  # type: ignore[attr-defined]


def test_go_cqhttp_string_format_group_message() -> None:
    ev = parse_event(GOCQ_GROUP)
    assert isinstance(ev, GroupMessageEvent)
    assert ev.message == [
        Segment("reply", {"id": "-42"}),
        Segment("at", {"qq": "10000"}),
        T(" 帮我看看 [这个], ok?"),
    ]
    assert ev.raw_message == GOCQ_GROUP["raw_message"]
    assert ev.sender.role == "admin" and ev.sender.card == "bobby"
    assert ev.anonymous is None


def test_ids_and_time_as_strings_are_coerced() -> None:
    raw = dict(
        NAPCAT_PRIVATE,
        self_id="3000000001",
        user_id="2000000002",
        message_id="-5",
        time="1718000000",
    )
    ev = parse_event(raw)
    assert isinstance(ev, PrivateMessageEvent)
    assert (ev.self_id, ev.user_id, ev.message_id, ev.time) == (
        3_000_000_001,
        2_000_000_002,
        -5,
        1_718_000_000,
    )


def test_time_in_milliseconds_becomes_seconds() -> None:
    ev = parse_event(dict(NAPCAT_PRIVATE, time=1_718_000_000_123))
    assert ev.time == 1_718_000_000  # type: ignore[union-attr]
    ev = parse_event(dict(NAPCAT_PRIVATE, time=1_718_000_000.75))
    assert ev.time == 1_718_000_000  # type: ignore[union-attr]


def test_minimal_message_event_gets_defaults() -> None:
    ev = parse_event(
        {
            "post_type": "message",
            "message_type": "private",
            "time": 1,
            "self_id": 1,
            "user_id": 2,
            "message_id": 3,
            "message": "a&#91;",
        }
    )
    assert isinstance(ev, PrivateMessageEvent)
    assert ev.sub_type == "friend"
    assert ev.raw_message == "a&#91;"  # derived from the message when absent
    assert ev.font == 0
    assert ev.sender.user_id == 2


def test_sender_nulls_mean_unknown() -> None:
    raw = dict(
        GOCQ_GROUP,
        sender={"user_id": 20001, "nickname": None, "card": None, "age": None, "role": None},
    )
    ev = parse_event(raw)
    assert isinstance(ev, GroupMessageEvent)
    assert (ev.sender.nickname, ev.sender.card, ev.sender.age, ev.sender.role) == (
        "",
        "",
        0,
        "member",
    )


def test_anonymous_group_message() -> None:
    raw = dict(
        GOCQ_GROUP, sub_type="anonymous", anonymous={"id": "123", "name": "匿名", "flag": "f"}
    )
    ev = parse_event(raw)
    assert isinstance(ev, GroupMessageEvent)
    assert ev.anonymous is not None and ev.anonymous.id == 123


def test_single_segment_object_message() -> None:
    ev = parse_event(dict(NAPCAT_PRIVATE, message={"type": "text", "data": {"text": "x"}}))
    assert isinstance(ev, PrivateMessageEvent) and ev.message == [T("x")]


def test_recall_notices_in() -> None:
    g = parse_event(
        {
            "post_type": "notice",
            "notice_type": "group_recall",
            "time": 1,
            "self_id": 1,
            "group_id": "3",
            "user_id": 4,
            "operator_id": 5,
            "message_id": -6,
        }
    )
    assert isinstance(g, GroupRecallNotice) and (g.group_id, g.message_id) == (3, -6)
    f = parse_event(
        {
            "post_type": "notice",
            "notice_type": "friend_recall",
            "time": 1,
            "self_id": 1,
            "user_id": 4,
            "message_id": "-2147483648",
        }
    )
    assert isinstance(f, FriendRecallNotice) and f.message_id == -(2**31)


def test_meta_events_in() -> None:
    life = parse_event(
        {
            "post_type": "meta_event",
            "meta_event_type": "lifecycle",
            "sub_type": "connect",
            "time": 1,
            "self_id": 1,
        }
    )
    assert isinstance(life, LifecycleEvent) and life.sub_type == "connect"
    beat = parse_event(
        {
            "post_type": "meta_event",
            "meta_event_type": "heartbeat",
            "time": 1,
            "self_id": 1,
            "status": {
                "app_initialized": True,
                "app_enabled": True,
                "online": True,
                "good": True,
                "stat": {"packet_received": 1},
            },
            "interval": 5000,
        }
    )
    assert isinstance(beat, HeartbeatEvent)
    assert beat.interval == 5000 and beat.status.online is True and beat.status.good is True


def test_message_sent_is_recognized() -> None:
    raw = dict(NAPCAT_PRIVATE, post_type="message_sent", message_sent_type="self", target_id=2)
    ev = parse_event(raw)
    assert isinstance(ev, MessageSentEvent)
    assert ev.message_type == "private" and ev.message_id == -1_234_567_890


@pytest.mark.parametrize(
    "raw",
    [
        {
            "post_type": "request",
            "request_type": "friend",
            "time": 1,
            "self_id": 1,
            "user_id": 2,
            "flag": "f",
        },
        {"post_type": "notice", "notice_type": "group_upload", "time": 1, "self_id": 1},
        {
            "post_type": "notice",
            "notice_type": "notify",
            "sub_type": "poke",
            "time": 1,
            "self_id": 1,
        },
        {"post_type": "message", "message_type": "guild", "time": 1, "self_id": 1},
        {"post_type": "meta_event", "meta_event_type": "something_new"},
        {"post_type": 5},
        {"time": 1, "self_id": 1},
        {},
    ],
)
def test_unknown_events_fall_back(raw: dict[str, Any]) -> None:
    ev = parse_event(raw)
    assert isinstance(ev, UnknownEvent)
    assert ev.raw == raw
    assert ev.reason


def test_malformed_known_event_falls_back_with_reason() -> None:
    ev = parse_event(dict(NAPCAT_PRIVATE, message_id="abc"))
    assert isinstance(ev, UnknownEvent)
    assert ev.post_type == "message"
    assert "message_id" in ev.reason
    bad_message = parse_event(dict(NAPCAT_PRIVATE, message=[{"data": {}}]))
    assert isinstance(bad_message, UnknownEvent) and "has no type" in bad_message.reason
    bool_id = parse_event(dict(NAPCAT_PRIVATE, user_id=True))
    assert isinstance(bool_id, UnknownEvent)


def test_parse_event_from_json_text() -> None:
    assert isinstance(parse_event(json.dumps(NAPCAT_PRIVATE)), PrivateMessageEvent)
    assert isinstance(parse_event(json.dumps(GOCQ_GROUP).encode()), GroupMessageEvent)


@pytest.mark.parametrize("raw", [[], "[1]", '"x"', "5", "null", None, 5, "not json", b"\xff"])
def test_parse_event_rejects_non_objects(raw: Any) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_event(raw)
    assert exc.value.retcode == 1400


# ----- action parameters ------------------------------------------------------------------------------


def test_send_private_msg() -> None:
    p = validate_params("send_private_msg", {"user_id": "20001", "message": "hi[CQ:face,id=1]"})
    assert isinstance(p, SendPrivateMsgParams)
    assert p.user_id == 20001
    assert p.message == [T("hi"), Segment("face", {"id": "1"})]
    assert p.auto_escape is False


@pytest.mark.parametrize("flag", [True, "true", 1, "1"])
def test_auto_escape_makes_string_plain(flag: Any) -> None:
    p = validate_params(
        "send_private_msg", {"user_id": 1, "message": "[CQ:face,id=1]&amp;", "auto_escape": flag}
    )
    assert isinstance(p, SendPrivateMsgParams)
    assert p.message == [T("[CQ:face,id=1]&amp;")]


def test_auto_escape_false_or_array_message() -> None:
    p = validate_params(
        "send_group_msg", {"group_id": 1, "message": "[CQ:face,id=1]", "auto_escape": "false"}
    )
    assert isinstance(p, SendGroupMsgParams) and p.message == [Segment("face", {"id": "1"})]
    arr = [{"type": "face", "data": {"id": 1}}]
    p = validate_params("send_group_msg", {"group_id": 1, "message": arr, "auto_escape": True})
    assert isinstance(p, SendGroupMsgParams) and p.message == [Segment("face", {"id": "1"})]


def test_send_msg_infers_type() -> None:
    p = validate_params("send_msg", {"group_id": 5, "message": "x"})
    assert isinstance(p, SendMsgParams) and p.message_type == "group"
    p = validate_params("send_msg", {"user_id": 5, "message": "x"})
    assert isinstance(p, SendMsgParams) and p.message_type == "private"
    # A temporary group session: private with both ids, as NoneBot sends it.
    p = validate_params(
        "send_msg", {"message_type": "private", "user_id": 5, "group_id": 6, "message": "x"}
    )
    assert isinstance(p, SendMsgParams) and (p.message_type, p.user_id, p.group_id) == (
        "private",
        5,
        6,
    )


def test_send_msg_async_suffix_is_validated() -> None:
    assert isinstance(
        validate_params("send_msg_async", {"user_id": 1, "message": "x"}), SendMsgParams
    )


def test_delete_and_get_msg_accept_negative_ids() -> None:
    p = validate_params("delete_msg", {"message_id": "-2147483648"})
    assert isinstance(p, DeleteMsgParams) and p.message_id == -(2**31)
    assert validate_params("get_msg", {"message_id": -7}).message_id == -7  # type: ignore[union-attr]


def test_get_forward_msg_ids() -> None:
    for params, expected in (
        ({"id": "abc"}, "abc"),
        ({"message_id": 123}, "123"),
        ({"id": 5, "message_id": 6}, "5"),
    ):
        p = validate_params("get_forward_msg", params)
        assert isinstance(p, GetForwardMsgParams) and p.forward_id == expected


def test_forward_actions() -> None:
    nodes = [
        {"type": "node", "data": {"id": "-3"}},
        {"type": "node", "data": {"uin": 2, "name": "B", "content": "b[CQ:face,id=1]"}},
    ]
    p = validate_params("send_private_forward_msg", {"user_id": "1", "messages": nodes})
    assert isinstance(p, SendPrivateForwardMsgParams)
    assert p.messages == [
        ForwardNode(ref_id="-3"),
        ForwardNode(user_id="2", nickname="B", content=[T("b"), Segment("face", {"id": "1"})]),
    ]
    g = validate_params("send_group_forward_msg", {"group_id": 9, "messages": nodes})
    assert g.group_id == 9  # type: ignore[union-attr]
    f = validate_params("send_forward_msg", {"group_id": 9, "messages": nodes})
    assert isinstance(f, SendForwardMsgParams) and f.message_type == "group"


def test_info_actions() -> None:
    assert validate_params("get_stranger_info", {"user_id": "3000000000"}).user_id == 3_000_000_000  # type: ignore[union-attr]
    assert validate_params("get_group_info", {"group_id": 1, "no_cache": True}).no_cache is True  # type: ignore[union-attr]
    m = validate_params("get_group_member_info", {"group_id": "1", "user_id": "2"})
    assert isinstance(m, GetGroupMemberInfoParams) and (m.group_id, m.user_id) == (1, 2)
    assert validate_params("get_group_member_list", {"group_id": 1}).group_id == 1  # type: ignore[union-attr]


def test_handle_quick_operation() -> None:
    ctx = private_message_event(1, 2, 3, [T("x")], "n", NOW)
    p = validate_params(".handle_quick_operation", {"context": ctx, "operation": {"reply": "hi"}})
    assert isinstance(p, HandleQuickOperationParams)
    assert p.operation == {"reply": "hi"}
    assert isinstance(p.event, PrivateMessageEvent)


def test_extra_params_are_ignored() -> None:
    p = validate_params("delete_msg", {"message_id": 1, "self_id": 5, "whatever": [1]})
    assert isinstance(p, DeleteMsgParams)


@pytest.mark.parametrize(
    "action", ["get_login_info", "get_status", "unknown_thing", "get_guild_service_profile"]
)
def test_actions_without_model(action: str) -> None:
    assert validate_params(action, {"anything": 1}) is None


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("send_private_msg", {"message": "x"}, "user_id: is required"),
        ("send_private_msg", {"user_id": 1}, "message: is required"),
        (
            "send_private_msg",
            {"user_id": "abc", "message": "x"},
            "user_id: must be an integer or a numeric string",
        ),
        (
            "send_private_msg",
            {"user_id": True, "message": "x"},
            "user_id: must be an integer, not a boolean",
        ),
        (
            "send_private_msg",
            {"user_id": 1.5, "message": "x"},
            "user_id: must be an integer or a numeric string",
        ),
        (
            "send_private_msg",
            {"user_id": [1], "message": "x"},
            "user_id: must be an integer or a numeric string",
        ),
        (
            "send_private_msg",
            {"user_id": None, "message": "x"},
            "user_id: must be an integer or a numeric string",
        ),
        (
            "send_private_msg",
            {"user_id": 1, "message": 5},
            "message: message must be a CQ string, an array of segments or a segment object, not a number",
        ),
        ("send_private_msg", {"user_id": 1, "message": ""}, "message: is empty"),
        ("send_private_msg", {"user_id": 1, "message": []}, "message: is empty"),
        (
            "send_private_msg",
            {"user_id": 1, "message": [{"data": {"text": "x"}}]},
            "message: message[0] has no type",
        ),
        (
            "send_private_msg",
            {"user_id": 1, "message": [{"type": "text", "data": "x"}]},
            "message: message[0].data must be an object, not a string",
        ),
        (
            "send_private_msg",
            {"user_id": 1, "message": "x", "auto_escape": "maybe"},
            "auto_escape:",
        ),
        (
            "send_group_msg",
            {"group_id": "g1", "message": "x"},
            "group_id: must be an integer or a numeric string",
        ),
        ("send_msg", {"message": "x"}, "user_id: is required for a private message"),
        (
            "send_msg",
            {"message_type": "group", "user_id": 1, "message": "x"},
            "group_id: is required for a group message",
        ),
        ("send_msg", {"message_type": "discuss", "user_id": 1, "message": "x"}, "message_type:"),
        ("delete_msg", {}, "message_id: is required"),
        ("delete_msg", {"message_id": "1.5"}, "message_id: must be an integer or a numeric string"),
        ("get_msg", {"message_id": {}}, "message_id: must be an integer or a numeric string"),
        ("get_forward_msg", {}, "id: is required (or message_id)"),
        ("get_forward_msg", {"id": ""}, "id: must be a forward id"),
        ("get_forward_msg", {"id": True}, "id: must be a forward id"),
        ("send_private_forward_msg", {"user_id": 1, "messages": []}, "messages: is empty"),
        ("send_private_forward_msg", {"user_id": 1}, "messages: is required"),
        (
            "send_group_forward_msg",
            {"group_id": 1, "messages": [{"type": "text", "data": {"text": "x"}}]},
            "messages: messages[0] must be a node segment, not 'text'",
        ),
        (
            "send_group_forward_msg",
            {"group_id": 1, "messages": [{"type": "node", "data": {"user_id": 1}}]},
            "messages: messages[0] needs data.id",
        ),
        (
            "send_group_forward_msg",
            {"group_id": 1, "messages": 5},
            "messages: messages must be an array of node segments",
        ),
        (
            "send_forward_msg",
            {"messages": [{"type": "node", "data": {"id": "1"}}]},
            "user_id: is required for a private message",
        ),
        ("get_stranger_info", {"user_id": "x"}, "user_id: must be an integer or a numeric string"),
        ("get_group_info", {}, "group_id: is required"),
        ("get_group_member_info", {"group_id": 1}, "user_id: is required"),
        (
            "get_group_member_list",
            {"group_id": False},
            "group_id: must be an integer, not a boolean",
        ),
        (".handle_quick_operation", {"context": [], "operation": {}}, "context:"),
        (".handle_quick_operation", {"context": {}}, "operation: is required"),
    ],
)
def test_invalid_params(action: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        validate_params(action, params)
    assert exc.value.retcode == 1400
    assert message in exc.value.message, exc.value.message


def test_several_problems_are_all_named() -> None:
    with pytest.raises(ProtocolError) as exc:
        validate_params("get_group_member_info", {})
    assert exc.value.message == "group_id: is required; user_id: is required"


@pytest.mark.parametrize("params", [[1], "user_id=1", 5])
def test_params_must_be_object(params: Any) -> None:
    with pytest.raises(ProtocolError) as exc:
        validate_params("send_msg", params)
    assert exc.value.retcode == 1400 and exc.value.message.startswith("params: must be an object")


def test_null_params_mean_empty() -> None:
    with pytest.raises(ProtocolError, match="message_id: is required"):
        validate_params("delete_msg", None)
