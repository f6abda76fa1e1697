"""The Socket.IO transport's pure core: auth object, login frame, ack, message payloads."""

from __future__ import annotations

import json

import pytest

from adapters.miochat import protocol as P
from adapters.miochat import socketio_frames as S
from bridge.errors import ErrorCode
from bridge.models import ModelGroup


def test_auth_object() -> None:
    a = S.parse_auth({"id": "1234567890", "token": "code", "firstLogin": True})
    assert a == S.Auth("1234567890", "code", True)
    assert S.parse_auth({"id": None}) == S.Auth(None, "", False)  # guest: token key absent
    assert S.parse_auth(None) == S.Auth(None, "", False)
    assert S.parse_auth({"id": 42, "token": None}).user_id == "42"


@pytest.mark.parametrize("raw", [[1], "x", {"id": "a b"}, {"id": True}, {"id": "x", "token": {}}])
def test_bad_auth_has_a_reason(raw: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        S.parse_auth(raw)


def test_providers_group_by_owner_and_skip_empty() -> None:
    groups = [ModelGroup("momohub", ["character:a"]), ModelGroup("oa", []), ModelGroup("oa", ["m"])]
    assert S.providers(groups) == {
        "momohub": [{"owner": "momohub", "models": ["character:a"]}],
        "oa": [{"owner": "oa", "models": ["m"]}],
    }


def test_login_frame_fields() -> None:
    f = S.login_frame(
        "s-1",
        boot_id="b-1",
        is_admin=True,
        groups=[ModelGroup("oa", ["m"])],
        onebot_enabled=False,
        user_id="u1",
    )
    assert (f["protocol"], f["type"], f["request_id"]) == ("system", "login", "s-1")
    assert f["data"] == {
        "bootId": "b-1",
        "is_admin": True,
        "id": "u1",
        "models": {"oa": [{"owner": "oa", "models": ["m"]}]},
        "models_meta": {},
        "onebot_enabled": False,
        "pendingTasks": [],
    }
    json.loads(S.encode(f))


def test_onebot_ack_has_no_protocol() -> None:
    assert S.onebot_ack("r1", 7) == {
        "request_id": "r1",
        "code": 0,
        "message": "ok",
        "data": {"message_id": 7},
    }


def test_message_payloads() -> None:
    seg = [{"type": "text", "data": {"text": "hi"}}]
    frame = {"request_id": "r", "protocol": "onebot", "type": "message", "id": "c1", "data": seg}
    for payload in (json.dumps(frame), frame):
        req = S.parse(payload)
        assert isinstance(req, P.MessageRequest)
        assert req.data.contact == "c1"
    for bad in (42, None, ["x"]):
        err = S.parse(bad)
        assert isinstance(err, P.FrameError) and err.code == ErrorCode.BAD_FRAME
    assert isinstance(S.parse("{not json"), P.FrameError)
    unknown = S.parse(json.dumps({"request_id": 1, "protocol": "nope", "type": "x", "data": {}}))
    assert isinstance(unknown, P.FrameError) and unknown.request_id == 1
