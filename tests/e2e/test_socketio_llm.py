"""The web client's `llm` protocol over Socket.IO: python-socketio's client ↔ bridge ↔ a real
OpenAI-compatible server and the MomoHub sandbox, over loopback, on both transports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from storage import Storage
from storage.client_replies import StoredReply
from tests.conftest import ADMIN_CODE, Bridge
from tests.support.fake_openai import FakeOpenAI
from tests.support.sio_client import WAIT, SioClient, connect, is_login

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")

pytestmark = pytest.mark.parametrize("transport", ["websocket", "polling"])


def _sections(upstream: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "openai": {
            "providers": [
                {"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"},
            ]
        },
        "momohub": {"enabled": True},
        "auth": {"user_code": "users"},
        "miochat": {"socketio": True},
        **extra,
    }


@pytest.fixture
async def hub(bridge_factory, upstream: FakeOpenAI) -> Bridge:
    return await bridge_factory(**_sections(upstream))


def completions(
    message_id: str, contactor: str, model: str, messages: list[dict[str, Any]], **chat: Any
) -> dict[str, Any]:
    """What the web client sends: `request_id` is the assistant message's id."""
    return {
        "request_id": message_id,
        "protocol": "llm",
        "type": "completions",
        "data": {
            "settings": {
                "provider": "fake",
                "base": {"model": model, "max_messages_num": 10, "stream": True},
                "chatParams": chat,
                "toolCallSettings": {"mode": "AUTO", "tools": []},
            },
            "messages": messages,
        },
        "metaData": {"contactorId": contactor, "messageId": message_id, "namePolicy": 1},
    }


def user(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": f'<message time="2026-11-30T01:02:03.000Z">\n{text}\n</message>',
    }


def of(message_id: str, kind: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (
        f.get("protocol") == "llm"
        and f.get("request_id") == message_id
        and (kind is None or f.get("message") == kind)
    )


def stream(c: SioClient, message_id: str) -> list[dict[str, Any]]:
    return [f for f in c.frames if of(message_id)(f)]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(
        f["data"]["content"]
        for f in frames
        if f["message"] == "update" and f["data"].get("type") == "content"
    )


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Until ``check`` holds (state another task changes, with no event to wait on)."""
    async with asyncio.timeout(WAIT):
        while not await check():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.02)


async def login(b: Bridge, transport: str, uid: str) -> tuple[SioClient, dict[str, Any]]:
    c = await connect(b, transport, {"id": uid, "token": "users"})
    return c, (await c.wait_for(is_login))["data"]


def ack(contactor: str, message_id: str) -> dict[str, Any]:
    return {
        "request_id": f"ack-{message_id}",
        "protocol": "llm",
        "type": "ack_message",
        "data": {"contactorId": contactor, "messageId": message_id},
    }


def enter(contactor: str) -> dict[str, Any]:
    return {
        "request_id": f"enter-{contactor}",
        "protocol": "llm",
        "type": "enter_chat",
        "data": {"contactorId": contactor},
    }


async def no_reply_running(b: Bridge) -> None:
    replies = b.app.socketio.replies  # type: ignore[union-attr]

    async def finished() -> bool:
        return replies.running == 0

    await eventually(finished)


async def closed_mid_reply(b: Bridge, transport: str, uid: str, contactor: str, mid: str) -> None:
    """A tab that asked for a (gated) reply and closed once it started streaming."""
    c, _ = await login(b, transport, uid)
    await c.send(completions(mid, contactor, "gated", [user("later")]))
    await c.wait_for(of(mid, "update"))
    await c.close()


async def test_reply_with_reasoning_and_tool_calls_ends_complete(
    hub: Bridge, transport: str
) -> None:
    c, data = await login(hub, transport, "3000000001")
    try:
        assert "reason-tools" in data["models"]["fake"][0]["models"]
        await c.send(completions("1000000000000001", "501", "reason-tools", [user("tea?")]))
        await c.wait_for(of("1000000000000001", "complete"))
        frames = stream(c, "1000000000000001")
        assert frames[0]["message"] == "pending" and frames[-1]["message"] == "complete"
        assert all(f["data"]["metaData"]["contactorId"] == "501" for f in frames)
        assert all(f["data"]["metaData"]["messageId"] == "1000000000000001" for f in frames)
        updates = [f["data"] for f in frames if f["message"] == "update"]
        reasons = [u["data"] for u in updates if u["type"] == "reason"]
        assert "".join(r["text"] for r in reasons) == "Weighing it up."
        assert all(isinstance(r["startTime"], int) and r["duration"] >= 0 for r in reasons)
        assert reasons[0]["startTime"] == reasons[-1]["startTime"]
        assert text_of(frames) == "Let me look."
        calls = [u["content"] for u in updates if u["type"] == "toolCall"]
        assert {c_["id"] for c_ in calls} == {calls[0]["id"]} and calls[0]["id"]
        assert calls[0]["action"] == "started" and calls[-1]["action"] == "finished"
        # `pending` chunks carry what is new; the client appends them.
        args = "".join(x["parameters"] for x in calls if x["action"] == "pending")
        assert args == '{"q": "tea"}' and calls[-1]["parameters"] == '{"q": "tea"}'
        assert all(x["name"] == "lookup" for x in calls)
        # Kept until the client confirms it, then gone.
        await c.send(ack("501", "1000000000000001"))

        async def confirmed() -> bool:
            return await hub.app.storage.client_replies.contactors("3000000001") == []

        await eventually(confirmed)
    finally:
        await c.close()


async def test_tool_call_ids_are_unique_across_replies(hub: Bridge, transport: str) -> None:
    c, _ = await login(hub, transport, "3000000002")
    try:
        ids = []
        for mid in ("1000000000000011", "1000000000000012"):
            await c.send(completions(mid, "502", "tools", [user("weather")]))
            await c.wait_for(of(mid, "complete"))
            ids += [
                f["data"]["content"]["id"]
                for f in stream(c, mid)
                if f["message"] == "update" and f["data"]["type"] == "toolCall"
            ]
        assert len(set(ids)) == 4  # two calls in each reply
    finally:
        await c.close()


async def test_plain_model_gets_the_history_as_given(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    c, _ = await login(hub, transport, "3000000003")
    try:
        history = [
            {"role": "system", "content": "be brief"},
            user("first"),
            {"role": "assistant", "content": "ok"},
            user("second"),
        ]
        await c.send(completions("1000000000000021", "503", "echo", history, temperature=0.4))
        await c.wait_for(of("1000000000000021", "complete"))
        sent = upstream.requests[-1]
        assert sent["messages"] == history and sent["temperature"] == 0.4
        assert "second" in text_of(stream(c, "1000000000000021"))
    finally:
        await c.close()


async def test_character_gets_only_the_newest_message_unwrapped(
    hub: Bridge, transport: str
) -> None:
    c, data = await login(hub, transport, "3000000004")
    try:
        model = f"character:{MOMO}"
        assert model in data["models"]["momohub"][0]["models"]
        history = [user("older"), {"role": "assistant", "content": "hm"}, user("hello")]
        await c.send(completions("1000000000000031", "504", model, history))
        await c.wait_for(of("1000000000000031", "complete"))
        assert text_of(stream(c, "1000000000000031")) == "Momo: you said hello"
    finally:
        await c.close()


async def test_interrupt_ends_with_complete_and_closes_upstream(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    c, _ = await login(hub, transport, "3000000005")
    try:
        await c.send(completions("1000000000000041", "505", "slow", [user("go")]))
        await c.wait_for(of("1000000000000041", "update"))
        await c.sio.emit(
            "interruptGeneration", {"contactorId": "505", "messageId": "1000000000000041"}
        )
        await c.wait_for(of("1000000000000041", "complete"))
        await upstream.wait_open_streams(0)
        assert not any(f["message"] == "failed" for f in stream(c, "1000000000000041"))
        assert hub.app.hub.active_streams == {}
    finally:
        await c.close()


async def test_reply_finished_while_the_tab_was_closed_is_recovered(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    mid = "1000000000000051"
    await closed_mid_reply(hub, transport, "3000000006", "506", mid)
    upstream.gate.set()
    await no_reply_running(hub)
    back, data = await login(hub, transport, "3000000006")
    try:
        assert data["pendingTasks"] == ["506"]
        await back.send(enter("506"))
        sync = await back.wait_for(of(mid, "sync"))
        d = sync["data"]
        assert d["status"] == "completed" and d["messageId"] == mid and d["error"] is None
        assert d["chunks"] == [{"type": "content", "content": "first part, then the rest"}]
        assert d["metaData"]["contactorId"] == "506"
        await back.send(ack("506", mid))
        await back.send({"request_id": "h", "protocol": "system", "type": "heartbeat", "data": {}})
        await back.wait_for(lambda f: f.get("request_id") == "h")
    finally:
        await back.close()
    again, data = await login(hub, transport, "3000000006")
    try:
        assert data["pendingTasks"] == []
    finally:
        await again.close()


async def test_tab_back_while_the_reply_still_runs(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    mid = "1000000000000061"
    await closed_mid_reply(hub, transport, "3000000007", "507", mid)
    back, data = await login(hub, transport, "3000000007")
    try:
        assert data["pendingTasks"] == ["507"]
        await back.send(enter("507"))
        sync = await back.wait_for(of(mid, "sync"))
        assert sync["data"]["status"] == "streaming"
        assert sync["data"]["chunks"] == [{"type": "content", "content": "first part, "}]
        upstream.gate.set()
        await back.wait_for(of(mid, "complete"))
        assert text_of(stream(back, mid)) == "then the rest"
    finally:
        await back.close()


async def test_retry_reuses_the_message_id(hub: Bridge, transport: str) -> None:
    c, _ = await login(hub, transport, "3000000008")
    mid = "1000000000000071"
    try:
        await c.send(completions(mid, "508", "echo", [user("one")]))
        await c.wait_for(of(mid, "complete"))
        c.frames.clear()
        await c.send(completions(mid, "508", "echo", [user("two")]))
        await c.wait_for(of(mid, "complete"))
        assert "two" in text_of(stream(c, mid))
        rows = await hub.app.storage.client_replies.of_contactor("3000000008", "508")
        assert len(rows) == 1 and "two" in rows[0].chunks[0]["content"]
    finally:
        await c.close()


async def test_failures_are_failed_frames_with_a_reason(
    bridge_factory, upstream: FakeOpenAI, transport: str
) -> None:
    b = await bridge_factory(**_sections(upstream, limits={"streams_per_user": 1}))
    c, _ = await login(b, transport, "3000000009")
    try:
        await c.send(completions("1000000000000081", "509", "fail-500", [user("x")]))
        failed = await c.wait_for(of("1000000000000081", "failed"))
        assert failed["data"]["message"] and failed["data"]["metaData"]["contactorId"] == "509"
        await c.send(completions("1000000000000082", "509", "nobody/none", [user("x")]))
        failed = await c.wait_for(of("1000000000000082", "failed"))
        assert "unknown model" in failed["data"]["message"]
        await c.send(completions("1000000000000083", "510", "slow", [user("x")]))
        await c.wait_for(of("1000000000000083", "update"))
        await c.send(completions("1000000000000084", "511", "echo", [user("x")]))
        busy = await c.wait_for(of("1000000000000084", "failed"))
        assert busy["data"]["code"] == "BUSY"
        bad = completions("1000000000000085", "511", "echo", [user("x")])
        bad["metaData"] = {"contactorId": {"no": 1}}
        await c.send(bad)
        refused = await c.wait_for(lambda f: f.get("request_id") == "1000000000000085")
        assert refused["code"] == 1 and refused["data"]["error"] == "INVALID_DATA"
        await c.sio.emit(
            "interruptGeneration", {"contactorId": "510", "messageId": "1000000000000083"}
        )
        await c.wait_for(of("1000000000000083", "complete"))
    finally:
        await c.close()


async def test_restart_fails_a_reply_left_streaming(
    bridge_factory, upstream: FakeOpenAI, tmp_path, transport: str
) -> None:
    from tests.conftest import make_config

    # What a crash mid-reply leaves: the reply stored as still streaming.
    cfg = make_config(tmp_path, **_sections(upstream))
    storage = await Storage.open(cfg.storage.path)
    await storage.client_replies.save(
        StoredReply(
            "3000000010",
            "1000000000000091",
            "512",
            "streaming",
            [{"type": "content", "content": "half"}],
            None,
            {"contactorId": "512", "messageId": "1000000000000091"},
            0,
        ),
        10,
    )
    await storage.close()
    b = await bridge_factory(**_sections(upstream))
    assert b.config.storage.path == cfg.storage.path
    c, data = await login(b, transport, "3000000010")
    try:
        assert data["pendingTasks"] == ["512"]
        await c.send(enter("512"))
        sync = await c.wait_for(of("1000000000000091", "sync"))
        assert (
            sync["data"]["status"] == "failed" and "restarted" in sync["data"]["error"]["message"]
        )
        assert sync["data"]["chunks"] == [{"type": "content", "content": "half"}]
    finally:
        await c.close()


async def test_pushes_are_confirmed_and_not_offered_again(hub: Bridge, transport: str) -> None:
    c, _ = await login(hub, transport, "3000000011")
    try:
        seg = [{"type": "text", "data": {"text": "hi"}}]
        await c.send(
            {"request_id": "m", "protocol": "onebot", "type": "message", "id": MOMO, "data": seg}
        )
        await c.wait_for(lambda f: f.get("protocol") == "onebot" and f["data"]["type"] == "message")

        async def confirmed() -> bool:
            return await hub.app.outbox.pending_count("3000000011") == 0

        await eventually(confirmed)
    finally:
        await c.close()
    again, _ = await login(hub, transport, "3000000011")
    try:
        await again.send({"request_id": "h", "protocol": "system", "type": "heartbeat", "data": {}})
        await again.wait_for(lambda f: f.get("request_id") == "h")
        assert not [f for f in again.frames if f.get("protocol") == "onebot"]
    finally:
        await again.close()


async def test_admin_sees_every_provider(hub: Bridge, transport: str) -> None:
    c = await connect(hub, transport, {"id": "3000000012", "token": ADMIN_CODE})
    try:
        models = (await c.wait_for(is_login))["data"]["models"]
        assert set(models) == {"fake", "momohub"}
    finally:
        await c.close()


async def test_legacy_abort_frame_interrupts(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    c, _ = await login(hub, transport, "3000000013")
    try:
        await c.send(completions("1000000000000101", "513", "slow", [user("go")]))
        await c.wait_for(of("1000000000000101", "update"))
        await c.send(
            {"request_id": "1000000000000101", "protocol": "llm", "type": "abort", "data": {}}
        )
        await c.wait_for(of("1000000000000101", "complete"))
        await upstream.wait_open_streams(0)
    finally:
        await c.close()


async def test_models_updated_when_a_provider_lists_a_new_model(
    bridge_factory, upstream: FakeOpenAI, transport: str
) -> None:
    sections = _sections(upstream)
    sections["openai"]["models_cache_ttl"] = 0.1
    b = await bridge_factory(**sections)
    c, data = await login(b, transport, "3000000014")
    try:
        assert "brand-new" not in data["models"]["fake"][0]["models"]
        upstream.extra_models.append("brand-new")
        update = await c.wait_for(
            lambda f: (
                f.get("type") == "models_updated"
                and "brand-new" in f["data"]["models"]["fake"][0]["models"]
            )
        )
        d = update["data"]
        assert {p["displayName"] for p in d["providers"]} == {"fake", "momohub"}
        assert isinstance(d["timestamp"], int) and d["models_meta"] == {}
    finally:
        await c.close()


async def test_interrupt_right_behind_the_request_is_not_lost(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    """The client stops a reply the moment it asked for it (no frame seen yet)."""
    c, _ = await login(hub, transport, "3000000015")
    mid = "1000000000000111"
    try:
        await c.send(completions(mid, "515", "slow", [user("go")]))
        await c.sio.emit("interruptGeneration", {"contactorId": "515", "messageId": mid})
        await c.wait_for(of(mid, "complete"))
        await upstream.wait_open_streams(0)
        # Its ack follows the interrupt: nothing is kept, and the slot is free.
        await c.send(ack("515", mid))

        async def settled() -> bool:
            return (
                hub.app.hub.active_streams == {}
                and await hub.app.storage.client_replies.contactors("3000000015") == []
            )

        await eventually(settled)
    finally:
        await c.close()


async def test_an_earlier_attempts_ack_does_not_drop_the_retry(
    hub: Bridge, upstream: FakeOpenAI, transport: str
) -> None:
    c, _ = await login(hub, transport, "3000000016")
    mid = "1000000000000121"
    await c.send(completions(mid, "516", "echo", [user("one")]))
    await c.wait_for(of(mid, "complete"))
    await c.send(completions(mid, "516", "gated", [user("two")]))
    await c.wait_for(of(mid, "update"))
    await c.send(ack("516", mid))  # the first attempt's, arriving late
    await c.send({"request_id": "h", "protocol": "system", "type": "heartbeat", "data": {}})
    await c.wait_for(lambda f: f.get("request_id") == "h")
    await c.close()
    upstream.gate.set()
    await no_reply_running(hub)
    back, data = await login(hub, transport, "3000000016")
    try:
        assert data["pendingTasks"] == ["516"]
    finally:
        await back.close()


async def test_retry_at_the_stream_limit_takes_the_running_replys_place(
    bridge_factory, upstream: FakeOpenAI, transport: str
) -> None:
    b = await bridge_factory(**_sections(upstream, limits={"streams_per_user": 1}))
    c, _ = await login(b, transport, "3000000017")
    mid = "1000000000000131"
    try:
        await c.send(completions(mid, "517", "slow", [user("a")]))
        await c.wait_for(of(mid, "update"))
        await c.send(completions(mid, "517", "echo", [user("again")]))
        await c.wait_for(of(mid, "complete"))
        frames = stream(c, mid)
        assert not [f for f in frames if f["message"] == "failed"]
        assert "again" in text_of(frames)
        await upstream.wait_open_streams(0)
        assert b.app.hub.active_streams == {}
    finally:
        await c.close()


async def test_text_so_far_is_stored_while_the_reply_runs(
    hub: Bridge, upstream: FakeOpenAI, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash would leave: the text streamed so far, not an empty reply."""
    from adapters.miochat import client_replies

    monkeypatch.setattr(client_replies, "CHECKPOINT_EVERY", 0.0)
    c, _ = await login(hub, transport, "3000000018")
    mid = "1000000000000141"
    try:
        await c.send(completions(mid, "518", "gated", [user("keep")]))
        await c.wait_for(of(mid, "update"))

        async def stored() -> bool:
            rows = await hub.app.storage.client_replies.of_contactor("3000000018", "518")
            return bool(rows) and rows[0].chunks == [{"type": "content", "content": "first part, "}]

        await eventually(stored)
        upstream.gate.set()
        await c.wait_for(of(mid, "complete"))
    finally:
        await c.close()


async def test_a_backlog_past_the_send_queue_is_replayed_as_the_tab_reads(
    bridge_factory, upstream: FakeOpenAI, transport: str
) -> None:
    from bridge.outbox import Push

    b = await bridge_factory(**_sections(upstream, server={"max_send_queue": 65536}))
    text = "x" * 2000
    for i in range(100):  # about 200 KB waiting, three times the send queue
        seg = [{"type": "text", "data": {"text": f"{i} {text}"}}]
        await b.app.outbox.push("3000000019", Push("message", MOMO, 1000 + i, seg))
    c, _ = await login(b, transport, "3000000019")
    try:
        last = await c.wait_for(
            lambda f: (
                f.get("protocol") == "onebot" and f["data"]["content"].get("message_id") == 1099
            )
        )
        got = [
            f["data"]["content"]["message_id"] for f in c.frames if f.get("protocol") == "onebot"
        ]
        assert got == list(range(1000, 1100)) and last and c.sio.connected

        async def confirmed() -> bool:
            return await b.app.outbox.pending_count("3000000019") == 0

        await eventually(confirmed)
    finally:
        await c.close()


async def test_requests_of_a_tab_that_closes_at_once_are_all_answered(
    hub: Bridge, transport: str
) -> None:
    """Replies belong to the user: two queued for one chat still run when the tab is gone."""
    c, _ = await login(hub, transport, "3000000020")
    mids = ["1000000000000151", "1000000000000152"]
    for mid in mids:
        await c.send(completions(mid, "520", "echo", [user(mid)]))
    # Read by the bridge (frames are read in order), then gone before any answer is awaited.
    await c.send({"request_id": "h", "protocol": "system", "type": "heartbeat", "data": {}})
    await c.wait_for(lambda f: f.get("request_id") == "h")
    await c.close()
    await no_reply_running(hub)
    assert hub.app.hub.active_streams == {}
    back, data = await login(hub, transport, "3000000020")
    try:
        assert data["pendingTasks"] == ["520"]
        await back.send(enter("520"))
        for mid in mids:
            sync = await back.wait_for(of(mid, "sync"))
            assert sync["data"]["status"] == "completed"
            assert mid in sync["data"]["chunks"][0]["content"]
    finally:
        await back.close()


async def test_a_push_is_confirmed_only_by_the_tabs_pong(hub: Bridge, transport: str) -> None:
    """Held pongs: the push stays waiting however long it has been written; the late pong
    confirms it. (No heartbeat pings meanwhile: one sent before the push, its pong held, would
    hold back the probe ping the push sends, and nothing would be pinged after the push.)"""
    hub.app.socketio.sio.eio.ping_interval = 600  # type: ignore[union-attr]
    c, _ = await login(hub, transport, "3000000021")
    held: list[Any] = []
    pinged = asyncio.Event()
    send = c.sio.eio._send_packet

    async def holding(pkt: Any) -> None:
        from engineio import packet

        if pkt.packet_type == packet.PONG and held is not None:
            held.append(pkt)
            pinged.set()
            return
        await send(pkt)

    c.sio.eio._send_packet = holding
    try:
        seg = [{"type": "text", "data": {"text": "hi"}}]
        await c.send(
            {"request_id": "m", "protocol": "onebot", "type": "message", "id": MOMO, "data": seg}
        )
        await c.wait_for(lambda f: f.get("protocol") == "onebot" and f["data"]["type"] == "message")
        async with asyncio.timeout(WAIT):
            await pinged.wait()  # the probe ping the push sent, left unanswered
        await c.send({"request_id": "h", "protocol": "system", "type": "heartbeat", "data": {}})
        await c.wait_for(lambda f: f.get("request_id") == "h")
        assert await hub.app.outbox.pending_count("3000000021") == 1
        late, held[:] = list(held), []
        c.sio.eio._send_packet = send
        for pkt in late:
            await send(pkt)

        async def confirmed() -> bool:
            return await hub.app.outbox.pending_count("3000000021") == 0

        await eventually(confirmed)
    finally:
        await c.close()
