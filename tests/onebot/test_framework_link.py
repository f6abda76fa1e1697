"""The framework link against a raw WebSocket peer that plays the framework, frame by frame."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.fake_framework import FakeFramework, linked
from tests.support.hub_client import eventually

BOT = "10000"


async def test_handshake_lifecycle_first_and_heartbeats(bridge_factory, fw: FakeFramework) -> None:
    await linked(bridge_factory, fw)
    h = {k.lower(): v for k, v in fw.headers[0].items()}
    assert h["x-self-id"] == BOT and h["x-client-role"] == "Universal"
    assert h["authorization"] == "Bearer tok"
    first = await fw.wait(lambda f: True)
    assert first["post_type"] == "meta_event" and first["meta_event_type"] == "lifecycle"
    assert first["sub_type"] == "connect" and first["self_id"] == int(BOT)
    beat = await fw.wait(lambda f: f.get("meta_event_type") == "heartbeat")
    assert beat["status"] == {"online": True, "good": True} and beat["interval"] == 200


async def test_no_authorization_header_without_token(bridge_factory) -> None:
    f = FakeFramework(token="")
    try:
        await linked(bridge_factory, f)
        assert "authorization" not in {k.lower() for k in f.headers[0]}
    finally:
        await f.stop()


async def test_message_event_fields_nonebot_requires(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("12345")
    ack = await c.request(
        "onebot", "message", [{"type": "text", "data": {"text": "a & [b], c"}}], id=BOT
    )
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    assert ev["message_type"] == "private" and ev["sub_type"] == "friend"
    assert ev["user_id"] == 12345 and ev["message_id"] == ack["data"]["message_id"]
    assert ev["raw_message"] == "a &amp; &#91;b&#93;, c" and ev["font"] == 0
    assert ev["sender"]["user_id"] == 12345 and isinstance(ev["time"], int)
    assert ev["time"] < 10**11  # seconds, not milliseconds


@pytest.mark.parametrize("echo", ["7", 7, {"seq": 1, "x": [1]}, None])
async def test_echo_comes_back_unchanged(bridge_factory, fw: FakeFramework, echo: Any) -> None:
    await linked(bridge_factory, fw)
    r = await fw.call("get_login_info", {}, echo=echo)
    assert r["echo"] == echo and type(r["echo"]) is type(echo)
    assert r["status"] == "ok" and r["data"]["user_id"] == int(BOT)


async def test_state_queries(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("777")
    await c.request("onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=BOT)
    assert (await fw.call("get_status", echo=1))["data"]["online"] is True
    assert (await fw.call("get_version_info", echo=2))["data"]["protocol_version"] == "v11"
    friends = (await fw.call("get_friend_list", echo=3))["data"]
    assert {"user_id": 777, "nickname": "777", "remark": ""} in friends
    assert (await fw.call("get_stranger_info", {"user_id": 777}, echo=4))["data"][
        "nickname"
    ] == "777"
    assert (await fw.call("can_send_image", echo=5))["data"] == {"yes": True}
    assert (await fw.call("get_group_list", echo=6))["data"] == []
    got = (await fw.call("get_msg", {"message_id": 1}, echo=7))["data"]
    assert (
        got["message"] == [{"type": "text", "data": {"text": "hi"}}]
        and got["sender"]["user_id"] == 777
    )


@pytest.mark.parametrize(
    ("action", "params", "retcode", "words"),
    [
        ("send_private_msg", {"user_id": "abc", "message": "x"}, 1400, "user_id"),
        ("send_private_msg", {"user_id": 1, "message": []}, 100, "empty"),
        ("send_private_msg", {"user_id": 1, "message": ""}, 100, "empty"),
        ("send_private_forward_msg", {"user_id": 1, "messages": []}, 100, "empty"),
        ("send_private_msg", {"user_id": 424242, "message": "x"}, 100, "unknown user_id"),
        ("send_group_msg", {"group_id": 5, "message": "x"}, 100, "unknown user_id"),
        ("get_msg", {"message_id": 99999}, 100, "unknown message_id"),
        ("delete_msg", {"message_id": -5}, 100, "unknown message_id"),
        ("get_forward_msg", {"id": "12"}, 100, "unknown message_id"),
        ("get_group_info", {"group_id": 1}, 100, "private mode"),
        ("send_msg", {"message": "x"}, 1400, "user_id"),
        ("get_guild_service_profile", {}, 1404, "unsupported"),
        ("set_group_ban", {"group_id": 1}, 1404, "unsupported"),
    ],
)
async def test_bad_actions_fail_clearly(bridge_factory, fw, action, params, retcode, words) -> None:
    await linked(bridge_factory, fw)
    r = await fw.call(action, params, echo=f"{action}-{retcode}")
    assert r["status"] == "failed" and r["retcode"] == retcode
    assert words in r["message"] or words in r.get("wording", "")


async def test_malformed_frames_keep_the_link(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(bridge_factory, fw)
    await fw.call(None, raw="not json")
    await fw.call(None, raw="[1,2]")
    r = await fw.call(None, raw=json.dumps({"params": {}, "echo": "no-action"}))
    r = await fw.wait(lambda f: f.get("echo") == "no-action")
    assert r["retcode"] == 1400
    r = await fw.call("get_login_info", {}, echo="still-alive")
    assert r["status"] == "ok"
    r = await fw.call("get_status", "not-an-object", echo="bad-params")
    assert r["retcode"] == 1400
    assert b.app.frameworks.connected_count() == 1 and len(fw.connections) == 1


async def test_framework_closing_mid_action_and_single_reconnect(bridge_factory, fw) -> None:
    b = await linked(bridge_factory, fw)
    ws = fw.connections[0]
    await ws.send(json.dumps({"action": "get_friend_list", "echo": 1}))
    await ws.close()
    second = await fw.wait_connections(2)
    assert second is not ws
    await b.app.frameworks.wait_connected(1)
    c = await b.client("888")
    f = await c.request("onebot", "message", [{"type": "text", "data": {"text": "after"}}], id=BOT)
    assert f["code"] == 0
    assert fw.max_concurrent == 1  # never two connections to one framework


async def test_handshake_never_answered(bridge_factory) -> None:
    silent_clients: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        silent_clients.append(w)  # accept the TCP connection and say nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        b = await bridge_factory(
            onebot={
                "frameworks": [
                    {
                        "url": f"ws://127.0.0.1:{port}/ws",
                        "connect_timeout": 0.3,
                        "reconnect_interval": 0.05,
                        "max_reconnect_interval": 0.1,
                    }
                ]
            }
        )
        link = b.app.frameworks._links[0]
        await eventually(
            lambda: "Timeout" in link.last_error and len(silent_clients) >= 2,
            what="a timed-out handshake followed by a retry",
        )
        c = await b.client("999")
        f = await c.request("onebot", "message", [{"type": "text", "data": {"text": "x"}}], id=BOT)
        assert f["data"]["error"] == "UNAVAILABLE" and "Timeout" in f["data"]["reason"]
        assert (await c.request("system", "heartbeat", {}))["code"] == 0
    finally:
        for w in silent_clients:
            w.close()
        server.close()
        await server.wait_closed()


async def test_group_mode_events_and_recall(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(
        bridge_factory,
        fw,
    )
    b.config.onebot.user_message_type = "group"
    c = await b.client("4321")
    ack = await c.request("onebot", "message", [{"type": "text", "data": {"text": "yo"}}], id=BOT)
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    assert ev["message_type"] == "group" and ev["group_id"] == 4321
    assert ev["message"][0] == {"type": "at", "data": {"qq": BOT}}
    r = await fw.call(
        "send_group_msg", {"group_id": 4321, "message": "[CQ:at,qq=4321] hey"}, echo="g"
    )
    assert r["status"] == "ok"
    push = await c.wait_push()
    assert push["data"]["content"]["message"][-1] == {"type": "text", "data": {"text": " hey"}}
    members = (await fw.call("get_group_member_list", {"group_id": 4321}, echo="m"))["data"]
    assert {m["user_id"] for m in members} == {4321, int(BOT)}
    mid = ack["data"]["message_id"]
    await c.request("onebot", "del_message", {"id": BOT, "content": {"message_id": mid}})
    notice = await fw.wait(lambda f: f.get("notice_type") == "group_recall")
    assert notice["message_id"] == mid and notice["group_id"] == 4321


async def test_quick_operation_reply(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("5555")
    await c.request("onebot", "message", [{"type": "text", "data": {"text": "ping"}}], id=BOT)
    ev = await fw.wait(lambda f: f.get("post_type") == "message")
    r = await fw.call(
        ".handle_quick_operation", {"context": ev, "operation": {"reply": "pong"}}, echo="q"
    )
    assert r["status"] == "ok"
    push = await c.wait_push()
    assert push["data"]["content"]["message"] == [{"type": "text", "data": {"text": "pong"}}]


async def test_hub_forward_resolves_with_get_forward_msg(bridge_factory, fw: FakeFramework) -> None:
    b = await linked(bridge_factory, fw)
    c = await b.client("6006")
    first = await c.request(
        "onebot", "message", [{"type": "text", "data": {"text": "one"}}], id=BOT
    )
    ack = await c.request(
        "onebot",
        "forward_msg",
        {
            "id": BOT,
            "type": "forward_msg",
            "content": [
                {
                    "message_id": first["data"]["message_id"],
                    "message": [{"type": "text", "data": {"text": "one"}}],
                },
                {"message_id": 424242, "message": [{"type": "text", "data": {"text": "two"}}]},
            ],
        },
    )
    assert ack["code"] == 0
    ev = await fw.wait(
        lambda f: f.get("post_type") == "message" and f["message"][0]["type"] == "forward"
    )
    fid = ev["message"][0]["data"]["id"]
    assert fid == str(ack["data"]["message_id"])
    nodes = (await fw.call("get_forward_msg", {"id": fid}, echo="fwd"))["data"]["messages"]
    assert [n["data"]["content"] for n in nodes] == [
        [{"type": "text", "data": {"text": "one"}}],
        [{"type": "text", "data": {"text": "two"}}],
    ]
    assert all(n["type"] == "node" for n in nodes)
