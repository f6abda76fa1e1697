"""Normalizing OneBot `message` values, their JSON form, and forward nodes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.onebot.cq import to_cq
from adapters.onebot.message import (
    ForwardNode,
    MessageError,
    normalize_message,
    normalize_segment,
    parse_forward_node,
    parse_forward_nodes,
    plain_text,
    segments_to_json,
)
from bridge.models import Segment

T = Segment.text


# ----- normalize_message ----------------------------------------------------------------------------


def test_cq_string() -> None:
    assert normalize_message("hi[CQ:at,qq=10001]&#91;") == [
        T("hi"),
        Segment("at", {"qq": "10001"}),
        T("["),
    ]


def test_auto_escape_string_is_plain_text() -> None:
    assert normalize_message("[CQ:face,id=1]&amp;", auto_escape=True) == [T("[CQ:face,id=1]&amp;")]
    assert normalize_message("", auto_escape=True) == []


def test_empty_string_is_empty_message() -> None:
    assert normalize_message("") == []


def test_array() -> None:
    raw = [{"type": "text", "data": {"text": "a"}}, {"type": "face", "data": {"id": "1"}}]
    assert normalize_message(raw) == [T("a"), Segment("face", {"id": "1"})]


def test_single_segment_object() -> None:
    assert normalize_message({"type": "image", "data": {"file": "a.png"}}) == [
        Segment("image", {"file": "a.png"})
    ]


def test_segment_instances_and_tuples() -> None:
    assert normalize_message((T("a"), Segment("face", {"id": 2}))) == [
        T("a"),
        Segment("face", {"id": "2"}),
    ]
    assert normalize_message(T("x")) == [T("x")]


def test_scalar_values_become_strings() -> None:
    seg = {"type": "x", "data": {"i": 10001, "neg": -5, "f": 0.5, "t": True, "fa": False, "s": "s"}}
    assert normalize_message([seg]) == [
        Segment("x", {"i": "10001", "neg": "-5", "f": "0.5", "t": "true", "fa": "false", "s": "s"})
    ]


def test_null_values_are_dropped() -> None:
    assert normalize_message([{"type": "image", "data": {"file": "a", "url": None}}]) == [
        Segment("image", {"file": "a"})
    ]


def test_missing_or_null_data_means_no_params() -> None:
    assert normalize_message([{"type": "shake"}, {"type": "poke", "data": None}]) == [
        Segment("shake", {}),
        Segment("poke", {}),
    ]


def test_nested_objects_are_kept() -> None:
    payload = {"app": "com.tencent.x", "meta": {"k": [1, 2]}}
    assert normalize_message([{"type": "json", "data": {"data": payload}}]) == [
        Segment("json", {"data": payload})
    ]


def test_extra_segment_keys_ignored() -> None:
    assert normalize_message([{"type": "text", "data": {"text": "a"}, "extra": 1}]) == [T("a")]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            123,
            "message must be a CQ string, an array of segments or a segment object, not a number",
        ),
        (None, "not null"),
        (True, "not a boolean"),
        (1.5, "not a number"),
        (["text"], "message[0] must be a segment object, not a string"),
        (
            [{"type": "text", "data": {"text": "a"}}, 5],
            "message[1] must be a segment object, not a number",
        ),
        ([{"data": {"text": "a"}}], "message[0] has no type"),
        ({"data": {}}, "segment has no type"),
        ([{"type": 5, "data": {}}], "message[0].type must be a non-empty string"),
        ([{"type": "", "data": {}}], "message[0].type must be a non-empty string"),
        ([{"type": "text", "data": "hello"}], "message[0].data must be an object, not a string"),
        ([{"type": "text", "data": ["a"]}], "message[0].data must be an object, not an array"),
    ],
)
def test_invalid_messages(message: Any, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        normalize_message(message)
    assert reason in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_normalize_segment_where() -> None:
    with pytest.raises(MessageError, match=r"^messages\[3\] has no type$"):
        normalize_segment({}, where="messages[3]")


# ----- node content ---------------------------------------------------------------------------------


def test_node_content_forms_are_parsed() -> None:
    expected = [T("hi"), Segment("face", {"id": "1"})]
    for content in (
        "hi[CQ:face,id=1]",
        [{"type": "text", "data": {"text": "hi"}}, {"type": "face", "data": {"id": 1}}],
    ):
        [node] = normalize_message([{"type": "node", "data": {"user_id": 1, "content": content}}])
        assert node.data == {"user_id": "1", "content": expected}
    [node] = normalize_message(
        {"type": "node", "data": {"content": {"type": "text", "data": {"text": "x"}}}}
    )
    assert node.data["content"] == [T("x")]


def test_node_content_errors_surface() -> None:
    with pytest.raises(MessageError, match="data must be an object"):
        normalize_message([{"type": "node", "data": {"content": [{"type": "text", "data": 1}]}}])


def test_node_inside_cq_string() -> None:
    inner = [T("a, [b] &#44;"), Segment("image", {"file": "x,y.png"})]
    cq = to_cq([Segment("node", {"uin": "10001", "name": "N,1", "content": inner})])
    [node] = normalize_message(cq)
    assert node.data == {"uin": "10001", "name": "N,1", "content": inner}


def test_nested_forward_nodes() -> None:
    inner_node = {"type": "node", "data": {"user_id": "2", "content": "deep"}}
    [node] = normalize_message(
        [{"type": "node", "data": {"user_id": "1", "content": [inner_node]}}]
    )
    assert node.data["content"] == [Segment("node", {"user_id": "2", "content": [T("deep")]})]


# ----- JSON form and plain text -------------------------------------------------------------------


def test_segments_to_json_nested() -> None:
    segs = normalize_message(
        [
            {"type": "text", "data": {"text": "a"}},
            {"type": "node", "data": {"user_id": 1, "content": "x[CQ:face,id=2]"}},
        ]
    )
    out = segments_to_json(segs)
    assert out == [
        {"type": "text", "data": {"text": "a"}},
        {
            "type": "node",
            "data": {
                "user_id": "1",
                "content": [
                    {"type": "text", "data": {"text": "x"}},
                    {"type": "face", "data": {"id": "2"}},
                ],
            },
        },
    ]
    json.dumps(out)  # must be plain JSON
    assert normalize_message(out) == segs


def test_segments_to_json_copies() -> None:
    seg = T("a")
    out = segments_to_json([seg])
    out[0]["data"]["text"] = "changed"
    assert seg.data["text"] == "a"


def test_plain_text() -> None:
    assert plain_text(normalize_message("a[CQ:face,id=1]b&#91;[CQ:at,qq=1]")) == "ab["
    assert plain_text([]) == ""


# ----- forward nodes --------------------------------------------------------------------------------


def test_reference_node() -> None:
    assert parse_forward_node({"type": "node", "data": {"id": 123}}) == ForwardNode(ref_id="123")
    assert parse_forward_node({"type": "node", "data": {"id": "-2147483648"}}) == ForwardNode(
        ref_id="-2147483648"
    )


def test_reference_node_wins_over_content() -> None:
    node = parse_forward_node({"type": "node", "data": {"id": "7", "content": "x"}})
    assert node.ref_id == "7"
    assert node.content is None


@pytest.mark.parametrize(
    "data",
    [
        {"user_id": 10001, "nickname": "Alice", "content": "hi[CQ:face,id=1]"},
        {
            "uin": "10001",
            "name": "Alice",
            "content": [
                {"type": "text", "data": {"text": "hi"}},
                {"type": "face", "data": {"id": "1"}},
            ],
        },
        {
            "user_id": "10001",
            "name": "Alice",
            "content": [
                {"type": "text", "data": {"text": "hi"}},
                {"type": "face", "data": {"id": 1}},
            ],
        },
    ],
)
def test_custom_node_spellings(data: dict[str, Any]) -> None:
    assert parse_forward_node({"type": "node", "data": data}) == ForwardNode(
        user_id="10001",
        nickname="Alice",
        content=[T("hi"), Segment("face", {"id": "1"})],
    )


def test_custom_node_single_segment_content() -> None:
    node = parse_forward_node(
        {"type": "node", "data": {"uin": 1, "content": {"type": "text", "data": {"text": "x"}}}}
    )
    assert node == ForwardNode(user_id="1", nickname="", content=[T("x")])


def test_custom_node_prefers_user_id_over_uin() -> None:
    node = parse_forward_node(
        {
            "type": "node",
            "data": {"user_id": "1", "uin": "2", "nickname": "a", "name": "b", "content": ""},
        }
    )
    assert (node.user_id, node.nickname, node.content) == ("1", "a", [])


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        ({"type": "text", "data": {"text": "x"}}, "node must be a node segment, not 'text'"),
        (
            {"type": "node", "data": {"user_id": "1", "nickname": "a"}},
            "needs data.id (a stored message) or data.content",
        ),
        ({"type": "node", "data": {"id": ""}}, "node.data.id must be a message id"),
        ({"type": "node", "data": {"id": {"a": 1}}}, "node.data.id must be a message id"),
        (
            {"type": "node", "data": {"content": 5}},
            "node.data.content: message must be a CQ string",
        ),
        ({"type": "node", "data": []}, "node.data must be an object"),
        ("node", "node must be a segment object, not a string"),
    ],
)
def test_bad_nodes(segment: Any, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        parse_forward_node(segment)
    assert reason in str(exc.value)


def test_parse_forward_nodes_forms() -> None:
    nodes = [
        {"type": "node", "data": {"id": "1"}},
        {"type": "node", "data": {"user_id": "2", "nickname": "B", "content": "b"}},
    ]
    expected = [ForwardNode(ref_id="1"), ForwardNode(user_id="2", nickname="B", content=[T("b")])]
    assert parse_forward_nodes(nodes) == expected
    assert parse_forward_nodes(tuple(nodes)) == expected
    assert parse_forward_nodes(nodes[0]) == expected[:1]
    assert parse_forward_nodes("[CQ:node,id=1][CQ:node,user_id=2,nickname=B,content=b]") == expected
    assert parse_forward_nodes([]) == []


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (5, "messages must be an array of node segments, not a number"),
        (None, "messages must be an array of node segments, not null"),
        (
            [{"type": "node", "data": {"id": "1"}}, {"type": "text", "data": {"text": "x"}}],
            "messages[1] must be a node segment",
        ),
        ("plain text", "messages[0] must be a node segment, not 'text'"),
        ([{"data": {}}], "messages[0] has no type"),
    ],
)
def test_parse_forward_nodes_errors(messages: Any, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        parse_forward_nodes(messages)
    assert reason in str(exc.value)


def test_forward_node_to_json_both_spellings_and_round_trip() -> None:
    node = ForwardNode(
        user_id="10001", nickname="Alice", content=[T("hi"), Segment("face", {"id": "1"})]
    )
    out = node.to_json()
    assert out == {
        "type": "node",
        "data": {
            "user_id": "10001",
            "nickname": "Alice",
            "uin": "10001",
            "name": "Alice",
            "content": [
                {"type": "text", "data": {"text": "hi"}},
                {"type": "face", "data": {"id": "1"}},
            ],
        },
    }
    assert parse_forward_node(out) == node
    ref = ForwardNode(ref_id="-5")
    assert ref.to_json() == {"type": "node", "data": {"id": "-5"}}
    assert parse_forward_node(ref.to_json()) == ref
    assert parse_forward_node(ref.to_segment()) == ref
