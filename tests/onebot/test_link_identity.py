"""Who a hub user is on the framework side: only the real admin is auth.admin_qq, nobody else is
auth.bot_qq or a link's self_id, and replies to a number reach exactly whom it stands for."""

from __future__ import annotations

from typing import Any

from storage.users import MAPPED_FLOOR
from tests.conftest import ADMIN_CODE
from tests.support.fake_framework import FakeFramework, linked
from tests.support.hub_client import HubClient
from tests.support.link_helpers import say, text, texts

BOT = "10000"
ADMIN_QQ = 10001


async def event_for(fw: FakeFramework, t: str) -> dict[str, Any]:
    # By its words, whatever comes before them (group mode puts an @bot first).
    return await fw.wait(lambda f: f.get("post_type") == "message" and f["message"][-1:] == text(t))


async def settled(*clients: HubClient) -> None:
    # A round trip on each connection: pushes queued before it have arrived.
    for c in clients:
        assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def test_a_user_whose_id_is_admin_qq_is_not_the_admin(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    boss = await b.client("boss", ADMIN_CODE)
    impostor = await b.client(str(ADMIN_QQ))  # the admin's number as a plain user id
    await say(impostor, "I am the admin")
    ev = await event_for(fw, "I am the admin")
    number = ev["user_id"]
    assert number != ADMIN_QQ and number >= MAPPED_FLOOR
    assert ev["sender"]["user_id"] == number
    # The real admin still appears as admin_qq.
    await say(boss, "really me")
    assert (await event_for(fw, "really me"))["user_id"] == ADMIN_QQ
    # A reply to admin_qq reaches the admin only; a reply to the mapped number, its user only.
    to_admin = await fw.call("send_private_msg", {"user_id": ADMIN_QQ, "message": "boss"}, echo=1)
    to_user = await fw.call("send_private_msg", {"user_id": number, "message": "you"}, echo=2)
    assert to_admin["status"] == to_user["status"] == "ok"
    await boss.wait_push()
    await impostor.wait_push()
    await settled(boss, impostor)
    assert texts(boss) == ["boss"]
    assert texts(impostor) == ["you"]
    # The state queries agree: admin_qq is the admin, the impostor is their mapped number.
    friends = {
        f["nickname"]: f["user_id"] for f in (await fw.call("get_friend_list", echo=3))["data"]
    }
    assert friends == {"boss": ADMIN_QQ, str(ADMIN_QQ): number}
    who = (await fw.call("get_stranger_info", {"user_id": ADMIN_QQ}, echo=4))["data"]
    assert who["nickname"] == "boss"
    got = (await fw.call("get_msg", {"message_id": ev["message_id"]}, echo=5))["data"]
    assert got["sender"]["user_id"] == number


async def test_a_user_whose_id_is_bot_qq_is_not_the_bot(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    impostor = await b.client(BOT)
    await say(impostor, "I am the bot")
    ev = await event_for(fw, "I am the bot")
    assert ev["user_id"] != int(BOT) and ev["user_id"] >= MAPPED_FLOOR
    r = await fw.call("send_private_msg", {"user_id": int(BOT), "message": "to myself"}, echo=1)
    assert r["status"] == "failed" and r["retcode"] == 100 and "bot account" in r["message"]
    r = await fw.call("send_private_msg", {"user_id": ev["user_id"], "message": "hi"}, echo=2)
    assert r["status"] == "ok"
    await impostor.wait_push()
    await settled(impostor)
    assert texts(impostor) == ["hi"]


async def test_admin_qq_without_an_admin_reaches_nobody(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    impostor = await b.client(str(ADMIN_QQ))
    await say(impostor, "anyone?")
    r = await fw.call("send_private_msg", {"user_id": ADMIN_QQ, "message": "secret"}, echo=1)
    assert r["status"] == "failed" and r["retcode"] == 100 and "admin" in r["message"]
    await settled(impostor)
    assert texts(impostor) == []


async def test_a_link_self_id_is_reserved_too(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw, self_id="20002")
    impostor = await b.client("20002")
    await say(impostor, "who am I")
    ev = await event_for(fw, "who am I")
    assert ev["self_id"] == 20002 and ev["user_id"] not in (20002, int(BOT), ADMIN_QQ)
    r = await fw.call("send_private_msg", {"user_id": 20002, "message": "x"}, echo=1)
    assert r["status"] == "failed" and r["retcode"] == 100


async def test_group_mode_impostor_is_a_member_with_a_mapped_number(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    b.config.onebot.user_message_type = "group"
    boss = await b.client("boss", ADMIN_CODE)
    impostor = await b.client(str(ADMIN_QQ))
    await say(impostor, "in my group")
    ev = await event_for(fw, "in my group")
    assert ev["message"][0] == {"type": "at", "data": {"qq": BOT}}
    assert ev["user_id"] >= MAPPED_FLOOR and ev["group_id"] >= MAPPED_FLOOR
    assert ev["sender"]["role"] == "member"
    members = (await fw.call("get_group_member_list", {"group_id": ev["group_id"]}, echo=1))["data"]
    assert {m["user_id"]: m["role"] for m in members} == {
        ev["user_id"]: "member",
        int(BOT): "owner",
    }
    r = await fw.call("send_group_msg", {"group_id": ev["group_id"], "message": "g"}, echo=2)
    assert r["status"] == "ok"
    await impostor.wait_push()
    await settled(boss, impostor)
    assert texts(impostor) == ["g"] and texts(boss) == []
