"""Hostile input over a real socket, before and after login.

Each input gets exactly one failure frame (BAD_FRAME / INVALID_DATA / NOT_FOUND ...) and
nothing after it; the connection stays open (a heartbeat afterwards works); nothing is stored
half-way; every frame the server writes is strict UTF-8 JSON (no NaN, no lone surrogates); and
the server logs no traceback."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.hub_peers import StrictClient, server_log, tracebacks

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
USER = "mallory"
BAD = {"BAD_FRAME", "INVALID_DATA", "NOT_FOUND", "UNKNOWN_PROTOCOL", "UNKNOWN_TYPE", "UNAVAILABLE"}


def frame(rid: str, protocol: str, type_: str, data: Any, **extra: Any) -> str:
    return json.dumps(
        {"request_id": rid, "protocol": protocol, "type": type_, "data": data, **extra}
    )


def msg(text_json: str, contact: str = MOMO) -> str:
    """onebot/message in the real client's shape, with the text given as raw JSON."""
    return (
        '{"request_id":"h","protocol":"onebot","type":"message","id":"' + contact + '",'
        '"data":[{"type":"text","data":{"text":' + text_json + "}}]}"
    )


DEEP = 100_000

# Raw text frames a client may send before logging in.
BEFORE_LOGIN: dict[str, str | bytes] = {
    "open-brackets": "[" * DEEP,
    "balanced-brackets": "[" * DEEP + "]" * DEEP,
    "open-braces": '{"a":' * DEEP,
    "nested-objects": '{"a":' * DEEP + "1" + "}" * DEEP,
    "surrogate-request-id": r'{"request_id":"\ud800","protocol":"system","type":"login","data":{}}',
    "surrogate-pair-half": r'{"request_id":"\udfff\ud800","protocol":"system","type":"heartbeat"}',
    "surrogate-key": r'{"request_id":1,"\ud800":1,"protocol":"system","type":"heartbeat"}',
    "surrogate-login-id": r'{"request_id":1,"protocol":"system","type":"login","data":{"mio-chat-id":"\ud800"}}',
    "huge-int-request-id": '{"request_id":' + "9" * 401 + "}",
    "inf-request-id": '{"request_id":1e400,"protocol":"system","type":"heartbeat"}',
    "nan": '{"request_id":NaN,"protocol":"system","type":"heartbeat"}',
    "infinity-data": '{"request_id":1,"protocol":"system","type":"heartbeat","data":{"timestamp":-Infinity}}',
    "object-request-id": '{"request_id":{"a":1},"protocol":"system","type":"heartbeat"}',
    "bool-request-id": '{"request_id":true,"protocol":"system","type":"heartbeat"}',
    "bare-string": '"\\ud800"',
    "truncated": '{"request_id":1,"protocol":"sys',
    "empty": "",
    "not-utf8-binary": b'{"request_id":"\xff\xfe"}',
    "utf8-encoded-surrogate-binary": b'{"request_id":"\xed\xa0\x80"}',
    "nul": '{"request_id":"\x00","protocol":"system","type":"login","data":[]}',
}

# Raw text frames after login, with the request's id ("h" where it is usable).
AFTER_LOGIN: dict[str, str | bytes] = {
    "heartbeat-401-digits": '{"request_id":"h","protocol":"system","type":"heartbeat",'
    '"data":{"timestamp":' + "9" * 401 + "}}",
    "heartbeat-401-digit-text": frame("h", "system", "heartbeat", {"timestamp": "9" * 401}),
    "heartbeat-1e308": '{"request_id":"h","protocol":"system","type":"heartbeat","data":{"timestamp":1e308}}',
    "heartbeat-minus-1e20": frame("h", "system", "heartbeat", {"timestamp": -1e20}),
    "heartbeat-object": frame("h", "system", "heartbeat", {"timestamp": {"ms": 1}}),
    "surrogate-text-to-character": msg(r'"\ud800"'),
    "surrogate-in-middle-to-character": msg(r'"hello \udc00 world"'),
    "surrogate-in-segment-type": r'{"request_id":"h","protocol":"onebot","type":"message","id":"'
    + MOMO
    + r'","data":[{"type":"\ud800","data":{}}]}',
    "surrogate-contact": r'{"request_id":"h","protocol":"onebot","type":"message","id":"\ud800",'
    r'"data":[{"type":"text","data":{"text":"x"}}]}',
    "document-shape-surrogate": '{"request_id":"h","protocol":"onebot","type":"message","data":'
    '{"id":"@MOMO","type":"message","data":{"message":[{"type":"text","data":{"text":"\\ud800"}}]}}}',
    "float-contact": '{"request_id":"h","protocol":"onebot","type":"message","id":1e20,'
    '"data":[{"type":"text","data":{"text":"x"}}]}',
    "huge-contact": frame("h", "onebot", "message", [{"type": "text"}], id=2**63 - 1),
    "empty-message": frame("h", "onebot", "message", [], id=MOMO),
    "segment-not-object": frame("h", "onebot", "message", ["text"], id=MOMO),
    "segment-data-list": frame("h", "onebot", "message", [{"type": "text", "data": []}], id=MOMO),
    "unknown-character": frame(
        "h", "onebot", "message", [{"type": "text", "data": {"text": "x"}}], id="character:nope"
    ),
    "del-1e20": '{"request_id":"h","protocol":"onebot","type":"del_message","data":'
    '{"id":"@MOMO","type":"message","content":{"message_id":1e20}}}',
    "del-2e40-int": frame(
        "h", "onebot", "del_message", {"id": MOMO, "content": {"message_id": 2**40}}
    ),
    "del-text-id": frame(
        "h", "onebot", "del_message", {"id": MOMO, "content": {"message_id": "1e20"}}
    ),
    "del-negative": frame(
        "h", "onebot", "del_message", {"id": MOMO, "content": {"message_id": -1}}
    ),
    "del-missing": frame("h", "onebot", "del_message", {"id": MOMO, "content": {}}),
    "del-unknown": frame(
        "h", "onebot", "del_message", {"id": MOMO, "content": {"message_id": 2**31 - 1}}
    ),
    "forward-1e20": '{"request_id":"h","protocol":"onebot","type":"forward_msg","data":'
    '{"id":"@MOMO","type":"forward_msg","content":[{"message_id":1e20,"message":[]}]}}',
    "forward-unknown-id": frame(
        "h", "onebot", "forward_msg", {"id": MOMO, "content": [{"message_id": 123456789}]}
    ),
    "forward-empty": frame("h", "onebot", "forward_msg", {"id": MOMO, "content": []}),
    "forward-surrogate": '{"request_id":"h","protocol":"onebot","type":"forward_msg","data":'
    '{"id":"@MOMO","content":[{"message":[{"type":"text","data":{"text":"\\ud800"}}]}]}}',
    "completions-surrogate": '{"request_id":"h","protocol":"openai","type":"completions","data":'
    '{"model":"character:@MOMO","messages":[{"role":"user","content":"\\ud800"}]}}',
    "completions-bad-conversation": frame(
        "h",
        "openai",
        "completions",
        {"model": f"character:{MOMO}", "messages": [], "conversation_id": "../../etc"},
    ),
    "completions-messages-not-list": frame(
        "h", "openai", "completions", {"model": f"character:{MOMO}", "messages": {"a": 1}}
    ),
    "completions-unknown-model": frame(
        "h", "openai", "completions", {"model": "no-such", "messages": []}
    ),
    "abort-object-id": frame("h", "openai", "abort", {"request_id": {"x": 1}}),
    "abort-huge-id": '{"request_id":"h","protocol":"openai","type":"abort","data":{"request_id":'
    + "1" * 30
    + "}}",
    "abort-unknown": frame("h", "openai", "abort", {"request_id": "nothing"}),
    "ack-negative": frame("h", "system", "ack", {"seq": -5}),
    "ack-float": frame("h", "system", "ack", {"seq": 1e20}),
    "share-not-object": frame("h", "system", "share", {"contactor": [1, 2]}),
    "share-surrogate": r'{"request_id":"h","protocol":"system","type":"share","data":{"contactor":{"name":"\ud800"}}}',
    "unknown-type": frame("h", "onebot", "teleport", {}),
    "surrogate-type": r'{"request_id":"h","protocol":"onebot","type":"\ud800","data":{}}',
    "deep-data": '{"request_id":"h","protocol":"system","type":"share","data":'
    + '{"contactor":' * 40
    + "{}"
    + "}" * 41
    + "}",
    "login-again-bad": frame("h", "system", "login", {"mio-chat-id": "no spaces allowed"}),
}


AFTER_LOGIN = {
    k: v.replace("@MOMO", MOMO) if isinstance(v, str) else v for k, v in AFTER_LOGIN.items()
}


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    with server_log() as buf:
        yield buf


@pytest.fixture
async def bridge(bridge_factory, log: io.StringIO) -> AsyncIterator[Bridge]:
    b = await bridge_factory(momohub={"enabled": True})
    yield b
    # Checked last: whatever the test sent, the server logged no traceback.
    assert "hub.login" in log.getvalue()  # the capture saw the bridge's own events
    assert tracebacks(log) == [], log.getvalue()[-4000:]


async def strict_client(b: Bridge) -> StrictClient:
    c = await StrictClient.open(b.url)
    b.clients.append(c)
    return c


async def exchange(c: StrictClient, raw: str | bytes, rid: Any = "h") -> list[dict[str, Any]]:
    """Send ``raw``; wait for its answer (on ``rid``, or on null when it had no usable id),
    then a heartbeat round trip for anything else it caused at once. Returns what answered it."""
    start = len(c.frames)
    await c.send_raw(raw)
    first = await c.wait_for(lambda f: f.get("request_id") in (rid, None), start=start)
    if first.get("data", {}).get("error") != "LOGIN_FAILED":  # that one closes the connection
        beat = await c.request("system", "heartbeat", {}, request_id="after")
        assert beat["code"] in (0, 1), beat
    answered = [f for f in c.frames[start:] if f.get("request_id") != "after"]
    c.frames[:] = [f for f in c.frames if f.get("request_id") != "after"]
    return answered


def single_failure(answered: list[dict[str, Any]], rid: Any, errors: set[str]) -> dict[str, Any]:
    assert len(answered) == 1, answered
    f = answered[0]
    assert f["code"] == 1 and f["message"] == "failed", f
    assert f["data"]["error"] in errors, f
    assert isinstance(f["data"]["reason"], str) and f["data"]["reason"]
    # The request's own id when it could be echoed, else null: never anything else.
    assert f["request_id"] in (rid, None), f
    return f


async def stored_messages(b: Bridge, user: str) -> list[tuple[str, str]]:
    async with b.app.storage.db.conn.execute(
        "SELECT direction, content FROM messages WHERE user_id = ? ORDER BY id", (user,)
    ) as cur:
        rows = await cur.fetchall()
    return [(r[0], r[1]) for r in rows]


@pytest.mark.parametrize("name", list(BEFORE_LOGIN))
async def test_before_login(bridge: Bridge, name: str) -> None:
    c = await strict_client(bridge)
    answered = await exchange(c, BEFORE_LOGIN[name], rid=1)
    f = single_failure(answered, None, BAD | {"UNAUTHENTICATED", "LOGIN_FAILED"})
    if f["data"]["error"] == "LOGIN_FAILED":
        assert await c.wait_closed() == 4001  # as the contract says for a failed login
        c = await strict_client(bridge)
    await c.login(USER)
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    assert c.violations == []
    assert await stored_messages(bridge, USER) == []


@pytest.mark.parametrize("name", list(AFTER_LOGIN))
async def test_after_login(bridge: Bridge, name: str) -> None:
    c = await strict_client(bridge)
    await c.login(USER)
    answered = await exchange(c, AFTER_LOGIN[name])
    f = single_failure(answered, "h", BAD | {"LOGIN_FAILED"})
    bad = c
    if f["data"]["error"] == "LOGIN_FAILED":
        assert await c.wait_closed() == 4001
        c = await strict_client(bridge)
        await c.login(USER)
    # A good message to the same character afterwards: its whole reply, and nothing more for
    # the bad request (one conversation's frames are ordered, so a late second frame would
    # have come before this reply ends).
    rid = await c.send("onebot", "message", [{"type": "text", "data": {"text": "ok"}}], id=MOMO)
    assert (await c.reply(rid))["code"] == 0
    assert (await c.stream(rid))[-1]["message"] == "completed"
    await c.wait_push()
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    # Exactly one frame ever answered the bad request.
    assert [x for x in bad.frames if x.get("request_id") == "h"] == ([f] if f["request_id"] else [])
    assert [x for x in bad.frames if x.get("request_id") is None] == (
        [] if f["request_id"] else [f]
    )
    assert bad.violations == [] and c.violations == []
    # Nothing of the bad request was stored: only the good message and its reply.
    ok = json.dumps([{"type": "text", "data": {"text": "ok"}}], ensure_ascii=False)
    rows = await stored_messages(bridge, USER)
    assert [d for d, _ in rows] == ["in", "out"] and json.loads(rows[0][1]) == json.loads(ok)
    assert not [r for r in await bridge.app.storage.inflight.all()]


async def test_valid_unicode_round_trips(bridge: Bridge) -> None:
    """Not everything odd is bad: a surrogate PAIR (an emoji) and other rare characters are
    fine and come back intact, as strict UTF-8."""
    c = await strict_client(bridge)
    await c.login(USER)
    text = "emoji \U0001f600, rtl \u202e, nul \x00, bom \ufeff, max \U0010ffff"
    raw = (
        '{"request_id":"u","protocol":"onebot","type":"message","id":"' + MOMO + '","data":'
        '[{"type":"text","data":{"text":' + json.dumps(text) + "}}]}"  # ASCII escapes
    )
    await c.send_raw(raw)
    assert (await c.reply("u"))["code"] == 0
    frames = await c.stream("u")
    reply = "".join(f["data"]["chunk"] for f in frames if f["message"] == "update")
    assert reply == f"Momo: you said {text}"
    push = await c.wait_push()
    assert push["data"]["content"]["message"][0]["data"]["text"] == reply
    assert c.violations == []


async def test_flood_of_hostile_frames_leaves_the_connection_usable(bridge: Bridge) -> None:
    c = await strict_client(bridge)
    await c.login(USER)
    other = await strict_client(bridge)
    await other.login("bystander")
    for raw in list(AFTER_LOGIN.values()) * 3:
        if b"login" in (raw if isinstance(raw, bytes) else raw.encode()):
            continue
        await c.send_raw(raw)
    assert (await other.request("system", "heartbeat", {}))["code"] == 0
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    assert c.violations == [] and other.violations == []
