"""The shortcuts of `parse_request` for common frames give exactly what the general path gives.

Every frame here is parsed twice: by `P.parse_request` (shortcut first) and by
`P.general_request` (the envelope and the pydantic union alone). The results must match down to
each value's type, the models' set fields and their field order, and every error's code and
reason. The valid frames must actually take a shortcut, or these tests would prove nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.miochat import protocol as P
from adapters.miochat import wire
from bridge.errors import ErrorCode


def frame(protocol: str, ftype: str, data: Any = ..., **top: Any) -> str:
    fields: dict[str, Any] = {"request_id": top.pop("request_id", 7), "protocol": protocol}
    fields["type"] = ftype
    if data is not ...:
        fields["data"] = data
    fields.update(top)
    return json.dumps(fields, ensure_ascii=False)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, P.FrameError):
        got = (a.code, a.reason, a.request_id, a.protocol, a.type)
        assert got == (b.code, b.reason, b.request_id, b.protocol, b.type), where
    elif isinstance(a, BaseModel):
        assert list(a.__dict__) == list(b.__dict__), where
        assert a.model_fields_set == b.model_fields_set, where
        assert type(a.model_fields_set) is type(b.model_fields_set), where
        assert a.__pydantic_extra__ == b.__pydantic_extra__, where
        assert a.__pydantic_private__ == b.__pydantic_private__, where
        for k in a.__dict__:
            assert_same(a.__dict__[k], b.__dict__[k], f"{where}.{k}")
        assert a == b and repr(a) == repr(b), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def general_path(raw: str, *, logged_in: bool = True) -> Any:
    """`parse_request` as it was before the shortcuts: the envelope, then the pydantic union."""
    try:
        req = P.parse_frame(raw)
    except P.FrameError as e:
        return e
    return P.typed_request(req, logged_in=logged_in, strict_wire=True)


def both(raw: str, *, logged_in: bool = True) -> tuple[Any, Any]:
    fast = P.parse_request(raw, logged_in=logged_in)
    general = general_path(raw, logged_in=logged_in)
    assert_same(fast, general)
    try:
        obj = wire.loads(raw)
    except wire.WireError:
        return fast, general
    assert_same(P.general_request(obj, logged_in=logged_in), general)
    return fast, general


def takes_shortcut(raw: str, *, logged_in: bool = True) -> bool:
    try:
        obj = wire.loads(raw)
    except wire.WireError:
        return False
    return P.shortcut_request(obj, logged_in=logged_in) is not None


# ----- valid frames: the shortcut is taken and agrees ------------------------------------------

SEGS = [{"type": "text", "data": {"text": "hi"}}]
HI = [{"role": "user", "content": "hi"}]
VALID = [
    frame("system", "heartbeat", {"timestamp": 1764457315123}),
    frame("system", "heartbeat", {"timestamp": 1764457315123.5}),
    frame("system", "heartbeat", {"timestamp": -(2**63)}),
    frame("system", "heartbeat", {"timestamp": 2**63 - 1}),
    frame("system", "heartbeat", {"timestamp": "1764457315123"}),
    frame("system", "heartbeat", {"timestamp": "soon"}),
    frame("system", "heartbeat", {"timestamp": ""}),
    frame("system", "heartbeat", {"timestamp": None}),
    frame("system", "heartbeat", {"timestamp": 5, "extra": [1, {"a": "b"}]}),
    frame("system", "heartbeat", {}),
    frame("system", "heartbeat"),
    frame("system", "heartbeat", None),
    frame("system", "heartbeat", ""),
    frame("system", "heartbeat", [1]),
    frame("system", "heartbeat", {"timestamp": 1}, request_id="r-1"),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=1.5),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=-(2**63)),
    frame("system", "heartbeat", {"timestamp": 1}, request_id="é✓"),
    frame("system", "heartbeat", {"timestamp": 1}, id="contact"),
    frame("system", "heartbeat", {"timestamp": 1}, id=42),
    frame("system", "heartbeat", {"timestamp": 1}, id=True),
    frame("system", "heartbeat", {"timestamp": 1}, id=[1]),
    frame("system", "ack", {"seq": 0}),
    frame("system", "ack", {"seq": 2**63 - 1, "x": 1}),
    frame("system", "login", {"mio-chat-id": "alice"}),
    frame("system", "login", {"mio-chat-id": "alice", "mio-chat-token": "t"}),
    frame("system", "login", {"mio-chat-id": 12345, "mio-chat-token": 99}),
    frame("system", "login", {"mio-chat-id": "a_b-C9", "mio-chat-token": None}),
    frame("system", "login", {"mio-chat-id": "x" * 64, "other": {}}),
    frame("onebot", "message", SEGS, id=10000),
    frame("onebot", "message", SEGS, id="bot"),
    frame("onebot", "message", {"id": "c", "data": {"message": SEGS}}),
    frame("onebot", "message", {"id": 5, "message": "plain text"}),
    frame("onebot", "message", {"id": "c", "content": SEGS}),
    frame("onebot", "del_message", {"id": "c", "content": {"message_id": 3}}),
    frame("onebot", "del_message", {"message_id": " 42 "}, id="c"),
    frame("onebot", "forward_msg", {"id": "c", "content": [{"message_id": 1, "message": SEGS}]}),
    frame("openai", "models"),
    frame("openai", "models", {"any": ["thing"]}),
    frame("openai", "completions", {"messages": [{"role": "user", "content": "hi"}]}),
    frame(
        "openai",
        "completions",
        {
            "model": "m",
            "messages": HI,
            "temperature": 1,
            "top_p": 0.5,
            "presence_penalty": -(2**53),
            "frequency_penalty": 2**53,
            "max_tokens": 2**63 - 1,
            "stream": False,
            "tools": [{"type": "function"}],
            "conversation_id": "a.b:c-d_e",
            "unknown": 1,
        },
    ),
    frame("openai", "completions", {"messages": HI, "conversation_id": None, "tools": None}),
    frame("openai", "completions", {"messages": HI, "temperature": None, "max_tokens": None}),
    frame("openai", "abort", {"request_id": "c1"}),
    frame("openai", "abort", {"request_id": 3}),
    frame("openai", "abort", {"request_id": 2.5}),
]


@pytest.mark.parametrize("raw", VALID)
def test_valid_frames_take_the_shortcut_and_match_the_general_path(raw: str) -> None:
    assert takes_shortcut(raw)
    fast, _ = both(raw)
    assert not isinstance(fast, P.FrameError)


def test_login_takes_the_shortcut_before_login_too() -> None:
    raw = frame("system", "login", {"mio-chat-id": "alice", "mio-chat-token": "t"})
    assert takes_shortcut(raw, logged_in=False)
    fast, _ = both(raw, logged_in=False)
    assert isinstance(fast, P.LoginRequest) and fast.data.user_id == "alice"


def test_a_shortcut_model_is_its_own_copy() -> None:
    raw = frame("system", "heartbeat", {"timestamp": 1})
    a, b = P.parse_request(raw), P.parse_request(raw)
    assert a == b and a is not b and a.data is not b.data
    assert a.model_fields_set is not b.model_fields_set


# ----- frames the shortcuts leave to the general path: the same errors -------------------------

LEFT = [
    frame("system", "heartbeat", {"timestamp": 2**63}),
    frame("system", "heartbeat", {"timestamp": 2.0**63}),
    frame("system", "heartbeat", {"timestamp": "9" * 33}),
    frame("system", "heartbeat", {"timestamp": "1e30"}),
    frame("system", "heartbeat", {"timestamp": True}),
    frame("system", "heartbeat", {"timestamp": [1]}),
    frame("system", "heartbeat", {"timestamp": {}}),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=None),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=True),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=[1]),
    frame("system", "heartbeat", {"timestamp": 1}, request_id={"a": 1}),
    frame("system", "heartbeat", {"timestamp": 1}, request_id=2**63),
    frame("system", "heartbeat", {"timestamp": 1}, type=5),
    '{"request_id":1,"protocol":["system"],"type":"heartbeat","data":{"timestamp":1}}',
    frame("system", "heartbeats", {"timestamp": 1}),
    frame("systems", "heartbeat", {"timestamp": 1}),
    frame("system", "ack", {"seq": -1}),
    frame("system", "ack", {"seq": 2**63}),
    frame("system", "ack", {"seq": "3"}),
    frame("system", "ack", {"seq": 1.0}),
    frame("system", "ack", {"seq": True}),
    frame("system", "ack", {}),
    frame("system", "ack", []),
    frame("system", "ack"),
    frame("system", "login", {"mio-chat-id": "bad id"}),
    frame("system", "login", {"mio-chat-id": "x" * 65}),
    frame("system", "login", {"mio-chat-id": True}),
    frame("system", "login", {"mio-chat-id": None}),
    frame("system", "login", {"mio-chat-id": 10**80}),
    frame("system", "login", {"mio-chat-id": "a", "mio-chat-token": 1.5}),
    frame("system", "login", {"mio-chat-id": "a", "mio-chat-token": False}),
    frame("system", "login", {"user_id": "a", "token": "t"}),
    frame("system", "login", {"mio-chat-id": "a", "user_id": "b"}),
    frame("system", "login", {"mio-chat-id": "a", "token": "b"}),
    frame("system", "login", {}),
    frame("system", "login", "alice"),
    frame("system", "login"),
    frame("onebot", "message", SEGS),
    frame("onebot", "message", [], id=1),
    frame("onebot", "message", {"id": "c"}),
    frame("onebot", "message", {"id": None, "message": SEGS}),
    frame("onebot", "message", {"id": "c", "message": [{"type": 1}]}),
    frame("onebot", "message", "text", id=1),
    frame("onebot", "del_message", {"id": "c", "content": {"message_id": 2**31}}),
    frame("onebot", "del_message", {"id": "c", "content": {}}),
    frame("onebot", "forward_msg", {"id": "c", "content": []}),
    frame("openai", "completions", {}),
    frame("openai", "completions", {"messages": "hi"}),
    frame("openai", "completions", {"messages": []}),
    frame("openai", "completions", {"messages": [1]}),
    frame("openai", "completions", {"messages": HI, "model": None}),
    frame("openai", "completions", {"messages": HI, "model": 5}),
    frame("openai", "completions", {"messages": HI, "temperature": "0.5"}),
    frame("openai", "completions", {"messages": HI, "temperature": True}),
    frame("openai", "completions", {"messages": HI, "top_p": 2**53 + 1}),
    frame("openai", "completions", {"messages": HI, "max_tokens": 5.0}),
    frame("openai", "completions", {"messages": HI, "max_tokens": "5"}),
    frame("openai", "completions", {"messages": HI, "stream": 1}),
    frame("openai", "completions", {"messages": HI, "stream": "false"}),
    frame("openai", "completions", {"messages": HI, "tools": {}}),
    frame("openai", "completions", {"messages": HI, "tools": ["x"]}),
    frame("openai", "completions", {"messages": HI, "conversation_id": "a b"}),
    frame("openai", "completions", {"messages": HI, "conversation_id": 5}),
    frame("openai", "completions", []),
    frame("openai", "abort", {}),
    frame("openai", "abort", {"request_id": None}),
    frame("openai", "abort", {"request_id": False}),
    frame("openai", "abort", {"request_id": [1]}),
    frame("openai", "abort", "c1"),
]


@pytest.mark.parametrize("raw", LEFT)
def test_frames_left_to_the_general_path_get_the_same_answer(raw: str) -> None:
    assert not takes_shortcut(raw)
    both(raw)


@pytest.mark.parametrize("raw", VALID[:3] + VALID[22:24] + VALID[-3:])
def test_before_login_only_login_takes_a_shortcut(raw: str) -> None:
    assert not takes_shortcut(raw, logged_in=False)
    fast, _ = both(raw, logged_in=False)
    assert isinstance(fast, P.FrameError) and fast.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "raw",
    [
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"timestamp":1e400}}',
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"timestamp":NaN}}',
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"x":99999999999999999999}}',
        '{"request_id":"\\ud800","protocol":"system","type":"heartbeat"}',
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"\\udfff":1}}',
        '{"request_id":1,"protocol":"system","type":"heartbeat","data":'
        + "[" * 40
        + "]" * 40
        + "}",
        '{"request_id":1,"protocol":"system","type":"heartbeat"',
        "[1]",
    ],
)
def test_hostile_text_is_still_a_bad_frame(raw: str) -> None:
    got = P.parse_request(raw)
    assert isinstance(got, P.FrameError) and got.code is ErrorCode.BAD_FRAME
    assert got.request_id is None
    with pytest.raises(P.FrameError) as ei:
        P.parse_frame(raw)
    assert (ei.value.code, ei.value.reason) == (got.code, got.reason)


# ----- random frames: whatever the mix of fields, both paths agree ----------------------------

_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    7,
    2**31,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    0.5,
    1e300,
    "",
    "x",
    "alice",
    "12",
    "a b",
    "é",
    [],
    [{}],
    SEGS,
    {},
    {"message_id": 1},
]
# Per frame type: each key with values that are plausible for it (drawn 70% of the time; the
# rest come from any of `_VALUES`), so the mix reaches both the shortcuts and their refusals.
_KEYS: dict[str, dict[str, list[Any]]] = {
    "system/heartbeat": {"timestamp": [1764457315123, 0.5, "12", "", None]},
    "system/ack": {"seq": [0, 7, 2**63 - 1]},
    "system/login": {
        "mio-chat-id": ["alice", 12, "a_b-c"],
        "mio-chat-token": ["t", "", None, 5],
        "user_id": ["bob"],
        "token": ["t"],
    },
    "onebot/message": {"id": ["c", 5], "message": [SEGS, "hi"], "data": [{"message": SEGS}]},
    "openai/completions": {
        "model": ["m", ""],
        "messages": [[], [{"role": "user"}], [{"a": 1}, {}]],
        "temperature": [0.5, 1, None],
        "max_tokens": [100, None],
        "stream": [True, False],
        "tools": [None, [{"type": "function"}]],
        "conversation_id": ["default", "a.b", None],
    },
    "openai/abort": {"request_id": ["c1", 3, 2.5]},
}


def _random_frames(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for tag, keys in itertools.islice(itertools.cycle(_KEYS.items()), count):
        protocol, ftype = tag.split("/")
        data: Any = {
            k: rng.choice(good if rng.random() < 0.7 else _VALUES)
            for k, good in keys.items()
            if rng.random() < 0.7
        }
        if rng.random() < 0.1:
            data = rng.choice(_VALUES)
        rids = [1, "r", 2.5, 2**63 - 1] if rng.random() < 0.9 else [None, True, [1], {}]
        top = {"request_id": rng.choice(rids)}
        if rng.random() < 0.5:
            top["id"] = rng.choice(_VALUES)
        out.append(frame(protocol, ftype, data, **top))
    return out


@pytest.mark.parametrize("logged_in", [True, False])
def test_random_frames_match_the_general_path(logged_in: bool) -> None:
    frames = _random_frames(20240611, 3000)
    shortcuts = 0
    for raw in frames:
        try:
            both(raw, logged_in=logged_in)
        except AssertionError as e:
            raise AssertionError(f"{raw}: {e}") from None
        shortcuts += takes_shortcut(raw, logged_in=logged_in)
    assert shortcuts > (1000 if logged_in else 10)  # the mix reaches the shortcuts


# ----- answers: the same bytes as before ------------------------------------------------------


def _safe_request_id_by_isinstance(v: Any) -> Any:
    """safe_request_id as it was, before its exact-type shortcuts."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return None if wire.has_surrogate(v) else v
    if isinstance(v, int):
        return v if wire.INT64_MIN <= v <= wire.INT64_MAX else None
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    return None


class _Str(str):
    pass


class _Int(int):
    pass


@pytest.mark.parametrize(
    "v",
    [
        0,
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        True,
        False,
        "",
        "r",
        "é",
        "a\ud800",
        "\udfff",
        1.5,
        float("nan"),
        float("inf"),
        None,
        [1],
        {"a": 1},
        _Str("s"),
        _Str("\ud800"),
        _Int(5),
        _Int(2**64),
    ],
)
def test_safe_request_id_is_unchanged(v: Any) -> None:
    got, want = P.safe_request_id(v), _safe_request_id_by_isinstance(v)
    assert type(got) is type(want)
    assert got is want or got == want


@pytest.mark.parametrize(
    "raw",
    [
        frame("system", "heartbeat", {"timestamp": 1764457315000}),
        frame("system", "heartbeat", {"timestamp": "soon"}, request_id="r"),
        frame("system", "heartbeat", {}, request_id=2.5),
    ],
)
def test_heartbeat_answer_bytes(raw: str) -> None:
    fast = P.parse_request(raw)
    general = general_path(raw)
    now = 1764457316000.25
    want = P.dumps_bytes(
        P.success(
            general.request_id,
            "system",
            "heartbeat",
            {"delay": general.data.delay(now), "revTime": int(now)},
        )
    )
    assert P.dumps_bytes(P.heartbeat_reply(fast.request_id, fast.data, now)) == want


def _delay_by_float(data: P.HeartbeatData, now_ms: float) -> int:
    """HeartbeatData.delay as it was: always through `millis`."""
    sent = data.millis()
    if sent is None:
        return 0
    return max(P.INT64_MIN, min(P.INT64_MAX, int(now_ms - sent)))


@pytest.mark.parametrize(
    "timestamp",
    [None, "", "soon", "12.5", 0, 1764457315123, 2**53 + 1, 2**63 - 1, -(2**63), 12.5, 1e18],
)
@pytest.mark.parametrize("now_ms", [1764457316000.25, 1764457316000, 0.0, -1e19, 1e300])
def test_heartbeat_delay_is_unchanged(timestamp: Any, now_ms: float) -> None:
    data = P.HeartbeatData(timestamp=timestamp)
    got, want = data.delay(now_ms), _delay_by_float(data, now_ms)
    assert type(got) is int and got == want
