"""The hub over real sockets: system frames, bad input, pushes, outbox, shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect

from bridge.outbox import Push
from tests.conftest import ADMIN_CODE, Bridge
from tests.support.hub_client import HubClient


def _err(frame: dict) -> str:
    assert frame["code"] == 1, frame
    assert frame["message"] == "failed"
    return frame["data"]["error"]


def _push(contact: str, message_id: int, text: str) -> Push:
    return Push(
        kind="message",
        contact=contact,
        message_id=message_id,
        segments=[{"type": "text", "data": {"text": text}}],
        time=int(time.time()),
        sender_id=contact,
        sender_name=contact,
    )


# ----- login -----------------------------------------------------------------------------------


async def test_login_as_user_and_admin(bridge: Bridge) -> None:
    c = await bridge.client()
    frame = await c.login("alice")
    assert frame["protocol"] == "system" and frame["type"] == "login"
    data = frame["data"]
    assert data["is_admin"] is False
    assert data["admin_qq"] == bridge.config.auth.admin_qq
    assert data["bot_qq"] == bridge.config.auth.bot_qq
    assert data["models"] == [] and data["contacts"] == []
    a = await bridge.client()
    assert (await a.login(12345, ADMIN_CODE))["data"]["is_admin"] is True


async def test_request_id_echoed_verbatim_in_type(bridge: Bridge) -> None:
    c = await bridge.client("bob")
    for rid in (7, "7", 1.5, "x-y"):
        f = await c.request("system", "heartbeat", {"timestamp": ""}, request_id=rid)
        assert f["request_id"] == rid and type(f["request_id"]) is type(rid)


async def test_login_answers_within_one_second(bridge: Bridge) -> None:
    c = await bridge.client()
    t0 = time.monotonic()
    await c.login("speedy")
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "data",
    [
        {},  # missing id
        {"mio-chat-id": "bad id!"},  # illegal characters
        {"mio-chat-id": "x" * 65},
        {"mio-chat-id": True},
        "not an object",
    ],
)
async def test_bad_login_fails_and_closes_4001(bridge: Bridge, data: object) -> None:
    c = await bridge.client()
    f = await c.request("system", "login", data)
    assert _err(f) == "LOGIN_FAILED"
    assert f["data"]["reason"]
    assert await c.wait_closed() == 4001


async def test_wrong_user_code(bridge_factory) -> None:
    b = await bridge_factory(auth={"user_code": "letmein"})
    c = await b.client()
    f = await c.request("system", "login", {"mio-chat-id": "u1", "mio-chat-token": "nope"})
    assert _err(f) == "LOGIN_FAILED" and f["data"]["reason"] == "invalid code"
    assert await c.wait_closed() == 4001
    ok = await b.client()
    assert (await ok.login("u1", "letmein"))["data"]["is_admin"] is False
    admin = await b.client()
    assert (await admin.login("u2", ADMIN_CODE))["data"]["is_admin"] is True


async def test_frames_before_login_are_unauthenticated(bridge: Bridge) -> None:
    c = await bridge.client()
    f = await c.request("system", "heartbeat", {"timestamp": ""})
    assert _err(f) == "UNAUTHENTICATED"
    f = await c.request("onebot", "message", {"id": "x"})
    assert _err(f) == "UNAUTHENTICATED"
    await c.login("late")  # still open, login still works


async def test_login_timeout_closes_4001(bridge_factory) -> None:
    b = await bridge_factory(auth={"login_timeout": 0.3})
    c = await b.client()
    await c.request("system", "heartbeat", {})  # non-login frames do not extend the deadline
    assert await c.wait_closed() == 4001


async def test_upgrade_time_credentials_push_login(bridge: Bridge) -> None:
    c = await HubClient.open(f"{bridge.url}?mio-chat-id=carol&mio-chat-token={ADMIN_CODE}")
    bridge.clients.append(c)
    f = await c.wait_for(lambda f: f.get("type") == "login")
    assert f["code"] == 0 and f["data"]["is_admin"] is True
    assert isinstance(f["request_id"], str) and f["request_id"].startswith("s-")
    h = await HubClient.open(bridge.url, additional_headers={"mio-chat-id": "dave"})
    bridge.clients.append(h)
    f = await h.wait_for(lambda f: f.get("type") == "login")
    assert f["code"] == 0 and f["data"]["is_admin"] is False
    assert (await h.request("system", "heartbeat", {"timestamp": ""}))["code"] == 0


async def test_upgrade_time_bad_credentials(bridge: Bridge) -> None:
    c = await HubClient.open(f"{bridge.url}?mio-chat-id=no%20spaces")
    bridge.clients.append(c)
    f = await c.wait_for(lambda f: f.get("type") == "login")
    assert _err(f) == "LOGIN_FAILED"
    assert await c.wait_closed() == 4001


async def test_upgrade_blank_id_means_no_upgrade_login(bridge: Bridge) -> None:
    c = await HubClient.open(f"{bridge.url}?mio-chat-id=&mio-chat-token=")
    bridge.clients.append(c)
    answer = await c.login("erin")
    assert answer["code"] == 0
    assert [f["type"] for f in c.frames if f.get("type") == "login"] == ["login"]


# ----- heartbeat -----------------------------------------------------------------------------


async def test_heartbeat(bridge: Bridge) -> None:
    c = await bridge.client("hb")
    sent = int(time.time() * 1000) - 50
    f = await c.request("system", "heartbeat", {"timestamp": sent})
    assert f["code"] == 0 and f["message"] == "success"
    assert f["data"]["delay"] >= 50
    assert abs(f["data"]["revTime"] - time.time() * 1000) < 5000
    f = await c.request("system", "heartbeat", {"timestamp": ""})
    assert f["data"]["delay"] == 0
    f = await c.request("system", "heartbeat")
    assert f["data"]["delay"] == 0


# ----- bad input -------------------------------------------------------------------------------


async def test_bad_frames_get_errors_and_connection_stays(bridge: Bridge) -> None:
    c = await bridge.client("junk")
    await c.send_raw("this is not json")
    f = await c.wait_for(lambda f: f.get("code") == 1)
    assert _err(f) == "BAD_FRAME" and f["request_id"] is None
    n = len(c.frames)
    await c.send_raw("[1, 2, 3]")
    f = await c.wait_for(lambda f: f.get("code") == 1, start=n)
    assert _err(f) == "BAD_FRAME" and "object" in f["data"]["reason"]
    n = len(c.frames)
    await c.send_raw(json.dumps({"protocol": "system", "type": "heartbeat"}))
    f = await c.wait_for(lambda f: f.get("code") == 1, start=n)
    assert _err(f) == "BAD_FRAME" and "request_id" in f["data"]["reason"]
    assert _err(await c.request("nonsense", "x", {})) == "UNKNOWN_PROTOCOL"
    assert _err(await c.request("system", "nonsense", {})) == "UNKNOWN_TYPE"
    f = await c.request("openai", "completions", ["not", "an", "object"])
    assert _err(f) == "INVALID_DATA"
    f = await c.request("onebot", "message", "text instead of segments")
    assert _err(f) == "INVALID_DATA"
    f = await c.request("system", "share", {"contactor": "not an object"})
    assert _err(f) == "INVALID_DATA" and "contactor" in f["data"]["reason"]
    f = await c.request("onebot", "del_message", {"id": "x", "content": {"message_id": "abc"}})
    assert _err(f) == "INVALID_DATA"
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def test_binary_json_frame_is_accepted(bridge: Bridge) -> None:
    c = await bridge.client("bin")
    await c.send_raw(
        json.dumps({"request_id": 1, "protocol": "system", "type": "heartbeat"}).encode()
    )
    assert (await c.reply(1))["code"] == 0


async def test_oversized_frame_closes_1009(bridge_factory) -> None:
    b = await bridge_factory(server={"max_frame_bytes": 4096})
    c = await b.client("big")
    other = await b.client("other")
    await c.send("system", "heartbeat", {"pad": "x" * 5000})
    assert await c.wait_closed() == 1009
    assert (await other.request("system", "heartbeat", {}))["code"] == 0


async def test_router_honest_answers_with_nothing_configured(bridge: Bridge) -> None:
    c = await bridge.client("lonely")
    f = await c.request(
        "onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id="nobody"
    )
    assert _err(f) == "NOT_FOUND" and "nobody" in f["data"]["reason"]
    f = await c.request(
        "onebot",
        "message",
        {
            "id": "nobody",
            "type": "message",
            "data": {"message": [{"type": "text", "data": {"text": "hi"}}]},
        },
    )
    assert _err(f) == "NOT_FOUND"
    assert _err(await c.request("openai", "models", {})) == "UNAVAILABLE"
    f = await c.request(
        "openai", "completions", {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert _err(f) == "UNAVAILABLE"
    f = await c.request(
        "onebot",
        "forward_msg",
        {
            "id": "nobody",
            "type": "forward_msg",
            "content": [{"message_id": 1, "message": [{"type": "text", "data": {"text": "q"}}]}],
        },
    )
    assert _err(f) == "NOT_FOUND"
    f = await c.request(
        "onebot", "del_message", {"id": "nobody", "type": "message", "content": {"message_id": 99}}
    )
    assert _err(f) == "NOT_FOUND"
    f = await c.request("openai", "abort", {"request_id": "nope"})
    assert _err(f) == "NOT_FOUND"


async def test_junk_flood_does_not_disturb_other_client(bridge: Bridge) -> None:
    noisy = await bridge.client("noisy")
    calm = await bridge.client("calm")

    async def flood() -> None:
        for i in range(1000):
            await noisy.send_raw("junk" if i % 2 else "[]")

    async def chat() -> list[dict]:
        out = []
        for _ in range(20):
            out.append(await calm.request("system", "heartbeat", {"timestamp": ""}))
        return out

    _, answers = await asyncio.gather(flood(), chat())
    assert all(f["code"] == 0 for f in answers)
    await noisy.wait_for(lambda f: False if len(noisy.frames) < 1000 else True, timeout=30)
    assert sum(1 for f in noisy.frames if f.get("data", {}).get("error") == "BAD_FRAME") == 1000
    assert not any(f.get("code") == 1 for f in calm.frames)
    assert (await noisy.request("system", "heartbeat", {}))["code"] == 0


# ----- pushes and outbox ------------------------------------------------------------------------


async def test_pushes_reach_every_connection_of_a_user_only(bridge: Bridge) -> None:
    tab1 = await bridge.client("erin")
    tab2 = await bridge.client("erin")
    stranger = await bridge.client("frank")
    delivered = await bridge.app.outbox.push("erin", _push("momo", 5, "hello erin"))
    assert delivered == 2
    for tab in (tab1, tab2):
        f = await tab.wait_push()
        assert f["type"] == "message" and f["code"] == 0
        content = f["data"]["content"]
        assert f["data"]["id"] == "momo" and content["message_id"] == 5
        assert content["message"] == [{"type": "text", "data": {"text": "hello erin"}}]
        assert content["sender"] == {"id": "momo", "name": "momo"}
    await bridge.app.outbox.push("erin", Push(kind="recall", contact="momo", message_id=5))
    f = await tab1.wait_push(lambda f: f["type"] == "del_msg")
    assert f["data"] == {"id": "momo", "type": "del_msg", "content": {"message_id": 5}}
    await stranger.request("system", "heartbeat", {})
    assert stranger.pushes() == []


async def test_outbox_delivered_in_order_once_after_login(bridge: Bridge) -> None:
    for i in range(1, 6):
        assert await bridge.app.outbox.push("gina", _push("momo", i, f"m{i}")) == 0
    c = await bridge.client("gina")
    await c.wait_for(lambda f: len(c.pushes()) >= 5)
    assert [p["data"]["content"]["message_id"] for p in c.pushes()] == [1, 2, 3, 4, 5]
    await c.close()
    again = await bridge.client("gina")
    await again.request("system", "heartbeat", {})
    assert again.pushes() == []  # delivered once only


async def test_outbox_survives_restart_and_is_bounded(bridge_factory) -> None:
    b = await bridge_factory(limits={"outbox_per_user": 3})
    for i in range(1, 6):
        await b.app.outbox.push("hana", _push("momo", i, f"m{i}"))
    await b.restart()
    c = await b.client("hana")
    await c.wait_for(lambda f: len(c.pushes()) >= 3)
    await c.request("system", "heartbeat", {})
    assert [p["data"]["content"]["message_id"] for p in c.pushes()] == [3, 4, 5]


async def test_push_while_offline_then_live(bridge: Bridge) -> None:
    await bridge.app.outbox.push("ivy", _push("momo", 1, "stored"))
    c = await bridge.client("ivy")
    await c.wait_for(lambda f: len(c.pushes()) >= 1)
    await bridge.app.outbox.push("ivy", _push("momo", 2, "live"))
    await c.wait_for(lambda f: len(c.pushes()) >= 2)
    assert [p["data"]["content"]["message_id"] for p in c.pushes()] == [1, 2]


# ----- HTTP routes and share ---------------------------------------------------------------------


async def test_http_routes_and_share(bridge: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.http}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(f"{bridge.http}/api/base_info") as r:
            body = await r.json()
            assert body["code"] == 0
            info = body["data"]
            assert {k: info[k] for k in ("admin_qq", "bot_qq", "title")} == {
                "admin_qq": "10001",
                "bot_qq": "10000",
                "title": "MomoBridge",
            }
            # With the web client's transport on (the default), its providers too.
            assert isinstance(info["llm_providers"], list)
        contactor = {"name": "Momo <3", "bio": "a & b", "avatar": "javascript:alert(1)"}
        async with http.post(f"{bridge.http}/api/share", json={"contactor": contactor}) as r:
            body = await r.json()
            assert r.status == 200 and body["code"] == 0
        share_url = body["data"]["shareUrl"]
        assert share_url.startswith(bridge.http + "/share/")
        async with http.get(share_url) as r:
            assert await r.json() == contactor
        async with http.get(body["data"]["previewImg"]) as r:
            assert r.headers["Content-Type"].startswith("image/svg+xml")
            svg = await r.text()
            assert "Momo &lt;3" in svg and "a &amp; b" in svg and "javascript" not in svg
        async with http.post(f"{bridge.http}/api/share", data=b"{nope") as r:
            assert r.status == 400 and (await r.json())["data"]["error"] == "INVALID_DATA"
        async with http.get(f"{bridge.http}/share/doesnotexist") as r:
            assert r.status == 404
        async with http.get(f"{bridge.http}/nowhere") as r:
            assert r.status == 404
    c = await bridge.client("sharer")
    f = await c.request("system", "share", {"contactor": {"name": "X"}})
    assert f["code"] == 0 and "/share/" in f["data"]["shareUrl"]


async def test_share_body_too_large(bridge_factory) -> None:
    b = await bridge_factory(server={"max_frame_bytes": 2048})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{b.http}/api/share", json={"contactor": {"bio": "x" * 5000}}) as r:
            assert r.status == 413
        async with http.get(f"{b.http}/healthz") as r:
            assert r.status == 200


async def test_server_pings_and_drops_silent_peer(bridge_factory) -> None:
    b = await bridge_factory(server={"idle_timeout": 0.6}, auth={"login_timeout": 120})
    # A client that never answers pings: disable its automatic pong by not reading.
    ws = await connect(b.url, ping_interval=None)
    ws.pong = None  # type: ignore[assignment]
    ws.transport.pause_reading()
    # The server gives up on it; wait on the server's own connection count.
    async with asyncio.timeout(10):
        await b.app.hub.wait_connections(0)
    ws.transport.abort()


async def test_server_answers_client_pings(bridge_factory) -> None:
    b = await bridge_factory()
    c = await b.client("pinger")
    waiter = await c.ws.ping(b"client-ping")
    async with asyncio.timeout(10):
        await waiter


async def test_quiet_client_that_answers_keepalive_pings_stays(bridge_factory) -> None:
    """A logged-in client that sends nothing but pongs to the hub's keep-alive pings outlives
    several idle timeouts."""
    b = await bridge_factory(server={"idle_timeout": 0.6})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(b.url, autoping=False, headers={"mio-chat-id": "quiet"}) as ws:
            pings = 0
            texts: list[dict] = []
            async with asyncio.timeout(15):
                while pings < 4:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.PING:
                        assert msg.data == b""  # keep-alive pings carry nothing
                        pings += 1
                        await ws.pong(msg.data)
                    else:
                        assert msg.type is aiohttp.WSMsgType.TEXT, msg
                        texts.append(json.loads(msg.data))
            assert [(t["type"], t["code"]) for t in texts] == [("login", 0)]
            assert not ws.closed
            assert b.app.hub.connection_count == 1


@pytest.mark.parametrize("compression", [True, False])
async def test_compression_negotiated_only_when_on_and_frames_arrive_whole(
    bridge_factory, compression: bool
) -> None:
    """With `server.compression` on, a deflate-capable client gets permessage-deflate: small
    frames go out uncompressed, large ones compressed, all in order and intact."""
    b = await bridge_factory(server={"compression": compression})
    c = await b.client("zip", compression="deflate")
    extensions = c.ws.response.headers.get("Sec-WebSocket-Extensions") or ""
    assert ("permessage-deflate" in extensions) is compression
    ids = [f"small-{i}" if i % 2 else f"large-{i}-" + "x" * 4000 for i in range(8)]
    for rid in ids:
        await c.send("system", "heartbeat", {}, request_id=rid)
    for rid in ids:
        answer = await c.reply(rid)
        assert answer["code"] == 0 and answer["request_id"] == rid
    answered = [f["request_id"] for f in c.frames if f.get("type") == "heartbeat"]
    assert answered == ids


async def test_sockets_that_never_complete_a_request_are_closed(bridge_factory) -> None:
    """A silent socket and one trickling half a request line are closed after the login
    timeout; the hub goes on serving."""
    b = await bridge_factory(auth={"login_timeout": 0.5})
    port = b.app.hub.port
    silent = await asyncio.open_connection("127.0.0.1", port)
    partial = await asyncio.open_connection("127.0.0.1", port)
    partial[1].write(b"GET /api/gateway HTTP/1.1\r\nHost: x")
    async with asyncio.timeout(10):
        for reader, writer in (silent, partial):
            assert await reader.read() == b""  # the server closed it
            writer.close()
    c = await b.client("after")
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def _raw_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return head[0], await reader.readexactly(n)


async def test_large_frames_are_deflated_small_ones_not(bridge_factory) -> None:
    """On the wire: with permessage-deflate negotiated, a small answer is sent plain (RSV1
    clear) and a large one compressed (RSV1 set), decodable with the peer's window."""
    import base64
    import zlib

    b = await bridge_factory(server={"compression": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", b.app.hub.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /api/gateway?mio-chat-id=wire HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0] and b"permessage-deflate" in head
        inflater = zlib.decompressobj(-15)
        first, payload = await _raw_frame(reader)  # the pushed login answer
        if first & 0x40:
            payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
        assert json.loads(payload)["type"] == "login"

        def masked(text: str) -> bytes:
            data = text.encode()
            mask = os.urandom(4)
            body = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            n = len(data)
            size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
            return bytes([0x81]) + size + mask + body

        for rid, compressed in (("small", False), ("large-" + "y" * 3000, True)):
            frame = {"request_id": rid, "protocol": "system", "type": "heartbeat", "data": {}}
            writer.write(masked(json.dumps(frame)))
            first, payload = await _raw_frame(reader)
            assert bool(first & 0x40) is compressed
            if compressed:
                assert len(payload) < 1000
                payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
            assert json.loads(payload)["request_id"] == rid
    writer.close()


async def test_no_context_takeover_is_honoured(bridge_factory) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    b = await bridge_factory(server={"compression": True})
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=True)
    c = await b.client("fresh", compression=None, extensions=[factory])
    extensions = c.ws.response.headers.get("Sec-WebSocket-Extensions") or ""
    assert "server_no_context_takeover" in extensions
    for i in range(4):
        rid = f"big-{i}-" + "z" * 2000
        assert (await c.request("system", "heartbeat", {}, request_id=rid))["request_id"] == rid


async def test_server_header_names_the_bridge(bridge_factory) -> None:
    b = await bridge_factory()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{b.http}/healthz") as r:
            assert r.status == 200
            assert r.headers["Server"] == "MomoBridge"


async def test_connection_limit_answers_503(bridge_factory) -> None:
    from websockets.exceptions import InvalidStatus

    b = await bridge_factory(server={"max_connections": 2})
    first = await b.client("one")
    await b.client("two")
    with pytest.raises(InvalidStatus) as e:
        await HubClient.open(b.url)
    assert e.value.response.status_code == 503
    await first.close()
    b.clients.remove(first)
    async with asyncio.timeout(10):
        await b.app.hub.wait_connections(1)
    await b.client("three")  # room again


# ----- shutdown ---------------------------------------------------------------------------------


async def test_graceful_stop_closes_clients_1001(bridge_factory) -> None:
    b = await bridge_factory()
    c1 = await b.client("x1")
    c2 = await b.client()
    await b.app.stop()
    assert await c1.wait_closed() == 1001
    assert await c2.wait_closed() == 1001
    b.clients.clear()
    b.app = type(b.app)(b.config)  # the fixture stops a fresh, unstarted app
    await b.app.start()


def test_sigterm_exits_zero_within_five_seconds_and_logs_no_secret(tmp_path: Path) -> None:
    """A real `momobridge serve` (embedded sandbox included): a logged-in admin and a chat
    reply, then SIGTERM. It exits 0 within 5 s, and its JSON log never shows a secret."""
    import subprocess

    secret = "adm1n-s3cret-code"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[server]\nport = 0\n[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
        f'[auth]\nadmin_code = "{secret}"\n[log]\nlevel = "debug"\nformat = "json"\n'
    )
    # A file, not a pipe: a pipe nobody drains would block the server once it fills.
    log_path = tmp_path / "serve.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--config", str(cfg)],
        stderr=log_file,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log_path.read_text().splitlines():
                if "momobridge.ready" in line:
                    port = json.loads(line)["url"].split(":")[2].split("/")[0]
            time.sleep(0.05)
        assert port, f"server did not start: {log_path.read_text()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200

        async def chat() -> None:
            c = await HubClient.open(f"ws://127.0.0.1:{port}/api/gateway")
            login = await c.login("boss", secret)
            assert login["data"]["is_admin"] is True
            momo = next(x["id"] for x in login["data"]["contacts"] if x.get("default"))
            rid = await c.send(
                "onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=momo
            )
            frames = await c.stream(rid)
            assert frames[-1]["message"] == "completed"
            await c.close()

        asyncio.run(chat())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
        log = log_path.read_text()
        assert '"event": "hub.login"' in log and '"event": "hub.close"' in log
        sandbox_password = hashlib.sha256(f"sandbox:{secret}".encode()).hexdigest()
        assert secret not in log and sandbox_password not in log
        assert "accessToken" not in log and "Bearer" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
