"""CQ code parsing and formatting, including round trips over a generated corpus of nasty text."""

from __future__ import annotations

import itertools
import random

import pytest

from adapters.onebot.cq import escape, parse_cq, to_cq, unescape
from bridge.models import Segment

T = Segment.text

# Tokens chosen to break naive escapers: entities written literally, half entities, CQ openers,
# surrogate-pair emoji, CJK, control characters and CRLF.
NASTY_TOKENS = [
    "&",
    "[",
    "]",
    ",",
    "=",
    ";",
    "#",
    "&amp;",
    "&#91;",
    "&#93;",
    "&#44;",
    "&amp;amp;",
    "&#",
    "&#9",
    "[CQ:",
    "[CQ:fake",
    "[CQ:face,id=1]",
    "[CQ:at,qq=all]",
    "[CQ:text,text=x]",
    "CQ:",
    "😀",
    "👨‍👩‍👧",
    "表情",
    "中文，标点【】",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    " ",
    "a",
    "Z9",
]


def _corpus(seed: int, n: int, max_tokens: int = 10) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice(NASTY_TOKENS) for _ in range(rng.randint(0, max_tokens)))
        for _ in range(n)
    ]


def _normalized(segments: list[Segment]) -> list[Segment]:
    """What parsing must give back: empty texts dropped, adjacent texts merged."""
    out: list[Segment] = []
    for seg in segments:
        if seg.type == "text":
            text = seg.data["text"]
            if not text:
                continue
            if out and out[-1].type == "text":
                out[-1] = T(out[-1].data["text"] + text)
                continue
        out.append(seg)
    return out


def _random_segments(rng: random.Random) -> list[Segment]:
    segs = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.5:
            segs.append(T("".join(rng.choice(NASTY_TOKENS) for _ in range(rng.randint(0, 5)))))
        else:
            seg_type = rng.choice(["face", "at", "image", "reply", "json", "x.y-z_1"])
            data = {
                rng.choice(["id", "qq", "file", "url", "data", "sub_type"]): "".join(
                    rng.choice(NASTY_TOKENS) for _ in range(rng.randint(0, 5))
                )
                for _ in range(rng.randint(0, 3))
            }
            segs.append(Segment(seg_type, data))
    return segs


# ----- escaping -----------------------------------------------------------------------------------


def test_escape_text_and_param() -> None:
    assert escape("a&b[c]d,e", escape_comma=False) == "a&amp;b&#91;c&#93;d,e"
    assert escape("a&b[c]d,e") == "a&amp;b&#91;c&#93;d&#44;e"


def test_escape_literal_entities_are_escaped_again() -> None:
    assert escape("&#91;") == "&amp;#91;"
    assert escape("&amp;") == "&amp;amp;"


def test_unescape_amp_last() -> None:
    assert unescape("&#91;&#93;&#44;&amp;") == "[],&"
    # Literal `&#91;` travels as `&amp;#91;` and must not collapse to `[`.
    assert unescape("&amp;#91;") == "&#91;"
    assert unescape("&amp;amp;") == "&amp;"
    assert unescape("&#9") == "&#9"


def test_unescape_inverts_escape() -> None:
    for text in _corpus(1, 1000):
        assert unescape(escape(text)) == text, text
        assert unescape(escape(text, escape_comma=False)) == text, text


# ----- parsing ------------------------------------------------------------------------------------


def test_parse_plain_and_codes() -> None:
    assert parse_cq("hello[CQ:face,id=123]world") == [
        T("hello"),
        Segment("face", {"id": "123"}),
        T("world"),
    ]


def test_parse_empty_string() -> None:
    assert parse_cq("") == []


def test_parse_code_without_params() -> None:
    assert parse_cq("[CQ:shake]") == [Segment("shake", {})]


def test_parse_multiple_params_and_unescape_values() -> None:
    s = "[CQ:image,file=a&#44;b&#91;c&#93;&amp;d,url=https://x/y?a=1&amp;b=2]"
    assert parse_cq(s) == [
        Segment("image", {"file": "a,b[c]&d", "url": "https://x/y?a=1&b=2"}),
    ]


def test_parse_value_may_contain_equals_and_be_empty() -> None:
    assert parse_cq('[CQ:json,data={"a"=1},x=]') == [
        Segment("json", {"data": '{"a"=1}', "x": ""}),
    ]


def test_parse_duplicate_key_last_wins() -> None:
    assert parse_cq("[CQ:at,qq=1,qq=2]") == [Segment("at", {"qq": "2"})]


def test_parse_text_is_unescaped() -> None:
    assert parse_cq("&#91;x&#93; &amp;#91; a&#44;b") == [T("[x] &#91; a,b")]


def test_parse_adjacent_codes() -> None:
    assert parse_cq("[CQ:face,id=1][CQ:face,id=2]") == [
        Segment("face", {"id": "1"}),
        Segment("face", {"id": "2"}),
    ]


def test_parse_type_with_dot_dash_underscore() -> None:
    assert parse_cq("[CQ:my.custom-seg_1,k=v]") == [Segment("my.custom-seg_1", {"k": "v"})]


@pytest.mark.parametrize(
    "raw",
    [
        "[CQ:",
        "[CQ:face",
        "[CQ:face,",
        "[CQ:face,]",
        "[CQ:face,id]",
        "[CQ:,id=1]",
        "[CQ:]",
        "[CQ:face id=1]",
        "[CQ:表情,id=1]",
        "[CQ:face,id=1",
        "[cq:face,id=1]",
        "[CQ:face,i d=1]",
    ],
)
def test_malformed_code_is_kept_as_text(raw: str) -> None:
    assert parse_cq(raw) == [T(raw)]
    assert parse_cq(f"a{raw}b") == [T(f"a{raw}b")]


def test_unterminated_code_does_not_swallow_the_next() -> None:
    assert parse_cq("x[CQ:face,id=1 [CQ:at,qq=2]y") == [
        T("x[CQ:face,id=1 "),
        Segment("at", {"qq": "2"}),
        T("y"),
    ]


def test_malformed_text_is_unescaped_and_merged() -> None:
    assert parse_cq("&amp;[CQ:fake&#93;[CQ:face,id=1]") == [
        T("&[CQ:fake]"),
        Segment("face", {"id": "1"}),
    ]


def test_text_code_folds_into_surrounding_text() -> None:
    assert parse_cq("a[CQ:text,text=b&#44;c&#91;]d") == [T("ab,c[d")]
    assert parse_cq("[CQ:text,text=]") == []
    assert parse_cq("[CQ:text]x") == [T("x")]


def test_entity_is_not_assembled_across_a_code() -> None:
    # `&#9` + folded text `1;` must stay the literal characters, not become `[`.
    assert parse_cq("&#9[CQ:text,text=1;]") == [T("&#91;")]


# ----- formatting ---------------------------------------------------------------------------------


def test_to_cq_escapes_text_without_comma() -> None:
    assert to_cq([T("a,b&[c]")]) == "a,b&amp;&#91;c&#93;"


def test_to_cq_escapes_params_with_comma() -> None:
    assert (
        to_cq([Segment("image", {"file": "a,b[c]&d"})])
        == "[CQ:image,file=a&#44;b&#91;c&#93;&amp;d]"
    )


def test_to_cq_value_conversion() -> None:
    seg = Segment("x", {"n": 5, "f": 1.5, "t": True, "no": False, "none": None})
    assert to_cq([seg]) == "[CQ:x,n=5,f=1.5,t=true,no=false]"


def test_to_cq_object_value_is_json() -> None:
    assert to_cq([Segment("json", {"data": {"a": [1, "x,y"]}})]) == (
        '[CQ:json,data={"a":&#91;1&#44;"x&#44;y"&#93;}]'
    )


def test_to_cq_accepts_dicts() -> None:
    assert to_cq(
        [{"type": "text", "data": {"text": "hi"}}, {"type": "face", "data": {"id": 1}}]
    ) == ("hi[CQ:face,id=1]")
    assert to_cq([{"type": "shake"}]) == "[CQ:shake]"


def test_to_cq_nested_node_content_round_trips() -> None:
    inner = [T("hi, [you] &#91;"), Segment("face", {"id": "1"})]
    node = Segment("node", {"user_id": "1", "nickname": "a,b", "content": inner})
    s = to_cq([node])
    [parsed] = parse_cq(s)
    assert parsed.type == "node"
    assert parsed.data["nickname"] == "a,b"
    assert parse_cq(parsed.data["content"]) == inner


@pytest.mark.parametrize("seg_type", ["", "a b", "表情", "a,b", "a]"])
def test_to_cq_rejects_inexpressible_type(seg_type: str) -> None:
    with pytest.raises(ValueError, match="type"):
        to_cq([Segment(seg_type, {})])


@pytest.mark.parametrize("key", ["", "a=b", "a,b", "k]"])
def test_to_cq_rejects_inexpressible_key(key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        to_cq([Segment("x", {key: "v"})])


def test_to_cq_empty() -> None:
    assert to_cq([]) == ""


# ----- round trips over the corpus ----------------------------------------------------------------


def test_text_round_trip() -> None:
    for text in _corpus(2, 3000):
        if not text:
            continue
        cq = to_cq([T(text)])
        assert "[" not in cq and "]" not in cq, cq
        assert parse_cq(cq) == [T(text)], text


def test_segment_list_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(1500):
        segs = _random_segments(rng)
        cq = to_cq(segs)
        assert parse_cq(cq) == _normalized(segs), cq


def test_parsing_arbitrary_input_never_raises_and_is_stable() -> None:
    for raw in _corpus(4, 3000, max_tokens=14):
        parsed = parse_cq(raw)
        assert all(s.type != "text" or s.data["text"] for s in parsed), raw
        assert not any(a.type == b.type == "text" for a, b in itertools.pairwise(parsed)), raw
        assert parse_cq(to_cq(parsed)) == parsed, raw


def test_plain_text_without_codes_survives_parse() -> None:
    # Text that never contains `[CQ:` or entities parses back to itself.
    for raw in ["hello", "a,b=c", "中文😀\n", "[not a code]", "]["]:
        assert parse_cq(raw) == [T(raw)]


def test_agrees_with_nonebot_parser() -> None:
    nb = pytest.importorskip("nonebot.adapters.onebot.v11")
    rng = random.Random(5)
    for _ in range(500):
        segs = _random_segments(rng)
        cq = to_cq(segs)
        theirs = [Segment(s.type, dict(s.data)) for s in nb.Message(cq)]
        assert theirs == _normalized(segs), cq
