"""hub client ↔ bridge ↔ REAL bot frameworks (NoneBot2 + adapter-onebot, aiocqhttp, Koishi)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.users import MAPPED_FLOOR
from tests.conftest import ADMIN_CODE, Bridge
from tests.support.frameworks import FrameworkProcess, koishi_node
from tests.support.hub_client import HubClient, eventually

BOT = "10000"
ADMIN_QQ = "10001"  # also the NoneBot bot's superuser
WAIT = 30.0  # generous: a framework subprocess on a loaded 2-core machine
TOKEN = "fw-token"
# Koishi's first test may run `npm ci` (locked packages, tens of seconds on a slow network).
KOISHI_TIMEOUT = 420


def text(t: str) -> list[dict]:
    return [{"type": "text", "data": {"text": t}}]


@pytest.fixture
async def nonebot(tmp_path: Path) -> AsyncIterator[FrameworkProcess]:
    fw = FrameworkProcess("nonebot_bot.py", "/onebot/v11/ws", TOKEN, tmp_path / "nonebot")
    await fw.start()
    yield fw
    await fw.stop()


@pytest.fixture
async def aiocq(tmp_path: Path) -> AsyncIterator[FrameworkProcess]:
    fw = FrameworkProcess("aiocqhttp_bot.py", "/ws/", TOKEN, tmp_path / "aiocq")
    await fw.start()
    yield fw
    await fw.stop()


@pytest.fixture
async def koishi(tmp_path: Path) -> AsyncIterator[FrameworkProcess]:
    node = await koishi_node()
    fw = FrameworkProcess("koishi/bot.js", "/onebot", TOKEN, tmp_path / "koishi", program=node)
    await fw.start()
    yield fw
    await fw.stop()


def link(fw: FrameworkProcess, **kw) -> dict:
    return {
        "url": fw.url,
        "access_token": TOKEN,
        "reconnect_interval": 0.1,
        "max_reconnect_interval": 0.5,
        **kw,
    }


async def linked(bridge_factory, *fws: FrameworkProcess, **onebot) -> Bridge:
    b = await bridge_factory(onebot={"frameworks": [link(f) for f in fws], **onebot})
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(len(fws))
    return b


async def say(c: HubClient, t: str) -> dict:
    f = await c.request("onebot", "message", text(t), id=BOT)
    assert f["code"] == 0, f
    return f


def bot_texts(c: HubClient) -> list[str]:
    return [
        "".join(s["data"].get("text", "") for s in p["data"]["content"]["message"])
        for p in c.pushes("message")
        if p["data"]["id"] == BOT
    ]


async def test_login_lists_the_bot(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("u1")
    contacts = c.frames[-1]["data"]["contacts"]
    assert {"id": BOT, "kind": "onebot", "name": "MomoBridge"} in contacts


async def test_nonebot_echo_roundtrip(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("10086")
    tab = await b.client("10086")
    ack = await say(c, "hello [bot] & co")
    assert 0 < ack["data"]["message_id"] < 2**31
    push = await c.wait_push(lambda f: f["data"]["id"] == BOT)
    content = push["data"]["content"]
    assert content["message"] == text("echo: hello [bot] & co")
    assert content["sender"] == {"id": BOT, "name": "MomoBridge"}
    assert "stream_request_id" not in content
    await tab.wait_push(lambda f: f["data"]["content"]["message_id"] == content["message_id"])


async def test_command_lines_to_the_bot_reach_the_framework(
    bridge_factory, nonebot: FrameworkProcess
) -> None:
    """The bridge's commands are for characters and models: a framework has its own."""
    b = await linked(bridge_factory, nonebot)
    c = await b.client("10087")
    await say(c, "/help")
    push = await c.wait_push(lambda f: f["data"]["id"] == BOT)
    assert push["data"]["content"]["message"] == text("echo: /help")


async def test_admin_and_mapped_users(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    admin = await b.client("boss", ADMIN_CODE)
    named = await b.client("alice-non-numeric")
    await say(admin, "from admin")
    await say(named, "from alice")
    await admin.wait_push()
    await named.wait_push()
    assert bot_texts(admin) == ["echo: from admin"]
    assert bot_texts(named) == ["echo: from alice"]


async def test_forward_and_image_reply(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("20001")
    await say(c, "forward")
    await c.wait_for(lambda f: len(c.pushes("message")) >= 2)
    fwd, image = c.pushes("message")[:2]
    nodes = fwd["data"]["content"]["message"][0]
    assert nodes["type"] == "nodes"
    assert [n["message"] for n in nodes["data"]["messages"]] == [
        text("first node"),
        text("second node"),
    ]
    img = image["data"]["content"]["message"][0]
    assert img["type"] == "image" and img["data"]["url"].startswith("data:image/png;base64,iVBOR")


async def test_reply_segment_makes_nonebot_call_get_msg(
    bridge_factory, nonebot: FrameworkProcess
) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("20002")
    first = await say(c, "original words")
    await c.wait_push()
    f = await c.request(
        "onebot",
        "message",
        [
            {"type": "reply", "data": {"id": str(first["data"]["message_id"])}},
            {"type": "text", "data": {"text": "what about this"}},
        ],
        id=BOT,
    )
    assert f["code"] == 0
    await c.wait_for(lambda _: len(c.pushes("message")) >= 2)
    assert bot_texts(c)[1] == "you replied to: original words"


async def test_recall_both_ways(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("20003")
    ack = await say(c, "oops")
    await c.wait_push()
    mid = ack["data"]["message_id"]
    f = await c.request(
        "onebot", "del_message", {"id": BOT, "type": "message", "content": {"message_id": mid}}
    )
    assert f["code"] == 0
    await c.wait_for(lambda _: f"recalled {mid}" in bot_texts(c))
    # The framework recalls its own message: the hub gets del_msg.
    await say(c, "selfdestruct")
    gone = await c.wait_push(lambda p: p["type"] == "del_msg")
    temp = next(
        p for p in c.pushes("message") if p["data"]["content"]["message"] == text("temporary")
    )
    assert gone["data"]["content"]["message_id"] == temp["data"]["content"]["message_id"]
    row = await b.app.storage.messages.get(temp["data"]["content"]["message_id"])
    assert row is not None and row.deleted


async def test_group_mode(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot, user_message_type="group")
    c = await b.client("30001")
    await say(c, "in a group")
    await c.wait_push()
    assert bot_texts(c) == ["echo: in a group"]


async def test_aiocqhttp_echo(bridge_factory, aiocq: FrameworkProcess) -> None:
    b = await linked(bridge_factory, aiocq)
    c = await b.client("40001")
    await say(c, "hi aio")
    await c.wait_push()
    assert bot_texts(c) == ["aio: hi aio"]


async def test_two_frameworks_at_once(bridge_factory, nonebot, aiocq) -> None:
    b = await linked(bridge_factory, nonebot, aiocq)
    c = await b.client("40002")
    await say(c, "both")
    await c.wait_for(lambda _: len(bot_texts(c)) >= 2)
    assert sorted(bot_texts(c)) == ["aio: both", "echo: both"]


async def test_framework_restart_is_survived(bridge_factory, nonebot: FrameworkProcess) -> None:
    b = await linked(bridge_factory, nonebot)
    c = await b.client("50001")
    await say(c, "before")
    await c.wait_push()
    await nonebot.stop()
    target = b.app.frameworks
    await eventually(lambda: target.connected_count() == 0, what="the link to notice")
    f = await c.request("onebot", "message", text("while down"), id=BOT)
    assert f["code"] == 1 and f["data"]["error"] == "UNAVAILABLE"
    await nonebot.start()
    async with asyncio.timeout(WAIT):
        await target.wait_connected(1)
    await say(c, "after")
    await c.wait_for(lambda _: len(bot_texts(c)) >= 2)
    await c.request("system", "heartbeat", {})
    assert bot_texts(c) == ["echo: before", "echo: after"]


async def test_wrong_token_is_refused_and_hub_keeps_working(bridge_factory, nonebot) -> None:
    b = await bridge_factory(onebot={"frameworks": [link(nonebot, access_token="wrong")]})
    c = await b.client("60001")
    f = await c.request("onebot", "message", text("anyone?"), id=BOT)
    assert f["data"]["error"] == "UNAVAILABLE"
    link_obj = b.app.frameworks._links[0]
    await eventually(lambda: "HTTP 403" in link_obj.last_error, what="the refusal to be recorded")
    assert "access_token" in link_obj.last_error
    assert (
        "UNAVAILABLE"
        == (await c.request("onebot", "message", text("again"), id=BOT))["data"]["error"]
    )
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def test_nonebot_superuser_is_the_real_admin_only(bridge_factory, nonebot) -> None:
    # A hub user whose id is auth.admin_qq must not become NoneBot's superuser, nor receive
    # what the bot says to the real admin.
    b = await linked(bridge_factory, nonebot)
    admin = await b.client("boss", ADMIN_CODE)
    impostor = await b.client(ADMIN_QQ)
    await say(impostor, "whoami")
    await impostor.wait_push()
    [answer] = bot_texts(impostor)
    role, number = answer.split()
    assert role == "user" and int(number) >= MAPPED_FLOOR
    await say(admin, "whoami")
    await admin.wait_push()
    assert bot_texts(admin) == [f"superuser {ADMIN_QQ}"]
    await impostor.request("system", "heartbeat", {})
    assert bot_texts(impostor) == [answer]


@pytest.mark.timeout(KOISHI_TIMEOUT)
async def test_koishi_echo_roundtrip(bridge_factory, koishi: FrameworkProcess) -> None:
    b = await linked(bridge_factory, koishi)
    c = await b.client("70001")
    ack = await say(c, "hello <koishi> & co")
    push = await c.wait_push(lambda f: f["data"]["id"] == BOT)
    content = push["data"]["content"]
    assert content["message"] == text("koishi: hello <koishi> & co")
    assert content["sender"] == {"id": BOT, "name": "MomoBridge"}
    assert content["message_id"] != ack["data"]["message_id"]
    # A second user gets their own answer, not the first one's.
    other = await b.client("alice-koishi")
    await say(other, "second")
    await other.wait_push()
    assert bot_texts(other) == ["koishi: second"]
    await c.request("system", "heartbeat", {})
    assert bot_texts(c) == ["koishi: hello <koishi> & co"]


@pytest.mark.timeout(KOISHI_TIMEOUT)
async def test_koishi_wrong_token_is_refused(bridge_factory, koishi: FrameworkProcess) -> None:
    b = await bridge_factory(onebot={"frameworks": [link(koishi, access_token="wrong")]})
    link_obj = b.app.frameworks._links[0]
    await eventually(lambda: "HTTP 401" in link_obj.last_error, what="the refusal", timeout=WAIT)
    assert "access_token" in link_obj.last_error and link_obj.connects == 0
    c = await b.client("70002")
    f = await c.request("onebot", "message", text("anyone?"), id=BOT)
    assert f["data"]["error"] == "UNAVAILABLE" and "HTTP 401" in f["data"]["reason"]


@pytest.mark.timeout(KOISHI_TIMEOUT)
async def test_koishi_unknown_self_id_is_dropped_and_redialed_within_the_cap(
    bridge_factory, koishi: FrameworkProcess
) -> None:
    # Koishi accepts the upgrade, then closes 1008 for an account it does not know: a framework
    # that accepts and drops. The bridge keeps redialing, never waiting past reconnect_max.
    b = await bridge_factory(
        onebot={"frameworks": [link(koishi, self_id="12345", reconnect_max=0.3)]}
    )
    link_obj = b.app.frameworks._links[0]
    await eventually(
        lambda: "invalid x-self-id" in link_obj.last_error and link_obj.connects >= 4,
        what="repeated drops",
        timeout=WAIT,
    )
    assert "1008" in link_obj.last_error and link_obj.retry_in <= 0.3


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_web_client_socketio_to_nonebot(
    bridge_factory, nonebot: FrameworkProcess, transport: str
) -> None:
    """Today's web client (Socket.IO): the login says OneBot is on, a message to the bot is
    acked at once and the framework's reply is pushed to the tab."""
    from tests.support.sio_client import connect, is_login

    b = await bridge_factory(onebot={"frameworks": [link(nonebot)]}, miochat={"socketio": True})
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(1)
    c = await connect(b, transport, {"id": "1234500001", "token": ""})
    try:
        assert (await c.wait_for(is_login))["data"]["onebot_enabled"] is True
        await c.send(
            {
                "request_id": "sio-1",
                "protocol": "onebot",
                "type": "message",
                "id": BOT,
                "data": text("over socket.io"),
                "metaData": {"contactorId": "1234500001"},
            }
        )
        ack = await c.wait_for(lambda f: f.get("request_id") == "sio-1")
        assert ack["code"] == 0 and ack["data"]["message_id"] > 0
        push = await c.wait_for(
            lambda f: f.get("protocol") == "onebot" and f["data"].get("id") == BOT
        )
        assert push["data"]["content"]["message"] == text("echo: over socket.io")
        # The client's OneBot contact has an id of its own making: it means the bot.
        await c.send(
            {
                "request_id": "sio-2",
                "protocol": "onebot",
                "type": "message",
                "id": "5550001234",
                "data": text("to my onebot contact"),
                "metaData": {"contactorId": "1234500001"},
            }
        )
        assert (await c.wait_for(lambda f: f.get("request_id") == "sio-2"))["code"] == 0
        await c.wait_for(
            lambda f: (
                f.get("protocol") == "onebot"
                and f["data"]["content"]["message"] == text("echo: to my onebot contact")
            )
        )
    finally:
        await c.close()
