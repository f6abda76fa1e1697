"""The mio-chat web client's transport: python-socketio's client ↔ bridge (↔ MomoHub sandbox),
over real loopback sockets, with each of the two transports the client uses."""

from __future__ import annotations

import aiohttp
import pytest
import socketio

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import ADMIN_CODE, Bridge
from tests.support.sio_client import WAIT, SioClient, connect, is_login

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")

pytestmark = pytest.mark.parametrize("transport", ["websocket", "polling"])


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(
        momohub={"enabled": True}, auth={"user_code": "users"}, miochat={"socketio": True}
    )


async def test_admin_login_frame(hub: Bridge, transport: str) -> None:
    c = await connect(hub, transport, {"id": "1234567890", "token": ADMIN_CODE, "firstLogin": True})
    try:
        login = await c.wait_for(is_login)
        data = login["data"]
        assert data["is_admin"] is True and data["id"] == "1234567890"
        assert data["bootId"] and data["pendingTasks"] == [] and data["models_meta"] == {}
        assert data["onebot_enabled"] is False
        assert login["request_id"] is not None
        assert [g["owner"] for g in data["models"]["momohub"]] == ["momohub"]
        assert f"character:{MOMO}" in data["models"]["momohub"][0]["models"]
    finally:
        await c.close()


async def test_user_and_null_id_logins(hub: Bridge, transport: str) -> None:
    user = await connect(hub, transport, {"id": "2000000001", "token": "users"})
    guest = await connect(hub, transport, {"id": None, "token": "users", "firstLogin": True})
    try:
        assert (await user.wait_for(is_login))["data"]["is_admin"] is False
        data = (await guest.wait_for(is_login))["data"]
        assert data["is_admin"] is False and data["id"].startswith("sio-")
    finally:
        await user.close()
        await guest.close()


async def test_wrong_token_is_a_connect_error_with_the_reason(hub: Bridge, transport: str) -> None:
    for auth, reason in (
        ({"id": "2000000002", "token": "nope"}, "invalid code"),
        ({"id": "2000000002"}, "invalid code"),  # a guest while a user code is set
        ({"id": "not an id", "token": "users"}, "mio-chat-id"),
    ):
        c = SioClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.sio.connect(
                hub.http, transports=[transport], auth=auth, wait_timeout=WAIT, retry=False
            )
        # What the web client shows is the refusal's message.
        assert len(c.refusals) == 1 and reason in c.refusals[0]["message"], c.refusals
        assert c.frames == []


async def test_onebot_message_acked_and_reply_pushed(hub: Bridge, transport: str) -> None:
    c = await connect(hub, transport, {"id": "2000000003", "token": "users"})
    try:
        await c.wait_for(is_login)
        seg = [{"type": "text", "data": {"text": "hello"}}]
        await c.send(
            {
                "request_id": "r-1",
                "protocol": "onebot",
                "type": "message",
                "id": MOMO,
                "data": seg,
                "metaData": {"contactorId": MOMO},
            }
        )
        ack = await c.wait_for(lambda f: f.get("request_id") == "r-1")
        assert "protocol" not in ack and ack["code"] == 0 and ack["message"] == "ok"
        mid = ack["data"]["message_id"]
        assert isinstance(mid, int) and mid > 0
        push = await c.wait_for(
            lambda f: (
                f.get("protocol") == "onebot"
                and f["data"]["content"].get("stream_request_id") == "r-1"
            )
        )
        content = push["data"]["content"]
        assert push["data"]["id"] == MOMO and content["message_id"] > mid
        assert content["message"] == [{"type": "text", "data": {"text": "Momo: you said hello"}}]
        assert content["sender"] == {"id": MOMO, "name": "Momo"}
    finally:
        await c.close()


async def test_bad_frames_get_failures_and_the_connection_lives_on(
    hub: Bridge, transport: str
) -> None:
    c = await connect(hub, transport, {"id": "2000000004", "token": "users"})
    try:
        await c.wait_for(is_login)
        await c.sio.emit("message", "{not json")
        bad = await c.wait_for(lambda f: f.get("code") == 1 and f["data"]["error"] == "BAD_FRAME")
        assert bad["request_id"] is None
        await c.send({"request_id": "u-1", "protocol": "nope", "type": "x", "data": {}})
        unknown = await c.wait_for(lambda f: f.get("request_id") == "u-1")
        assert unknown["code"] == 1 and unknown["data"]["error"] == "UNKNOWN_PROTOCOL"
        await c.send({"request_id": "u-2", "protocol": "llm", "type": "completions", "data": {}})
        later = await c.wait_for(lambda f: f.get("request_id") == "u-2")
        assert later["code"] == 1 and later["data"]["reason"]
        await c.send({"request_id": "h-1", "protocol": "system", "type": "heartbeat", "data": {}})
        beat = await c.wait_for(lambda f: f.get("request_id") == "h-1")
        assert beat["code"] == 0 and c.sio.connected
    finally:
        await c.close()


async def test_turned_off_answers_404(bridge_factory, transport: str) -> None:
    b = await bridge_factory(miochat={"socketio": False})
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{b.http}/socket.io/?EIO=4&transport={transport}") as r:
            assert r.status == 404


async def test_socketio_connections_count_toward_max_connections(
    bridge_factory, transport: str
) -> None:
    b = await bridge_factory(
        miochat={"socketio": True}, auth={"user_code": "users"}, server={"max_connections": 2}
    )
    ws = await b.client("4000000001", "users")
    first = await connect(b, transport, {"id": "4000000002", "token": "users"})
    try:
        await first.wait_for(is_login)
        assert b.app.hub.connection_count == 2
        c = SioClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.sio.connect(
                b.http,
                transports=[transport],
                auth={"id": "4000000003", "token": "users"},
                wait_timeout=WAIT,
                retry=False,
            )
        assert "server is full" in c.refusals[0]["message"]
    finally:
        await first.close()
        await ws.close()
