"""Framework link behaviour against a raw framework peer: ids, images, recall, outbox, auth logs."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from tests.conftest import ADMIN_CODE
from tests.support.fake_framework import WAIT, DeafFramework, linked
from tests.support.hub_client import eventually
from tests.support.link_helpers import say, text

BOT = "10000"
ADMIN_QQ = 10001
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


async def test_message_ids_are_int32_unique_and_map_both_ways(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("31337")
    sent = [await say(c, f"in {i}") for i in range(3)]
    replies = [
        (await fw.call("send_private_msg", {"user_id": 31337, "message": f"out {i}"}, echo=i))[
            "data"
        ]["message_id"]
        for i in range(3)
    ]
    ids = sent + replies
    assert len(set(ids)) == 6 and all(isinstance(i, int) and 0 < i < 2**31 for i in ids)
    events = [f for f in fw.frames if f.get("post_type") == "message"]
    assert [e["message_id"] for e in events] == sent
    # The same id names the same message in both directions: the hub's push and get_msg.
    await c.wait_for(lambda _: len(c.pushes("message")) >= 3)
    assert [p["data"]["content"]["message_id"] for p in c.pushes("message")] == replies
    for mid, want, sender in [(sent[1], "in 1", 31337), (replies[2], "out 2", int(BOT))]:
        got = (await fw.call("get_msg", {"message_id": str(mid)}, echo=f"g{mid}"))["data"]
        assert got["message_id"] == mid and got["message"] == text(want)
        assert got["sender"]["user_id"] == sender and got["message_type"] == "private"


async def test_admin_appears_as_admin_qq_and_is_answered_there(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    admin = await b.client("boss", ADMIN_CODE)
    await say(admin, "hello from the owner")
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    assert ev["user_id"] == ADMIN_QQ and ev["sender"]["user_id"] == ADMIN_QQ
    r = await fw.call("send_msg", {"user_id": ADMIN_QQ, "message": "yes boss"}, echo="a")
    assert r["status"] == "ok"
    push = await admin.wait_push()
    assert push["data"]["content"]["message"] == text("yes boss")
    assert push["data"]["content"]["sender"] == {"id": BOT, "name": "MomoBridge"}


async def test_reply_to_an_offline_user_waits_in_the_outbox(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("4242")
    await say(c, "answer me later")
    await c.close()
    r = await fw.call("send_private_msg", {"user_id": 4242, "message": "later"}, echo="late")
    assert r["status"] == "ok"
    again = await b.client("4242")
    push = await again.wait_push()
    assert push["data"]["content"]["message"] == text("later")
    assert push["data"]["content"]["message_id"] == r["data"]["message_id"]


async def test_framework_images_reach_the_hub_usable_and_local_files_are_refused(
    bridge_factory, fw
) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("5151")
    await say(c, "pictures please")
    message = [
        {"type": "image", "data": {"file": f"base64://{PNG}"}},
        {"type": "image", "data": {"file": "https://example.com/cat.jpg"}},
        {"type": "image", "data": {"file": "file:///etc/passwd"}},
    ]
    with structlog.testing.capture_logs() as logs:
        r = await fw.call("send_private_msg", {"user_id": 5151, "message": message}, echo="img")
    assert r["status"] == "ok"
    segs = (await c.wait_push())["data"]["content"]["message"]
    assert segs[0]["data"]["url"] == f"data:image/png;base64,{PNG}"
    assert segs[1]["data"]["url"] == "https://example.com/cat.jpg"
    assert segs[2] == {"type": "text", "data": {"text": "[image unavailable]"}}
    refused = [e for e in logs if e["event"] == "onebot.image_refused"]
    assert len(refused) == 1 and "local file" in refused[0]["reason"]
    assert "passwd" not in str(logs)


async def test_forwards_both_ways_with_senders(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("6116")
    first = await say(c, "quoted line")
    # Framework → hub: nodes by content and by reference to a stored message.
    r = await fw.call(
        "send_forward_msg",
        {
            "user_id": 6116,
            "messages": [
                {"type": "node", "data": {"user_id": "42", "nickname": "n", "content": "made up"}},
                {"type": "node", "data": {"id": str(first)}},
            ],
        },
        echo="f",
    )
    assert r["status"] == "ok"
    nodes = (await c.wait_push())["data"]["content"]["message"]
    assert nodes[0]["type"] == "nodes" and len(nodes) == 1
    msgs = nodes[0]["data"]["messages"]
    assert [m["message"] for m in msgs] == [text("made up"), text("quoted line")]
    assert msgs[0]["sender"] == {"id": "42", "name": "n"}
    # Hub → framework: a forward event whose id get_forward_msg resolves, senders included.
    ack = await c.request(
        "onebot",
        "forward_msg",
        {"id": BOT, "type": "forward_msg", "content": [{"message_id": first, "message": []}]},
    )
    assert ack["code"] == 0
    ev = await fw.wait(
        lambda f: f.get("post_type") == "message" and f["message"][0]["type"] == "forward"
    )
    assert ev["raw_message"] == f"[CQ:forward,id={ack['data']['message_id']}]"
    got = (await fw.call("get_forward_msg", {"message_id": ack["data"]["message_id"]}, echo="g"))[
        "data"
    ]
    [node] = got["messages"]
    assert node["data"]["content"] == text("quoted line")
    assert node["sender"] == {"user_id": 6116, "nickname": "6116"} and node["data"]["user_id"] == (
        "6116"
    )
    assert got["message"] == got["messages"]


async def test_recall_both_ways_in_private_mode(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("7117")
    mid = await say(c, "regret")
    f = await c.request(
        "onebot", "del_message", {"id": BOT, "type": "message", "content": {"message_id": mid}}
    )
    assert f["code"] == 0
    notice = await fw.wait(lambda f: f.get("notice_type") == "friend_recall")
    assert notice["user_id"] == 7117 and notice["message_id"] == mid
    assert notice["post_type"] == "notice" and notice["self_id"] == int(BOT)
    r = await fw.call("send_private_msg", {"user_id": 7117, "message": "oops"}, echo="s")
    out = r["data"]["message_id"]
    await c.wait_push(lambda p: p["type"] == "message")
    d = await fw.call("delete_msg", {"message_id": out}, echo="d")
    assert d["status"] == "ok"
    gone = await c.wait_push(lambda p: p["type"] == "del_msg")
    assert gone["data"]["content"]["message_id"] == out
    assert (await b.app.storage.messages.get(out)).deleted
    # Recalled once is recalled: a second delete_msg succeeds without a second push.
    assert (await fw.call("delete_msg", {"message_id": out}, echo="d2"))["status"] == "ok"
    await c.request("system", "heartbeat", {})
    assert len(c.pushes("del_msg")) == 1


async def test_wrong_token_is_logged_without_the_token_and_backs_off(bridge_factory, fw) -> None:
    url = await fw.start()
    with structlog.testing.capture_logs() as logs:
        b = await bridge_factory(
            onebot={
                "frameworks": [
                    {
                        "url": url + "?access_token=leaky",
                        "access_token": "not-the-token",
                        "reconnect_interval": 0.02,
                        "max_reconnect_interval": 0.08,
                    }
                ]
            }
        )

        def downs() -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == "onebot.link_down"]

        await eventually(lambda: len(downs()) >= 4, what="four refused attempts")
    assert all("HTTP 403" in e["reason"] and "access_token" in e["reason"] for e in downs())
    delays = [e["retry_in"] for e in downs()[:4]]
    assert delays[2] > delays[0]  # doubling, even with ±20 % jitter
    assert all(d <= 0.08 * 1.2 + 0.01 for d in delays)
    assert "not-the-token" not in str(logs) and "leaky" not in str(logs)
    assert b.app.frameworks.connected_count() == 0
    c = await b.client("8118")
    f = await c.request("onebot", "message", text("anyone?"), id=BOT)
    assert f["data"]["error"] == "UNAVAILABLE" and "HTTP 403" in f["data"]["reason"]
    assert "leaky" not in f["data"]["reason"]
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    assert await b.app.storage.messages.get(1) is None  # refused messages are not stored


async def test_duplicate_framework_entries_make_one_connection(bridge_factory, fw) -> None:
    url = await fw.start()
    entry = {"url": url, "access_token": "tok", "reconnect_interval": 0.05}
    b = await bridge_factory(onebot={"frameworks": [entry, dict(entry)]})
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(1)
    c = await b.client("9119")
    await say(c, "once")
    await fw.wait(lambda f: f.get("post_type") == "message")
    await c.request("system", "heartbeat", {})
    assert len(fw.connections) == 1
    assert len([f for f in fw.frames if f.get("post_type") == "message"]) == 1


async def test_close_ends_the_connection_and_every_task(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    target = b.app.frameworks
    links = list(target._links)
    await b.close_clients()
    await b.app.stop()
    await fw.wait_closed(1)
    assert fw.close_codes == [1001]
    assert target.connected_count() == 0
    assert all(len(link._tasks) == 0 for link in links)
    # Nothing redials after close.
    assert len(fw.connections) == 1


async def test_event_to_a_framework_that_vanished_is_not_fatal(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("1221")
    await fw.stop()
    await eventually(lambda: b.app.frameworks.connected_count() == 0, what="the link to drop")
    f = await c.request("onebot", "message", text("gone"), id=BOT)
    assert f["data"]["error"] == "UNAVAILABLE"
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def test_a_link_lost_between_check_and_send_fails_the_message(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("1331")
    link = b.app.frameworks._links[0]

    async def lost(_event: dict[str, Any]) -> bool:
        return False  # as if the socket died right after check_available passed

    link.send_event = lost  # type: ignore[method-assign]
    f = await c.request("onebot", "message", text("into the void"), id=BOT)
    assert f["code"] == 1 and f["data"]["error"] == "UNAVAILABLE"
    row = await b.app.storage.messages.get(1)
    assert row is not None and row.deleted  # withdrawn: a resend is not a duplicate


async def test_recall_while_no_framework_is_connected(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("1441")
    mid = await say(c, "take it back later")
    await fw.stop()
    await eventually(lambda: b.app.frameworks.connected_count() == 0, what="the link to drop")
    with structlog.testing.capture_logs() as logs:
        f = await c.request(
            "onebot", "del_message", {"id": BOT, "type": "message", "content": {"message_id": mid}}
        )
    assert f["code"] == 0  # the hub still recalls it
    assert (await b.app.storage.messages.get(mid)).deleted
    assert any(e["event"] == "recall.upstream_failed" for e in logs)


async def test_group_mode_admin_is_the_group_owner(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    b.config.onebot.user_message_type = "group"
    admin = await b.client("boss", ADMIN_CODE)
    await say(admin, "meeting")
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    group = ev["group_id"]
    assert ev["user_id"] == ADMIN_QQ and ev["sender"]["role"] == "owner"
    assert ev["message"][:2] == [
        {"type": "at", "data": {"qq": BOT}},
        {"type": "text", "data": {"text": " "}},
    ]
    assert ev["raw_message"] == f"[CQ:at,qq={BOT}] meeting"
    members = (await fw.call("get_group_member_list", {"group_id": group}, echo="m"))["data"]
    roles = {m["user_id"]: m["role"] for m in members}
    assert roles == {ADMIN_QQ: "owner", int(BOT): "admin"}
    info = (await fw.call("get_group_info", {"group_id": group}, echo="i"))["data"]
    assert info["group_id"] == group and info["member_count"] == 2
    assert (await fw.call("get_group_list", echo="l"))["data"][0]["group_id"] == group
    r = await fw.call("send_group_msg", {"group_id": group, "message": "noted"}, echo="r")
    assert r["status"] == "ok"
    assert (await admin.wait_push())["data"]["content"]["message"] == text("noted")
    bad = await fw.call("get_group_member_info", {"group_id": group, "user_id": 5}, echo="b")
    assert bad["retcode"] == 100 and "not in group" in bad["message"]


async def test_a_framework_that_stops_reading_is_dropped_and_redialed(bridge_factory) -> None:
    deaf = DeafFramework()
    url = await deaf.start()
    try:
        b = await bridge_factory(
            onebot={"frameworks": [{"url": url, "action_timeout": 0.3, "reconnect_interval": 0.05}]}
        )
        target = b.app.frameworks
        async with asyncio.timeout(WAIT):
            await target.wait_connected(1)
        link = target._links[0]
        blob = {"post_type": "notice", "notice_type": "test", "pad": "x" * 256 * 1024}
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(WAIT):
                # Each send fits in the socket buffers until they are full; then it gives up
                # after action_timeout instead of waiting forever.
                while await link.send_event(blob):
                    pass
            await deaf.wait_accepted(2)  # dropped and dialed again
        assert any(e["event"] == "onebot.link_stuck" for e in logs)
        assert "stopped reading" in link.last_error
    finally:
        await deaf.stop()
