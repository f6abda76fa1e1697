"""Strict JSON in and out of the hub (adapters.miochat.wire), with plain data."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from adapters.miochat import wire

# ----- loads: what we refuse -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" * 100_000,
        '{"a":' * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "[" * 50_000 + "1" + "]",
        '{"a":' * 40 + "1" + "}" * 40,
        "[" * 33 + "]" * 33,
        "[{" * 17 + "}]" * 17,
        '{"d":' + "[" * 40 + '"x"' + "]" * 40 + "}",
    ],
)
def test_deep_nesting_is_refused_without_recursion_error(text: str) -> None:
    with pytest.raises(wire.WireError) as ei:
        wire.loads(text)
    if not text.startswith("{{"):  # that one is simply not JSON at its second character
        assert "nested deeper than 32" in str(ei.value)


def test_depth_limit_is_exact() -> None:
    ok = "[" * 32 + "]" * 32
    assert wire.loads(ok) is not None
    assert not wire.nesting_exceeds(ok)
    assert wire.nesting_exceeds("[" * 33 + "]" * 33)
    assert wire.nesting_exceeds("[" * 3 + "]" * 3, limit=2)
    assert not wire.nesting_exceeds("[" * 2 + "]" * 2, limit=2)


def test_many_shallow_containers_are_fine() -> None:
    text = json.dumps([{"a": [1]} for _ in range(1000)])
    assert not wire.nesting_exceeds(text)
    assert len(wire.loads(text)) == 1000


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"s": "[" * 1000}),
        json.dumps({"s": "{" * 500 + "}" * 500, "t": "[[[[" * 20}),
        json.dumps({"s": '\\"[' * 200}),
        json.dumps(["\\", "[" * 100, '"', "{" * 100]),
    ],
)
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    assert not wire.nesting_exceeds(text)
    assert wire.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "9223372036854775808",
        "-9223372036854775809",
        "1" * 401,
        "1" * 5000,  # past Python's int digit limit: must still be our error
        '{"a": [1, 2, 99999999999999999999999]}',
    ],
)
def test_integers_beyond_int64_are_refused(text: str) -> None:
    with pytest.raises(wire.WireError, match="64-bit"):
        wire.loads(text)


def test_int64_bounds_are_accepted() -> None:
    assert wire.loads(f"[{wire.INT64_MAX}, {wire.INT64_MIN}]") == [wire.INT64_MAX, wire.INT64_MIN]


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '{"x": [1E999]}']
)
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(wire.WireError):
        wire.loads(text)


def test_tiny_floats_underflow_to_zero_and_are_fine() -> None:
    assert wire.loads("1e-400") == 0.0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('"\\ud800"', "the frame"),
        ('{"a": "x\\udc00y"}', "a"),
        ('{"a": ["ok", "\\ud83d"]}', "a[1]"),
        ('{"a": {"b": "\\uDBFF"}}', "a.b"),
        ('{"\\ud800": 1}', "<root>"),
        ('{"a": "\\ude00\\ud83d"}', "a"),  # reversed pair: two lone surrogates
    ],
)
def test_escaped_lone_surrogates_are_refused(text: str, where: str) -> None:
    with pytest.raises(wire.WireError, match="surrogate") as ei:
        wire.loads(text)
    assert str(ei.value).startswith(where)


def test_raw_surrogates_in_a_str_are_refused() -> None:
    with pytest.raises(wire.WireError, match="surrogate"):
        wire.loads('{"a": "\ud800"}')


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert wire.loads('"\\ud83d\\ude00"') == "😀"
    assert wire.loads('"\\\\ud800"') == "\\ud800"  # a backslash, then plain text
    assert wire.loads('"😀 桃"') == "😀 桃"


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}', b'"\xc3"', b"\x80"],
)
def test_bytes_must_be_strict_utf8(raw: bytes) -> None:
    with pytest.raises(wire.WireError, match="UTF-8"):
        wire.loads(raw)


def test_bytes_with_bom_and_bytearray() -> None:
    assert wire.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert wire.loads(bytearray(b"[1]")) == [1]


@pytest.mark.parametrize("text", ["", "nope", "{", "[1,]", '{"a" 1}', "[}"])
def test_invalid_json_is_a_wire_error(text: str) -> None:
    with pytest.raises(wire.WireError):
        wire.loads(text)


# ----- json_hazard ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, "ok", None, True, 2.5]}, None),
        ({"a": [1, "\ud800"]}, ("a[1]", "contains a lone UTF-16 surrogate")),
        ({"a": {"b": float("nan")}}, ("a.b", "is not a finite number")),
        ({"a": 2**63}, ("a", "is an integer outside the 64-bit range")),
        ([-(2**63) - 1], ("[0]", "is an integer outside the 64-bit range")),
        ("\udfff", ("", "contains a lone UTF-16 surrogate")),
        ((1, float("inf")), ("[1]", "is not a finite number")),
    ],
)
def test_json_hazard(value: Any, expected: tuple[str, str] | None) -> None:
    assert wire.json_hazard(value) == expected


def test_json_hazard_without_numbers_and_with_a_prefix() -> None:
    assert wire.json_hazard({"a": float("inf"), "b": 10**30}, numbers=False) is None
    assert wire.json_hazard({"a": "\ud800"}, "data") == (
        "data.a",
        "contains a lone UTF-16 surrogate",
    )


# ----- dumps: always valid UTF-8 JSON ------------------------------------------------------------


def _valid(text: str) -> Any:
    text.encode("utf-8")  # strict: raises on any surrogate
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written"))


def test_dumps_is_compact_and_keeps_non_ascii() -> None:
    text = wire.dumps({"name": "桃 Momo 😀", "n": [1, 2.5]})
    assert text == '{"name":"桃 Momo 😀","n":[1,2.5]}'
    assert _valid(text) == {"name": "桃 Momo 😀", "n": [1, 2.5]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"t": "a\ud800b"}, {"t": "a\ufffdb"}),
        ({"\udc00": 1}, {"\ufffd": 1}),
        (["\ud83d\ude00"], ["😀"]),  # a pair held as two code points is one character
        (["\ude00\ud83d"], ["\ufffd\ufffd"]),
        ({"deep": [[{"x": "\ud800"}]]}, {"deep": [[{"x": "\ufffd"}]]}),
    ],
)
def test_dumps_replaces_lone_surrogates(value: Any, expected: Any) -> None:
    assert _valid(wire.dumps(value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": float("nan")}, {"a": None}),
        ([1.5, float("inf"), -float("inf")], [1.5, None, None]),
        ({"a": ({"b": float("nan")},)}, {"a": [{"b": None}]}),
    ],
)
def test_dumps_writes_non_finite_floats_as_null(value: Any, expected: Any) -> None:
    assert _valid(wire.dumps(value)) == expected


def test_dumps_still_raises_for_programming_errors() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        wire.dumps(loop)
    with pytest.raises(TypeError):
        wire.dumps({"a": object()})


def test_loads_dumps_round_trip() -> None:
    value = {"request_id": "r", "data": {"text": '😀\n"q"', "n": -(2**63), "f": 1e300}}
    assert wire.loads(wire.dumps(value)) == value
    assert not math.isnan(wire.loads(wire.dumps(value))["data"]["f"])


def test_json_hazard_finds_a_surrogate_late_in_a_long_key() -> None:
    assert wire.json_hazard({"k" * 100 + "\ud800": 1}) == (
        "<root>",
        "has a key with a lone UTF-16 surrogate",
    )
    where, _ = wire.json_hazard({"k" * 100: "\ud800"}) or ("", "")
    assert where == "k" * 64 + "…"


@pytest.mark.parametrize(
    "frame",
    [
        {"request_id": "r", "data": {"chunk": "héllo 🌸", "seq": 3, "tool_call": None}},
        {"x": float("nan"), "y": [float("inf"), 1.5]},
        {"big": 2**70, "text": "a\ud800b"},
        {1: "non-string key"},
    ],
)
def test_dumps_bytes_is_the_same_json_as_dumps(frame: dict) -> None:
    out = wire.dumps_bytes(frame)
    text = out.decode("utf-8")  # valid UTF-8, whatever the frame held
    assert json.loads(text) == json.loads(wire.dumps(frame))


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('{"a":12345678901234567890}', True),
        ('{"a":-9223372036854775809}', True),
        ('{"a":"12345678901234567890"}', False),  # digits inside a string are text
        ('{"a":"x\\\\","b":12345678901234567890}', True),  # an escaped backslash ends no string
        ('{"a":"say \\"12345678901234567890\\""}', False),  # escaped quotes stay inside
        ('{"a":' + "1" * 18 + "}", False),
    ],
)
def test_integers_past_64_bits_are_found_outside_strings(text: str, refused: bool) -> None:
    if refused:
        with pytest.raises(wire.WireError):
            wire.loads(text)
    else:
        wire.loads(text)


# ----- the digit scan in front of orjson ------------------------------------------------------


def _long_number_by_regex(text: str) -> bool:
    """The scan as it was: strings cut out, then a regex for 19 digits."""
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    return re.search(r"\d{19}", "".join(text.split('"')[0::2])) is not None


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1234567890123456789}',
        '{"a":123456789012345678}',
        '{"a":"1234567890123456789"}',
        '{"a":"x\\"1234567890123456789"}',
        '{"a":"x\\\\","b":1234567890123456789}',
        '{"a":-9223372036854775809}',
        '{"a":1.234567890123456789}',
        '{"a":"٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣"}',
        '{"a":"\ud800","b":12345678901234567890}',
        "[" + "1," * 40 + "2]",
        "1" * 19,
        "1" * 18,
        "",
    ],
)
def test_digit_scan_agrees_with_the_regex(text: str) -> None:
    assert wire._long_number(text) == _long_number_by_regex(text)


@pytest.mark.parametrize("digits", [18, 19, 20, 400])
def test_integers_past_64_bits_are_refused_whatever_the_scan(digits: int) -> None:
    text = '{"a":' + "9" * digits + ',"b":"' + "9" * digits + '"}'
    if digits <= 18:
        assert wire.loads(text)["a"] == int("9" * digits)
    else:
        with pytest.raises(wire.WireError, match="64-bit"):
            wire.loads(text)
    assert wire.loads('{"b":"' + "9" * digits + '"}') == {"b": "9" * digits}
