"""hub client ↔ bridge ↔ MomoHub sandbox, all over real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.hub_client import HubClient, eventually

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
KURO = next(c.id for c in DEMO_CHARACTERS if c.name == "Kuro")


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


class Sandbox:
    """Server-side view of the embedded sandbox: its control endpoints and stats."""

    def __init__(self, bridge: Bridge) -> None:
        assert bridge.app.sandbox is not None
        self.base = bridge.app.sandbox.base_url

    async def call(self, method: str, path: str, json: Any = None) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.base + path, json=json) as r:
                assert r.status < 300, await r.text()
                return await r.json() if r.content_type == "application/json" else None

    async def fault(self, **rule: Any) -> None:
        await self.call("POST", "/_sandbox/faults", rule)

    async def stats(self) -> dict[str, Any]:
        return await self.call("GET", "/_sandbox/stats")


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


async def send(c: HubClient, contact: str, t: str) -> tuple[dict, list[dict]]:
    rid = await c.send("onebot", "message", text(t), id=contact)
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack
    return ack, await c.stream(rid)


def reply_text(frames: list[dict]) -> str:
    return "".join(f["data"]["chunk"] for f in frames if f.get("message") == "update")


def chat_messages(bridge: Bridge, user: str, character: str) -> Any:
    async def get() -> list[Any]:
        chat = await bridge.app.storage.conversations.get(user, character, "default")
        assert chat is not None
        return await bridge.app.momohub.list_messages(chat, page=1, limit=50)

    return get()


async def test_login_lists_characters_with_default(hub: Bridge) -> None:
    c = await hub.client("ann")
    data = c.frames[-1]["data"]
    contacts = {x["id"]: x for x in data["contacts"]}
    assert contacts[MOMO]["kind"] == "character" and contacts[MOMO]["name"] == "Momo"
    assert contacts[MOMO]["default"] is True and "default" not in contacts[KURO]
    assert contacts[MOMO]["bio"]
    owners = {g["owner"]: g["models"] for g in data["models"]}
    assert f"character:{MOMO}" in owners["momohub"]


async def test_message_streams_then_arrives_as_push(hub: Bridge) -> None:
    c = await hub.client("bea")
    other_tab = await hub.client("bea")
    ack, frames = await send(c, MOMO, "hello there\nsecond line")
    mid = ack["data"]["message_id"]
    assert isinstance(mid, int) and 0 < mid < 2**31
    kinds = [f["message"] for f in frames]
    assert kinds[0] == "pending" and kinds[-1] == "completed" and set(kinds[1:-1]) == {"update"}
    assert [f["data"]["seq"] for f in frames[1:-1]] == list(range(len(frames) - 2))
    assert reply_text(frames) == "Momo: you said hello there\nsecond line"
    assert frames[-1]["data"]["finish_reason"] == "stop"
    push = await c.wait_push(
        lambda f: f["data"]["content"].get("stream_request_id") == ack["request_id"]
    )
    content = push["data"]["content"]
    assert push["data"]["id"] == MOMO
    assert content["message"] == text("Momo: you said hello there\nsecond line")
    assert content["sender"] == {"id": MOMO, "name": "Momo"}
    assert content["message_id"] > mid
    # The other tab sees the finished reply too.
    p2 = await other_tab.wait_push()
    assert p2["data"]["content"]["message_id"] == content["message_id"]
    # MomoHub holds both messages, text intact.
    msgs = await chat_messages(hub, "bea", MOMO)
    assert [(m.senderType, m.text) for m in msgs] == [
        ("USER", "hello there\nsecond line"),
        ("CHARACTER", "Momo: you said hello there\nsecond line"),
    ]


async def test_character_alias_and_document_shape(hub: Bridge) -> None:
    c = await hub.client("cid")
    rid = await c.send(
        "onebot",
        "message",
        {"id": f"character:{MOMO}", "type": "message", "data": {"message": text("hi")}},
    )
    assert (await c.reply(rid))["code"] == 0
    frames = await c.stream(rid)
    assert reply_text(frames) == "Momo: you said hi"
    push = await c.wait_push()
    assert push["data"]["id"] == MOMO  # one canonical spelling


async def test_tool_calls_become_tool_call_updates(hub: Bridge) -> None:
    c = await hub.client("dan")
    _, frames = await send(c, MOMO, "what time is it /tool")
    calls = [
        f["data"]["tool_call"]
        for f in frames
        if f.get("message") == "update" and f["data"]["tool_call"]
    ]
    assert [x["action"] for x in calls] == ["started", "running", "finished"]
    assert all(x["name"] == "clock" for x in calls)
    assert calls[0]["params"] == '{"tz": "UTC"}'
    assert calls[-1]["result"]
    assert reply_text(frames) == "Momo: you said what time is it /tool"


async def test_sends_to_one_chat_are_serialized(hub: Bridge) -> None:
    c = await hub.client("eve")
    rids = [await c.send("onebot", "message", text(f"msg {i}"), id=MOMO) for i in range(3)]
    results = [await c.stream(r) for r in rids]
    assert [reply_text(f) for f in results] == [f"Momo: you said msg {i}" for i in range(3)]
    msgs = await chat_messages(hub, "eve", MOMO)
    assert [m.text for m in msgs if m.senderType == "USER"] == ["msg 0", "msg 1", "msg 2"]


async def test_users_get_separate_chats(hub: Bridge) -> None:
    a = await hub.client("fay")
    b = await hub.client("gus")
    await asyncio.gather(send(a, MOMO, "from fay"), send(b, MOMO, "from gus"))
    for user in ("fay", "gus"):
        texts = [m.text for m in await chat_messages(hub, user, MOMO)]
        assert texts == [f"from {user}", f"Momo: you said from {user}"]
    await a.wait_push()
    await b.wait_push()
    assert [p["data"]["content"]["message"] for p in b.pushes()] == [
        text("Momo: you said from gus")
    ]
    assert [p["data"]["content"]["message"] for p in a.pushes()] == [
        text("Momo: you said from fay")
    ]


async def test_recall_after_reply_deletes_both_everywhere(hub: Bridge) -> None:
    c = await hub.client("hal")
    tab = await hub.client("hal")
    ack, _ = await send(c, MOMO, "forget me")
    push = await c.wait_push()
    reply_id = push["data"]["content"]["message_id"]
    mid = ack["data"]["message_id"]
    f = await c.request(
        "onebot", "del_message", {"id": MOMO, "type": "message", "content": {"message_id": mid}}
    )
    assert f["code"] == 0
    recalled = await tab.wait_for(lambda f: len([p for p in tab.pushes("del_msg")]) >= 2)
    assert recalled
    assert {p["data"]["content"]["message_id"] for p in tab.pushes("del_msg")} == {mid, reply_id}
    assert await chat_messages(hub, "hal", MOMO) == []
    again = await c.request(
        "onebot", "del_message", {"id": MOMO, "type": "message", "content": {"message_id": mid}}
    )
    assert again["data"]["error"] == "NOT_FOUND"


async def test_recall_during_generation_cancels_it(hub: Bridge) -> None:
    c = await hub.client("ida")
    sandbox = Sandbox(hub)
    rid = await c.send("onebot", "message", text("take your time /slow"), id=MOMO)
    ack = await c.reply(rid)
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    f = await c.request(
        "onebot", "del_message", {"id": MOMO, "content": {"message_id": ack["data"]["message_id"]}}
    )
    assert f["code"] == 0
    frames = await c.stream(rid)
    assert frames[-1]["code"] == 1 and frames[-1]["data"]["error"] == "CANCELLED"
    assert "recalled" in frames[-1]["data"]["reason"]

    async def upstream_closed() -> bool:
        return (await sandbox.stats())["open_streams"] == 0

    await eventually(upstream_closed, what="the sandbox to see the stream closed")
    assert await chat_messages(hub, "ida", MOMO) == []
    # No reply is ever delivered for it.
    ok_ack, _ = await send(c, MOMO, "next")
    await c.wait_push()
    assert [p["data"]["content"]["message"] for p in c.pushes("message")] == [
        text("Momo: you said next")
    ]
    assert ok_ack["data"]["message_id"] > ack["data"]["message_id"]


async def test_forward_sends_one_quoting_message(hub: Bridge) -> None:
    c = await hub.client("jon")
    first, _ = await send(c, MOMO, "alpha")
    rid = await c.send(
        "onebot",
        "forward_msg",
        {
            "id": KURO,
            "type": "forward_msg",
            "content": [
                {"message_id": first["data"]["message_id"], "message": text("alpha")},
                {"message_id": 999999, "message": text("beta")},
            ],
        },
    )
    ack = await c.reply(rid)
    assert ack["code"] == 0 and ack["data"]["message_id"] > 0
    frames = await c.stream(rid)
    assert frames[-1]["message"] == "completed"
    assert reply_text(frames).startswith("Kuro: you said Forwarded messages:")
    msgs = await chat_messages(hub, "jon", KURO)
    assert msgs[0].senderType == "USER"
    assert msgs[0].text == "Forwarded messages:\n> alpha\n> beta"


async def test_restart_keeps_the_same_chat(hub: Bridge) -> None:
    c = await hub.client("kim")
    await send(c, MOMO, "before restart")
    chat = await hub.app.storage.conversations.get("kim", MOMO, "default")
    await hub.restart()
    c = await hub.client("kim")
    await send(c, MOMO, "after restart")
    assert await hub.app.storage.conversations.get("kim", MOMO, "default") == chat
    texts = [m.text for m in await chat_messages(hub, "kim", MOMO) if m.senderType == "USER"]
    assert texts == ["before restart", "after restart"]


async def test_token_expiry_mid_conversation_refreshes_once(hub: Bridge) -> None:
    sandbox = Sandbox(hub)
    c = await hub.client("lia")
    await send(c, MOMO, "one")
    before = (await sandbox.stats())["refreshes"]
    await sandbox.call("POST", "/_sandbox/expire-tokens")
    results = await asyncio.gather(send(c, MOMO, "two"), send(c, KURO, "three"))
    assert reply_text(results[0][1]) == "Momo: you said two"
    assert reply_text(results[1][1]).endswith("you said three")
    assert (await sandbox.stats())["refreshes"] == before + 1


@pytest.mark.parametrize(
    ("rule", "error", "words"),
    [
        ({"status": 500}, "UPSTREAM_ERROR", "500"),
        ({"status": 403}, "UPSTREAM_ERROR", "authentication"),
        ({"drop_after": 1}, "UPSTREAM_ERROR", "ended"),
    ],
)
async def test_upstream_failures_become_failed_frames(hub: Bridge, rule, error, words) -> None:
    sandbox = Sandbox(hub)
    c = await hub.client("max")
    await send(c, MOMO, "warm up")  # the chat exists, so the fault hits the message itself
    await sandbox.fault(path=r"POST /v1/chats/.*/messages", **rule)
    rid = await c.send("onebot", "message", text("doomed"), id=MOMO)
    ack = await c.reply(rid)
    assert ack["code"] == 0
    frames = await c.stream(rid)
    assert frames[-1]["code"] == 1
    assert frames[-1]["data"]["error"] == error
    assert words in frames[-1]["data"]["reason"].lower()
    row = await hub.app.storage.messages.get(ack["data"]["message_id"])
    assert row is not None and row.content == text("doomed")  # the user's message stays stored
    _, ok = await send(c, MOMO, "recovered")
    assert reply_text(ok) == "Momo: you said recovered"


async def test_model_failure_inside_stream_carries_upstream_reason(hub: Bridge) -> None:
    c = await hub.client("ned")
    _, frames = await send(c, MOMO, "please /fail")
    assert frames[-1]["data"]["error"] == "UPSTREAM_ERROR"
    assert "asked to /fail" in frames[-1]["data"]["reason"]


async def test_first_event_timeout(bridge_factory) -> None:
    b = await bridge_factory(
        momohub={"enabled": True, "first_event_timeout": 0.5, "idle_timeout": 0.5},
        sandbox={"heartbeat_interval": 30},
    )
    sandbox = Sandbox(b)
    c = await b.client("ola")
    await send(c, MOMO, "warm up")
    await sandbox.fault(path=r"POST /v1/chats/.*/messages", stall=5)
    rid = await c.send("onebot", "message", text("hello?"), id=MOMO)
    frames = await c.stream(rid)
    assert frames[-1]["data"]["error"] == "UPSTREAM_TIMEOUT"


async def test_rate_limit_retry_after_is_honoured(hub: Bridge) -> None:
    sandbox = Sandbox(hub)
    c = await hub.client("pia")
    await send(c, MOMO, "warm up")
    await sandbox.fault(path=r"POST /v1/chats/.*/messages", status=429, retry_after=0.2)
    _, frames = await send(c, MOMO, "patient")
    assert reply_text(frames) == "Momo: you said patient"


async def test_unknown_character_is_not_found(hub: Bridge) -> None:
    c = await hub.client("quinn")
    f = await c.request("onebot", "message", text("hi"), id="00000000-0000-4000-8000-000000000000")
    assert f["code"] == 1 and f["data"]["error"] == "NOT_FOUND"


async def test_reply_survives_closed_connection_via_outbox(hub: Bridge) -> None:
    c = await hub.client("rae")
    rid = await c.send("onebot", "message", text("keep going /slow"), id=MOMO)
    await c.reply(rid)
    await c.close()

    async def stored() -> bool:
        return await hub.app.storage.outbox.count("rae") > 0

    await eventually(stored, timeout=15, what="the finished reply in the outbox")
    again = await hub.client("rae")
    push = await again.wait_push()
    assert push["data"]["content"]["message"] == text("Momo: you said keep going /slow")
    assert push["data"]["content"]["stream_request_id"] == rid


# ----- character models over openai/* ---------------------------------------------------------


async def test_openai_models_and_character_completion(hub: Bridge) -> None:
    c = await hub.client("sam")
    f = await c.request("openai", "models", {})
    assert f["code"] == 0
    assert f"character:{MOMO}" in {m for g in f["data"]["models"] for m in g["models"]}
    assert {ch["name"] for ch in f["data"]["characters"]} >= {"Momo", "Kuro"}
    rid = await c.send(
        "openai",
        "completions",
        {
            "model": f"character:{MOMO}",
            "messages": [
                {"role": "user", "content": "old"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "newest only"},
            ],
        },
    )
    frames = await c.stream(rid)
    assert frames[0]["message"] == "pending" and frames[-1]["message"] == "completed"
    assert reply_text(frames) == "Momo: you said newest only"
    # Same conversation as onebot/message to Momo (the default thread).
    msgs = await chat_messages(hub, "sam", MOMO)
    assert [m.text for m in msgs if m.senderType == "USER"] == ["newest only"]


async def test_abort_and_disconnect_close_upstream(hub: Bridge) -> None:
    sandbox = Sandbox(hub)
    c = await hub.client("tia")
    rid = await c.send(
        "openai",
        "completions",
        {"model": f"character:{MOMO}", "messages": [{"role": "user", "content": "long /slow"}]},
    )
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    f = await c.request("openai", "abort", {"request_id": rid})
    assert f["code"] == 0
    frames = await c.stream(rid)
    assert frames[-1]["data"]["error"] == "CANCELLED"
    # Disconnect: the server side sees its stream closed.
    d = await hub.client("tia")
    rid2 = await d.send(
        "openai",
        "completions",
        {"model": f"character:{KURO}", "messages": [{"role": "user", "content": "long /slow"}]},
    )
    await d.wait_for(lambda f: f.get("request_id") == rid2 and f.get("message") == "update")
    assert (await sandbox.stats())["open_streams"] == 1
    await d.close()

    async def closed() -> bool:
        return (await sandbox.stats())["open_streams"] == 0

    await eventually(closed, what="the upstream request to be closed")


async def test_stream_limit_per_user(bridge_factory) -> None:
    b = await bridge_factory(momohub={"enabled": True}, limits={"streams_per_user": 2})
    c = await b.client("uma")
    body = {"messages": [{"role": "user", "content": "go /slow"}]}
    r1 = await c.send("openai", "completions", {"model": f"character:{MOMO}", **body})
    r2 = await c.send("openai", "completions", {"model": f"character:{KURO}", **body})
    await c.wait_for(lambda f: f.get("request_id") == r2 and f.get("message") == "pending")
    f = await c.request("openai", "completions", {"model": f"character:{MOMO}", **body})
    assert f["data"]["error"] == "BUSY"
    for r in (r1, r2):
        await c.request("openai", "abort", {"request_id": r})


async def test_shutdown_mid_reply_closes_cleanly(hub: Bridge) -> None:
    c = await hub.client("vic")
    rid = await c.send("onebot", "message", text("long one /slow"), id=MOMO)
    ack = await c.reply(rid)
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    await hub.app.stop()
    assert await c.wait_closed() == 1001
    # Everything was released on the way down, and no half reply was stored or queued.
    assert hub.app.storage is None and hub.app.sandbox is None
    hub.clients.clear()
    hub.app = type(hub.app)(hub.config)
    await hub.app.start()
    c2 = await hub.client("vic")
    # The reply cut short by the stop is answered by exactly one notice, never by half a reply.
    notice = await c2.wait_push(lambda f: f["data"]["content"].get("interrupted") is True)
    assert notice["data"]["content"]["reply_to"] == ack["data"]["message_id"]
    await c2.request("system", "heartbeat", {})
    assert c2.pushes() == [notice]


async def test_token_refresh_runs_on_the_apps_one_scheduler(hub: Bridge) -> None:
    from adapters.momohub.auth import REFRESH_JOB_ID

    # The app starts once MomoHub signed in (its start waits for the upstreams' first try).
    assert hub.app.momohub is not None and hub.app.momohub._scheduler is hub.app.scheduler
    assert REFRESH_JOB_ID in hub.app.scheduler.job_ids()
