"""Self-tests of the QQ implementation simulator (tests/support/qq_impl.py) against a tiny
aiohttp reverse-WS server on loopback: what it sends must be spec-complete OneBot v11 (checked with
the project's own parser), and what it answers must follow NapCat's shapes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from adapters.onebot.cq import parse_cq as project_parse_cq
from adapters.onebot.events import (
    FriendRecallNotice,
    GroupMessageEvent,
    GroupRecallNotice,
    HeartbeatEvent,
    LifecycleEvent,
    MessageSentEvent,
    PrivateMessageEvent,
    UnknownEvent,
    parse_event,
)
from tests.support.qq_impl import (
    INT32_MAX,
    INT32_MIN,
    ActionFailed,
    HandshakeRefused,
    QQImpl,
    at,
    face,
    image,
    record,
    reply,
    text,
)

PATH = "/onebot/v11/ws"
WAIT = 10.0
SELF_ID = 10001


class Conn:
    """One accepted WebSocket on the mini server, with everything it received."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.headers = request.headers
        self.query = dict(request.query)
        self.frames: list[Any] = []  # parsed JSON, or the raw text when it is not JSON
        self.raw: list[str] = []
        self.kinds: list[WSMsgType] = []  # every message type receive() returned
        self.close_code: int | None = None
        self.ended = False

    def events(self, **match: Any) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if isinstance(f, dict)
            and "post_type" in f
            and all(f.get(k) == v for k, v in match.items())
        ]


class MiniBridge:
    """A reverse-WS OneBot application endpoint: checks the token, records frames, calls actions."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.attempts: list[web.Request] = []
        self.conns: list[Conn] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}{PATH}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> int:
        if not self.token:
            return 0
        header = request.headers.get("Authorization")
        query = request.query.get("access_token")
        if header is None and query is None:
            return 401
        ok = {f"Bearer {self.token}", f"Token {self.token}"}
        return 0 if header in ok or query == self.token else 403

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts.append(request)
        status = self._authorized(request)
        if status:
            return web.Response(status=status, text="bad token")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Conn(ws, request)
        await self._bump(lambda: self.conns.append(conn))
        while True:
            msg = await ws.receive()
            conn.kinds.append(msg.type)
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = msg.data if isinstance(msg.data, str) else msg.data.decode()
                try:
                    parsed: Any = json.loads(data)
                except ValueError:
                    parsed = data
                await self._bump(
                    lambda d=data, p=parsed: (conn.raw.append(d), conn.frames.append(p))
                )
            else:
                break
        conn.close_code = ws.close_code
        await self._bump(lambda: setattr(conn, "ended", True))
        return ws

    async def _bump(self, change: Callable[[], Any]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()

    async def wait(self, pred: Callable[[], Any], what: str = "condition") -> None:
        try:
            async with asyncio.timeout(WAIT):
                async with self._changed:
                    await self._changed.wait_for(pred)
        except TimeoutError:
            raise AssertionError(f"mini bridge: timed out waiting for {what}") from None

    async def conn(self, n: int = 1) -> Conn:
        await self.wait(lambda: len(self.conns) >= n, f"connection {n}")
        return self.conns[n - 1]

    async def frame(self, pred: Callable[[Any], bool], conn: int = -1) -> Any:
        found: list[Any] = []

        def check() -> bool:
            found[:] = [f for f in self.conns[conn].frames if pred(f)]
            return bool(found)

        await self.wait(check, "a matching frame")
        return found[0]

    async def event(self, conn: int = -1, **match: Any) -> dict[str, Any]:
        return await self.frame(
            lambda f: (
                isinstance(f, dict)
                and "post_type" in f
                and all(f.get(k) == v for k, v in match.items())
            ),
            conn,
        )

    async def send(self, frame: Any, conn: int = -1) -> None:
        await self.conns[conn].ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def call(
        self, action: str, params: Any = None, echo: Any = "e", conn: int = -1
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"action": action, "echo": echo}
        if params is not None:
            frame["params"] = params
        await self.send(frame, conn)
        return await self.answer(echo, conn)

    async def answer(self, echo: Any, conn: int = -1) -> dict[str, Any]:
        return await self.frame(lambda f: is_answer(f, echo), conn)

    def answered(self, echo: Any, conn: int = -1) -> bool:
        return any(is_answer(f, echo) for f in self.conns[conn].frames)


def same_json(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (1 == 1.0 == True in Python, not on the wire)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def is_answer(f: Any, echo: Any) -> bool:
    return isinstance(f, dict) and "status" in f and "echo" in f and same_json(f["echo"], echo)


@pytest.fixture
async def mini() -> AsyncIterator[MiniBridge]:
    m = MiniBridge(token="tok")
    await m.start()
    yield m
    await m.stop()


@pytest.fixture
async def make_qq() -> AsyncIterator[Callable[..., Awaitable[QQImpl]]]:
    made: list[QQImpl] = []

    async def make(url: str, *args: Any, connect: bool = True, **kw: Any) -> QQImpl:
        q = QQImpl(url, SELF_ID, *args, **kw)
        made.append(q)
        if connect:
            await q.connect()
        return q

    yield make
    for q in made:
        await q.close()


async def linked(
    mini: MiniBridge, make_qq: Callable[..., Awaitable[QQImpl]], **kw: Any
) -> tuple[QQImpl, Conn]:
    qq = await make_qq(mini.url, "tok", **kw)
    conn = await mini.conn(qq.connections)
    await mini.event(meta_event_type="lifecycle")
    return qq, conn


# ----- handshake ---------------------------------------------------------------------------------


async def test_handshake_headers_and_lifecycle_first(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn = await linked(mini, make_qq)
    assert qq.handshake_status == 101
    assert qq.connected.is_set() and not qq.closed.is_set()
    assert conn.headers["X-Self-ID"] == str(SELF_ID)
    assert conn.headers["X-Client-Role"] == "Universal"
    assert conn.headers["Authorization"] == "Bearer tok"
    assert conn.headers["User-Agent"] == "OneBot/11"
    assert "access_token" not in conn.query
    first = conn.frames[0]
    assert isinstance(parse_event(first), LifecycleEvent)
    assert first["sub_type"] == "connect" and first["self_id"] == SELF_ID


@pytest.mark.parametrize(
    ("auth", "token", "server_token", "header", "query"),
    [
        ("bearer", "tok", "tok", "Bearer tok", None),
        ("token", "tok", "tok", "Token tok", None),
        ("query", "t k&=", "t k&=", None, "t k&="),
        ("none", "", "", None, None),
        # NapCat sends the scheme even with no token (the parser may trim the trailing blank)
        ("bearer", "", "", "Bearer", None),
    ],
)
async def test_auth_variants(
    make_qq: Any, auth: str, token: str, server_token: str, header: str | None, query: str | None
) -> None:
    m = MiniBridge(token=server_token)
    url = await m.start()
    try:
        qq = await make_qq(url, token, auth=auth, role="Event")
        conn = await m.conn()
        got = conn.headers.get("Authorization")
        assert (got.rstrip() if got is not None else None) == header
        assert conn.query.get("access_token") == query
        assert conn.headers["X-Client-Role"] == "Event"
        await qq.close()
    finally:
        await m.stop()


async def test_refused_handshake_carries_the_status(mini: MiniBridge, make_qq: Any) -> None:
    wrong = await make_qq(mini.url, "wrong", connect=False)
    with pytest.raises(HandshakeRefused) as refused:
        await wrong.connect()
    assert refused.value.status == 403 and wrong.handshake_status == 403
    assert refused.value.body == b"bad token"
    assert not wrong.connected.is_set()

    anonymous = await make_qq(mini.url, "", auth="none", connect=False)
    with pytest.raises(HandshakeRefused) as refused:
        await anonymous.connect()
    assert refused.value.status == 401
    assert mini.conns == []


# ----- events --------------------------------------------------------------------------------------

RICH = [
    reply(-5),
    at(20002),
    text(" hi [there] & a,b "),
    face(14),
    image("https://img.example/a.png?x=1&y=2,3"),
    record("file:///tmp/v.amr"),
]


async def test_events_are_spec_complete_in_array_format(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    before = int(time.time())
    p = await qq.private(20002, RICH, nickname="Alice")
    g = await qq.group(30003, 20002, "plain", card="Ali", role="admin", title="t")
    got_p = await mini.event(message_id=p["message_id"])
    got_g = await mini.event(message_id=g["message_id"])
    assert got_p == p and got_g == g

    ev = parse_event(got_p)
    assert isinstance(ev, PrivateMessageEvent)
    assert ev.user_id == 20002 and ev.sender.nickname == "Alice" and ev.sub_type == "friend"
    assert [s.to_json() for s in ev.message] == RICH
    # raw_message is the CQ form of the same segments, by the project's own parser
    assert [s.to_json() for s in project_parse_cq(got_p["raw_message"])] == RICH
    for key in ("font", "raw_message", "sender", "sub_type", "message_id", "time", "self_id"):
        assert key in got_p  # NoneBot drops message events lacking any of these
    assert before <= got_p["time"] <= int(time.time()) + 1  # seconds, not ms
    assert INT32_MIN <= got_p["message_id"] <= INT32_MAX
    # NapCat extras
    assert got_p["message_format"] == "array" and got_p["real_id"] == got_p["message_id"]
    assert got_p["message_seq"] == got_p["message_id"] and got_p["target_id"] == 20002

    gev = parse_event(got_g)
    assert isinstance(gev, GroupMessageEvent)
    assert gev.group_id == 30003 and gev.sub_type == "normal" and gev.anonymous is None
    assert (gev.sender.card, gev.sender.role, gev.sender.title) == ("Ali", "admin", "t")
    assert [s.to_json() for s in gev.message] == [text("plain")]
    assert got_g["group_name"] == "group30003"


async def test_events_in_string_format_and_without_extras(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq, message_format="string", napcat_extras=False)
    p = await qq.private(20002, RICH)
    got = await mini.event(message_id=p["message_id"])
    assert isinstance(got["message"], str) and got["message"] == got["raw_message"]
    assert [s.to_json() for s in project_parse_cq(got["message"])] == RICH
    ev = parse_event(got)
    assert isinstance(ev, PrivateMessageEvent)
    assert [s.to_json() for s in ev.message] == RICH
    for key in ("message_format", "real_id", "message_seq", "real_seq", "target_id"):
        assert key not in got
    g = await qq.group(30003, 20002, [text("x"), at("all")])
    gev = parse_event(await mini.event(message_id=g["message_id"]))
    assert isinstance(gev, GroupMessageEvent) and "group_name" not in g
    assert [s.to_json() for s in gev.message] == [text("x"), at("all")]


async def test_notices_message_sent_and_heartbeats(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn = await linked(mini, make_qq, heartbeat_interval=20)
    p = await qq.private(20002, "to recall")
    await qq.friend_recall(20002, p["message_id"])
    await qq.group_recall(30003, 20002, -77, operator_id=40004)
    sent = await qq.message_sent("mine", group_id=30003)
    fr = parse_event(await mini.event(notice_type="friend_recall"))
    assert isinstance(fr, FriendRecallNotice) and fr.message_id == p["message_id"]
    gr = parse_event(await mini.event(notice_type="group_recall"))
    assert isinstance(gr, GroupRecallNotice)
    assert (gr.group_id, gr.user_id, gr.operator_id, gr.message_id) == (30003, 20002, 40004, -77)
    ms = await mini.event(post_type="message_sent")
    assert isinstance(parse_event(ms), MessageSentEvent) and ms == sent
    assert ms["user_id"] == SELF_ID and ms["message_sent_type"] == "self"
    # periodic heartbeats, each a valid heartbeat meta event
    await mini.wait(lambda: len(conn.events(meta_event_type="heartbeat")) >= 2, "heartbeats")
    hb = parse_event(conn.events(meta_event_type="heartbeat")[0])
    assert isinstance(hb, HeartbeatEvent) and hb.interval == 20 and hb.status.online


async def test_replay_and_raw_frames(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn = await linked(mini, make_qq)
    ev = await qq.private(20002, "once")
    await qq.replay(ev)
    await qq.send_raw("{not json")
    await qq.send_raw({"post_type": "message", "message_type": "private"})
    await mini.wait(lambda: len(conn.raw) >= 5, "five frames")
    assert conn.raw[1] == conn.raw[2] and json.loads(conn.raw[1]) == ev
    assert conn.raw[3] == "{not json"
    assert isinstance(parse_event(conn.raw[4]), UnknownEvent)


# ----- actions ---------------------------------------------------------------------------------------


async def test_actions_keep_the_echo_type(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    for echo in ("7", 7, {"seq": [1, "a"]}, 1.5, True):
        r = await mini.call("get_login_info", echo=echo)
        assert same_json(r["echo"], echo)
        assert r["status"] == "ok" and r["retcode"] == 0
        assert r["data"] == {"user_id": SELF_ID, "nickname": "MomoQQ"}
        assert set(r) >= {"status", "retcode", "data", "message", "wording", "echo"}
    version = await mini.call("get_version_info", echo="v")
    assert version["data"]["app_name"] == "NapCat.Onebot"
    assert (await mini.call("get_status", echo="s"))["data"]["online"] is True
    assert (await mini.call("can_send_image", echo="c"))["data"] == {"yes": True}
    typing = await mini.call("set_input_status", {"user_id": "20002", "event_type": 1}, "t")
    assert typing["status"] == "ok"
    unknown = await mini.call("no_such_action", {}, echo=9)
    assert (unknown["status"], unknown["retcode"]) == ("failed", 1404)
    assert len(qq.calls_of("get_login_info")) == 5


async def test_sends_accept_every_message_form(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    calls = [
        ("send_private_msg", {"user_id": 20002, "message": [text("a"), face(1)]}),
        ("send_group_msg", {"group_id": "30003", "message": "x[CQ:at,qq=20002] &#91;y&#93; &amp;"}),
        ("send_msg", {"message_type": "private", "user_id": 20002, "message": text("single")}),
        ("send_msg", {"group_id": 30003, "message": "[CQ:face,id=1]", "auto_escape": True}),
    ]
    ids = []
    for i, (action, params) in enumerate(calls):
        r = await mini.call(action, params, echo=f"s{i}")
        assert r["status"] == "ok", r
        assert isinstance(r["data"]["message_id"], int)
        assert INT32_MIN <= r["data"]["message_id"] <= INT32_MAX
        ids.append(r["data"]["message_id"])
    sent = await qq.wait_sent(4)
    assert [s.message_id for s in sent] == ids
    assert [s.target for s in sent] == [
        ("private", 20002),
        ("group", 30003),
        ("private", 20002),
        ("group", 30003),
    ]
    assert sent[0].segments == [text("a"), face(1)]
    assert sent[1].segments == [text("x"), at(20002), text(" [y] &")]
    assert qq.texts() == ["a", "x [y] &", "single", "[CQ:face,id=1]"]
    assert qq.texts(("group", 30003)) == ["x [y] &", "[CQ:face,id=1]"]
    assert qq.texts(20002) == ["a", "single"]
    assert sent[0].at <= sent[1].at and sent[0].time >= int(time.time()) - 5

    bad = [
        ("send_private_msg", {"group_id": 30003, "message": "x"}, 1200),
        ("send_group_msg", {"group_id": 30003}, 1400),
        ("send_group_msg", {"group_id": 30003, "message": [{"data": {}}]}, 1400),
        ("send_msg", {"message": "nowhere"}, 1200),
        ("send_private_msg", ["not", "an", "object"], 1400),
    ]
    for i, (action, params, retcode) in enumerate(bad):
        r = await mini.call(action, params, echo=f"b{i}")
        assert (r["status"], r["retcode"], r["data"]) == ("failed", retcode, None), r
    assert len(qq.sent) == 4


async def test_unknown_frames_do_not_stop_the_reader(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    await mini.send("certainly not json")
    await mini.send("[1, 2]")
    await mini.send(json.dumps({"action": ["weird"], "echo": "w"}))
    await mini.send(json.dumps({"action": "get_login_info"}))  # no echo: NapCat answers ""
    bad = await mini.frame(lambda f: isinstance(f, dict) and f.get("retcode") == 1400)
    assert "echo" not in bad and bad["status"] == "failed"
    weird = await mini.answer("w")
    assert weird["retcode"] == 1404
    no_echo = await mini.answer("")
    assert no_echo["status"] == "ok"
    assert (await mini.call("get_login_info", echo="after"))["status"] == "ok"
    assert qq.bad_frames == ["certainly not json"] and qq.errors == []
    assert qq.connected.is_set()


async def test_get_msg_finds_injected_and_sent_messages(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    p = await qq.group(30003, 20002, [text("hello"), image("https://i/x.png")], card="C")
    r = await mini.call("get_msg", {"message_id": p["message_id"]}, "g1")
    assert r["status"] == "ok"
    data = r["data"]
    assert (data["message_id"], data["real_id"]) == (p["message_id"], p["message_id"])
    assert data["message_type"] == "group" and data["group_id"] == 30003
    assert data["sender"]["user_id"] == 20002 and data["sender"]["card"] == "C"
    assert data["message"] == p["message"] and data["raw_message"] == p["raw_message"]
    assert data["time"] == p["time"]

    s = await mini.call("send_private_msg", {"user_id": 20002, "message": "mine"}, "s")
    mine = await mini.call("get_msg", {"message_id": str(s["data"]["message_id"])}, "g2")
    assert mine["data"]["sender"]["user_id"] == SELF_ID
    assert mine["data"]["message"] == [text("mine")] and mine["data"]["message_type"] == "private"

    missing = await mini.call("get_msg", {"message_id": 123456789}, "g3")
    # NapCat: a thrown error over WebSocket is retcode 1200 with the text in message/wording
    assert (missing["status"], missing["retcode"], missing["data"]) == ("failed", 1200, None)
    assert missing["message"] == missing["wording"] == "消息不存在"

    d = await mini.call("delete_msg", {"message_id": s["data"]["message_id"]}, "d1")
    assert d["status"] == "ok" and d["data"] is None
    assert await qq.wait_deleted(1) == [s["data"]["message_id"]]
    gone = await mini.call("get_msg", {"message_id": s["data"]["message_id"]}, "g4")
    assert gone["retcode"] == 1200
    again = await mini.call("delete_msg", {"message_id": s["data"]["message_id"]}, "d2")
    assert (again["status"], again["retcode"]) == ("failed", 1200)

    await qq.friend_recall(20002, p["message_id"])
    recalled = await mini.call("get_msg", {"message_id": p["message_id"]}, "g5")
    assert recalled["status"] == "failed"


async def test_forwards(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    quoted = await qq.private(20002, "quoted text", nickname="Alice")
    nodes = [
        {"type": "node", "data": {"name": "Momo", "uin": "10001", "content": [text("part 1")]}},
        {"type": "node", "data": {"nickname": "Momo", "user_id": 10001, "content": "part [2]"}},
        {"type": "node", "data": {"id": str(quoted["message_id"])}},
    ]
    r = await mini.call("send_group_forward_msg", {"group_id": 30003, "messages": nodes}, "f1")
    assert r["status"] == "ok", r
    assert isinstance(r["data"]["message_id"], int) and r["data"]["res_id"]
    assert r["data"]["forward_id"] == r["data"]["res_id"]
    (fwd,) = await qq.wait_sent(1)
    assert fwd.forward and fwd.target == ("group", 30003) and qq.forwards == [fwd]
    assert [n["name"] for n in fwd.nodes] == ["Momo", "Momo", "Alice"]
    assert [n["content"] for n in fwd.nodes] == [
        [text("part 1")],
        [text("part [2]")],
        [text("quoted text")],
    ]
    assert fwd.text == "part 1\npart [2]\nquoted text"

    got = await mini.call("get_forward_msg", {"id": r["data"]["res_id"]}, "gf")
    assert [m["content"] for m in got["data"]["messages"]] == [n["content"] for n in fwd.nodes]

    priv = await mini.call("send_private_forward_msg", {"user_id": 20002, "messages": nodes[:1]})
    assert priv["status"] == "ok"
    generic = await mini.call("send_forward_msg", {"group_id": 30003, "messages": nodes[:2]}, "f3")
    assert generic["status"] == "ok"
    as_msg = await mini.call("send_msg", {"user_id": 20002, "message": nodes[:1]}, "f4")
    assert as_msg["status"] == "ok"
    sent = await qq.wait_sent(4)
    assert [s.forward for s in sent] == [True] * 4
    assert sent[1].target == ("private", 20002) and sent[3].action == "send_msg"

    mixed = await mini.call("send_msg", {"user_id": 20002, "message": [nodes[0], text("x")]}, "f5")
    assert (mixed["status"], mixed["retcode"]) == ("failed", 1400)
    empty = await mini.call("send_group_forward_msg", {"group_id": 1, "messages": []}, "f6")
    assert empty["status"] == "failed"
    assert len(qq.sent) == 4


# ----- configurable behaviour -------------------------------------------------------------------------


async def test_refuse_stall_and_length_limit(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq, max_message_chars=5)
    qq.refuse("send_private_msg", retcode=1200, message="too long", times=1)
    first = await mini.call("send_private_msg", {"user_id": 1, "message": "hi"}, "r1")
    assert (first["status"], first["retcode"], first["message"]) == ("failed", 1200, "too long")
    second = await mini.call("send_private_msg", {"user_id": 1, "message": "hi"}, "r2")
    assert second["status"] == "ok"

    long = await mini.call("send_group_msg", {"group_id": 2, "message": "123456"}, "l1")
    assert (long["status"], long["retcode"]) == ("failed", 1200)
    exact = await mini.call("send_group_msg", {"group_id": 2, "message": "12345"}, "l2")
    assert exact["status"] == "ok"
    assert qq.texts() == ["hi", "12345"]

    qq.refuse("*", retcode=1404, times=None)
    for i in range(3):
        assert (await mini.call("get_status", echo=f"a{i}"))["retcode"] == 1404
    qq.allow()
    assert (await mini.call("get_status", echo="a3"))["status"] == "ok"

    qq.stall("get_msg", times=1)
    await mini.send({"action": "get_msg", "params": {"message_id": 1}, "echo": "stalled"})
    call = await qq.wait_call("get_msg")
    assert call.echo == "stalled" and call.response is None
    # answers go out in arrival order, so once a later call is answered the stalled one never will be
    assert (await mini.call("get_login_info", echo="later"))["status"] == "ok"
    assert not mini.answered("stalled") and call.response is None
    follow = await mini.call("get_msg", {"message_id": 999999}, "unstalled")
    assert follow["retcode"] == 1200


async def test_answer_delay_answers_other_actions_first(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn = await linked(mini, make_qq, answer_delay=0.3)
    await mini.send(
        {"action": "send_private_msg", "params": {"user_id": 1, "message": "x"}, "echo": "slow"}
    )
    fast = await mini.call("get_login_info", echo="fast")
    slow = await mini.answer("slow")
    assert fast["status"] == slow["status"] == "ok"
    answers = [f["echo"] for f in conn.frames if isinstance(f, dict) and "status" in f]
    assert answers == ["fast", "slow"]
    call = qq.calls_of("send_private_msg")[0]
    assert call.answered_at is not None and call.answered_at - call.at >= 0.3
    assert qq.sent[0].at == call.at


async def test_report_self_and_custom_handlers(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq, report_self=True)
    r = await mini.call("send_group_msg", {"group_id": 30003, "message": "echoed"}, "e")
    echo = await mini.event(post_type="message_sent")
    assert echo["message_id"] == r["data"]["message_id"] and echo["group_id"] == 30003
    assert isinstance(parse_event(echo), MessageSentEvent)

    def emoji(params: dict[str, Any]) -> Any:
        if params.get("emoji_id") == "bad":
            raise ActionFailed(1400, "bad emoji")
        return None

    qq.on("set_msg_emoji_like", emoji)
    ok = await mini.call("set_msg_emoji_like", {"message_id": 1, "emoji_id": "76"}, "x1")
    assert ok["status"] == "ok"
    bad = await mini.call("set_msg_emoji_like", {"message_id": 1, "emoji_id": "bad"}, "x2")
    assert (bad["retcode"], bad["message"]) == (1400, "bad emoji")


# ----- ids --------------------------------------------------------------------------------------------


async def test_message_ids_include_negatives(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)  # default: alternating signs
    a = await qq.private(1, "a")
    b = await qq.private(1, "b")
    s = await mini.call("send_private_msg", {"user_id": 1, "message": "c"}, "c")
    ids = [a["message_id"], b["message_id"], s["data"]["message_id"]]
    assert any(i < 0 for i in ids) and any(i > 0 for i in ids) and len(set(ids)) == 3
    assert isinstance(parse_event(b), PrivateMessageEvent)
    explicit = await qq.private(1, "d", message_id=INT32_MIN)
    assert explicit["message_id"] == INT32_MIN
    with pytest.raises(ValueError):
        qq.private_event(1, "e", message_id=INT32_MAX + 1)

    wrap = QQImpl(mini.url, 2, "tok", ids="wrap")
    assert [wrap._ids.take() for _ in range(3)] == [INT32_MAX - 1, INT32_MAX, INT32_MIN]
    neg = QQImpl(mini.url, 2, "tok", ids="negative", first_id=100)
    assert [neg._ids.take() for _ in range(2)] == [-100, -101]
    pos = QQImpl(mini.url, 2, "tok", ids="positive")
    assert [pos._ids.take() for _ in range(2)] == [1, 2]


# ----- connection ends ----------------------------------------------------------------------------------


async def test_close_drop_and_reconnect(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn1 = await linked(mini, make_qq)
    await qq.drop()
    assert qq.closed.is_set() and not qq.connected.is_set()
    await mini.wait(lambda: conn1.ended, "the dropped connection to end")
    assert WSMsgType.CLOSE not in conn1.kinds  # no close frame
    assert conn1.close_code not in (1000, 1001)

    await qq.reconnect()
    conn2 = await mini.conn(2)
    await mini.wait(lambda: bool(conn2.frames), "a first frame")
    assert conn2.frames[0]["meta_event_type"] == "lifecycle"
    assert qq.connections == 2 and qq.connected.is_set()
    assert (await mini.call("get_status", echo="again"))["status"] == "ok"

    await qq.close()
    await mini.wait(lambda: conn2.ended, "the closed connection to end")
    assert WSMsgType.CLOSE in conn2.kinds and conn2.close_code == 1000
    with pytest.raises(RuntimeError):
        await qq.private(1, "not connected")


async def test_bridge_side_close_is_observed(mini: MiniBridge, make_qq: Any) -> None:
    qq, conn = await linked(mini, make_qq)
    await conn.ws.close(code=4001, message=b"duplicate self id")
    await qq.wait_closed()
    assert qq.close_code == 4001 and qq.close_reason == "duplicate self id"
    assert not qq.connected.is_set()
    await qq.connect()
    await mini.conn(2)


async def test_waits_time_out_with_a_description(mini: MiniBridge, make_qq: Any) -> None:
    qq, _ = await linked(mini, make_qq)
    with pytest.raises(TimeoutError, match="sent message"):
        await qq.wait_sent(1, timeout=0.05)
    with pytest.raises(TimeoutError):
        await qq.wait_closed(timeout=0.05)
