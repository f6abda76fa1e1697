"""Shared contact cards over real sockets: size, rate, age and count limits; share URLs."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from tests.conftest import Bridge
from tests.support.hub_client import HubClient

DAY = 86400.0


def _card(size: int) -> dict[str, str]:
    """A contact card whose JSON is about ``size`` bytes."""
    return {"name": "Momo", "bio": "x" * max(0, size - 30)}


async def _age_all_shares(bridge: Bridge, days: float) -> None:
    assert bridge.app.storage is not None
    db = bridge.app.storage.db.conn
    await db.execute("UPDATE shares SET created = created - ?", (days * DAY,))
    await db.commit()


async def _count(bridge: Bridge) -> int:
    assert bridge.app.storage is not None
    return await bridge.app.storage.shares.count()


def _data_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())


async def test_rapid_posts_are_rate_limited_and_disk_stays_small(bridge: Bridge) -> None:
    per_minute = bridge.config.share.per_minute
    max_bytes = bridge.config.share.max_bytes
    db_path = Path(bridge.config.storage.path)
    before = _data_size(db_path)
    card = _card(max_bytes - 100)
    async with aiohttp.ClientSession() as http:

        async def post() -> tuple[int, str | None, dict]:
            async with http.post(f"{bridge.http}/api/share", json={"contactor": card}) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()

        results = await asyncio.gather(*(post() for _ in range(100)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == per_minute
    assert statuses.count(429) == 100 - per_minute
    for status, retry_after, body in results:
        if status == 429:
            assert retry_after is not None and 1 <= int(retry_after) <= 60
            assert body["data"]["error"] == "RATE_LIMITED"
    assert await _count(bridge) <= per_minute
    # At most per_minute cards of max_bytes each (plus database overhead), not 100 of them.
    assert _data_size(db_path) - before < per_minute * max_bytes * 4

    # The WebSocket path shares the same budget per address.
    c = await bridge.client("sharer")
    f = await c.request("system", "share", {"contactor": {"name": "X"}})
    assert f["code"] == 1 and f["data"]["error"] == "RATE_LIMITED"
    assert await _count(bridge) <= per_minute


async def test_limit_is_per_client_address(bridge_factory) -> None:
    b = await bridge_factory(share={"per_minute": 2})
    async with aiohttp.ClientSession() as http:
        for expected in (200, 200, 429):
            async with http.post(f"{b.http}/api/share", json={"contactor": {"n": 1}}) as r:
                assert r.status == expected
    # Another loopback address has a budget of its own.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        async with other.post(f"{b.http}/api/share", json={"contactor": {"n": 2}}) as r:
            assert r.status == 200
    assert await _count(b) == 3


async def test_too_large_card_is_refused_on_both_paths(bridge_factory) -> None:
    b = await bridge_factory(share={"max_bytes": 1024})
    big = _card(2048)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{b.http}/api/share", json={"contactor": big}) as r:
            assert r.status == 413
            body = await r.json()
            assert body["data"]["error"] == "INVALID_DATA" and "1024" in body["data"]["reason"]
        async with http.post(f"{b.http}/api/share", json={"contactor": _card(900)}) as r:
            assert r.status == 200
    c = await b.client("big")
    f = await c.request("system", "share", {"contactor": big})
    assert f["code"] == 1 and f["data"]["error"] == "INVALID_DATA"
    assert "too large" in f["data"]["reason"]
    assert await _count(b) == 1


async def test_expired_share_is_gone(bridge_factory) -> None:
    b = await bridge_factory(share={"ttl_days": 30})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{b.http}/api/share", json={"contactor": {"name": "old"}}) as r:
            old_url = (await r.json())["data"]["shareUrl"]
        async with http.get(old_url) as r:
            assert r.status == 200
        await _age_all_shares(b, 31)
        async with http.get(old_url) as r:
            assert r.status == 404
        async with http.get(old_url + "/preview.svg") as r:
            assert r.status == 404
        # The next write deletes it.
        async with http.post(f"{b.http}/api/share", json={"contactor": {"name": "new"}}) as r:
            new_url = (await r.json())["data"]["shareUrl"]
        async with http.get(new_url) as r:
            assert r.status == 200 and (await r.json()) == {"name": "new"}
    assert await _count(b) == 1


async def test_storage_full_drops_expired_then_refuses(bridge_factory) -> None:
    b = await bridge_factory(share={"max_total": 3, "per_minute": 100, "ttl_days": 1})
    async with aiohttp.ClientSession() as http:

        async def post(n: int) -> aiohttp.ClientResponse:
            async with http.post(f"{b.http}/api/share", json={"contactor": {"n": n}}) as r:
                await r.read()
                return r

        for n in range(3):
            assert (await post(n)).status == 200
        r = await post(3)
        assert r.status == 503
        c = await b.client("full")
        f = await c.request("system", "share", {"contactor": {"n": 4}})
        assert f["code"] == 1 and f["data"]["reason"] == "share storage full"
        assert await _count(b) == 3
        await _age_all_shares(b, 2)  # all expired: they make room
        assert (await post(5)).status == 200
    assert await _count(b) == 1


# ----- share URLs -------------------------------------------------------------------------------


async def test_share_url_follows_the_host_header_on_http(bridge_factory) -> None:
    b = await bridge_factory(server={"host": "0.0.0.0"})
    async with aiohttp.ClientSession() as http:
        headers = {"Host": "chat.example.test:8443"}
        async with http.post(
            f"{b.http}/api/share", json={"contactor": {"name": "h"}}, headers=headers
        ) as r:
            data = (await r.json())["data"]
        assert data["shareUrl"].startswith("http://chat.example.test:8443/share/")
        assert data["previewImg"].endswith("/preview.svg")
        # A wildcard or garbage Host never becomes the URL.
        for bad in ("0.0.0.0:3080", 'evil"><script>', "a/b"):
            async with http.post(
                f"{b.http}/api/share", json={"contactor": {"name": "h"}}, headers={"Host": bad}
            ) as r:
                url = (await r.json())["data"]["shareUrl"]
            assert url.startswith(f"http://localhost:{b.app.port}/share/"), url
        # Behind a reverse proxy (which forwards Host: 0.0.0.0:3080, say), its forwarded host.
        proxied = {
            "Host": "0.0.0.0:3080",
            "X-Forwarded-Host": "momo.example.net",
            "X-Forwarded-Proto": "https",
        }
        async with http.post(
            f"{b.http}/api/share", json={"contactor": {"name": "h"}}, headers=proxied
        ) as r:
            assert (await r.json())["data"]["shareUrl"].startswith(
                "https://momo.example.net/share/"
            )
        # The URL's path works on this server.
        path = data["shareUrl"].split("8443", 1)[1]
        async with http.get(f"{b.http}{path}") as r:
            assert await r.json() == {"name": "h"}


async def test_share_url_follows_the_host_header_on_websocket(bridge_factory) -> None:
    b = await bridge_factory(server={"host": "0.0.0.0"})
    # Dial the bridge but name another host in the URL: the upgrade request's Host says it.
    sock = socket.create_connection(("127.0.0.1", b.app.port))
    c = await HubClient.open("ws://share.example.test:9443/api/gateway", sock=sock)
    b.clients.append(c)
    await c.login("hosty")
    f = await c.request("system", "share", {"contactor": {"name": "w"}})
    assert f["code"] == 0, f
    assert f["data"]["shareUrl"].startswith("http://share.example.test:9443/share/")
    assert "0.0.0.0" not in f["data"]["previewImg"]
    # Through a proxy that forwards to the bind address, the forwarded host counts.
    sock = socket.create_connection(("127.0.0.1", b.app.port))
    proxied = await HubClient.open(
        "ws://0.0.0.0:3080/api/gateway",
        sock=sock,
        additional_headers={"X-Forwarded-Host": "momo.example.net", "X-Forwarded-Proto": "https"},
    )
    b.clients.append(proxied)
    await proxied.login("proxied")
    f = await proxied.request("system", "share", {"contactor": {"name": "w"}})
    assert f["data"]["shareUrl"].startswith("https://momo.example.net/share/"), f


async def test_public_url_wins_over_the_host_header(bridge_factory) -> None:
    b = await bridge_factory(server={"public_url": "https://momo.example.org/"})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{b.http}/api/share",
            json={"contactor": {"name": "p"}},
            headers={"Host": "internal:3080"},
        ) as r:
            assert (await r.json())["data"]["shareUrl"].startswith(
                "https://momo.example.org/share/"
            )
    c = await b.client("pub")
    f = await c.request("system", "share", {"contactor": {"name": "p"}})
    assert f["data"]["shareUrl"].startswith("https://momo.example.org/share/")


async def test_fallback_names_the_bound_address(bridge_factory) -> None:
    """A request without a usable Host gets the bound address, never a wildcard."""
    host = "127.0.0.1"
    b = await bridge_factory(server={"host": host})
    reader, writer = await asyncio.open_connection("127.0.0.1", b.app.port)
    body = b'{"contactor": {"name": "n"}}'
    writer.write(
        b"POST /api/share HTTP/1.1\r\nHost: 0.0.0.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert b" 200 " in raw.split(b"\r\n", 1)[0]
    assert f"http://{host}:{b.app.port}/share/".encode() in raw


async def test_hostile_share_bodies_get_a_clear_400_and_nothing_is_stored(bridge: Bridge) -> None:
    bodies = {
        "nesting": b'{"contactor":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        "surrogate": b'{"contactor":{"name":"\\ud800"}}',
        "nan": b'{"contactor":{"x":NaN}}',
        "bigint": b'{"contactor":{"x":' + b"9" * 400 + b"}}",
    }
    async with aiohttp.ClientSession() as http:
        for name, body in bodies.items():
            async with http.post(f"{bridge.http}/api/share", data=body) as r:
                answer = await r.json()
                assert r.status == 400, (name, r.status, answer)
                assert answer["data"]["error"] == "INVALID_DATA", (name, answer)
        # Far past a card's size: refused before it is parsed.
        big = b'{"contactor":{"bio":"' + b"x" * (8 * bridge.config.share.max_bytes) + b'"}}'
        async with http.post(f"{bridge.http}/api/share", data=big) as r:
            assert r.status == 413
        async with http.get(f"{bridge.http}/healthz") as r:
            assert r.status == 200
    assert await _count(bridge) == 0
