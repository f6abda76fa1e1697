"""hub client ↔ bridge ↔ REAL bot frameworks (NoneBot2 + adapter-onebot, aiocqhttp)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_CODE, Bridge
from tests.support.frameworks import FrameworkProcess
from tests.support.hub_client import HubClient, eventually

BOT = "10000"
WAIT = 30.0  # generous: a framework subprocess on a loaded 2-core machine
TOKEN = "fw-token"


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
