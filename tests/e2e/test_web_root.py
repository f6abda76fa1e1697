"""`[miochat] web_root`: a (tiny, fake) mio-chat build served at / over real loopback sockets:
files, gzip siblings, cache headers, the SPA fallback, traversal refused, and the WebSocket hub
at / untouched."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from bridge.config import MioChatConfig
from tests.conftest import Bridge, make_config
from tests.support.hub_client import HubClient

INDEX = b"<!doctype html><title>fake mio-chat</title><div id=app></div>"
ASSET = b"console.log('" + b"x" * 4000 + b"');"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def make_build(root: Path) -> Path:
    """A stand-in for a mio-chat build: index, a hashed asset with a .gz copy, a service worker,
    an icon, a dotfile, and a secret just outside the root."""
    web = root / "web"
    (web / "assets" / "js").mkdir(parents=True)
    (web / "static").mkdir()
    (web / "index.html").write_bytes(INDEX)
    (web / "assets" / "js" / "index-abc123.js").write_bytes(ASSET)
    (web / "assets" / "js" / "index-abc123.js.gz").write_bytes(gzip.compress(ASSET))
    (web / "service-worker.v5.js").write_bytes(b"self.addEventListener('fetch', () => {});")
    (web / "static" / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (web / ".env").write_bytes(b"SECRET=1")
    (root / "secret.txt").write_bytes(b"outside the root")
    return web


@pytest.fixture
async def site(bridge_factory, tmp_path: Path) -> Bridge:
    web = make_build(tmp_path)
    return await bridge_factory(miochat={"web_root": str(web), "socketio": True})


async def raw_get(port: int, target: str, headers: dict[str, str] | None = None) -> tuple:
    """One request with the target sent byte for byte (HTTP clients normalise `..` away)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    async with asyncio.timeout(10):
        raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body


async def test_index_assets_and_cache_headers(site: Bridge) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(f"{site.http}/", headers=HTML) as r:
            assert r.status == 200 and await r.read() == INDEX
            assert r.headers["Content-Type"].startswith("text/html")
            assert r.headers["Cache-Control"] == "no-cache"
        async with http.head(f"{site.http}/") as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(INDEX)
        url = f"{site.http}/assets/js/index-abc123.js"
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as r:
            assert r.status == 200 and await r.read() == ASSET
            assert "javascript" in r.headers["Content-Type"]
            assert "immutable" in r.headers["Cache-Control"]
            assert r.headers["Vary"] == "Accept-Encoding"
            assert "Content-Encoding" not in r.headers
        async with http.get(url, headers={"Accept-Encoding": "gzip, deflate"}) as r:
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await r.read()) == ASSET
            assert r.headers["Vary"] == "Accept-Encoding"
            assert "javascript" in r.headers["Content-Type"]
        async with http.get(f"{site.http}/service-worker.v5.js") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
        async with http.get(f"{site.http}/static/icon.png") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            assert r.headers["Cache-Control"] == "public, max-age=3600"


async def test_spa_fallback_only_for_pages(site: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        for page in ("/chat/123", "/s/42", "/settings/client", "/auth"):
            async with http.get(f"{site.http}{page}", headers=HTML) as r:
                assert r.status == 200 and await r.read() == INDEX, page
                assert r.headers["Cache-Control"] == "no-cache"
        # A missing file asked for by a script is a 404, not a page it would try to run.
        async with http.get(f"{site.http}/assets/js/gone-000.js") as r:
            assert r.status == 404
        # The bridge's own paths never become the page, HTML accepted or not.
        for path in ("/api/config", "/api/nope", "/share/zzz", "/f/up/image/a.png"):
            async with http.get(f"{site.http}{path}", headers=HTML) as r:
                assert r.status == 404, path
                assert r.headers["Content-Type"].startswith("application/json"), path
        # Socket.IO's own answer (a refused handshake), not the page.
        async with http.get(f"{site.http}/socket.io/?EIO=1", headers=HTML) as r:
            assert r.status >= 400 and await r.read() != INDEX
        async with http.get(f"{site.http}/healthz", headers=HTML) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        # Writes are not the web client's.
        async with http.post(f"{site.http}/chat/123", headers=HTML) as r:
            assert r.status == 404


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/.env",
        "/%2eenv",
        "/assets/",
        "//etc/passwd",
    ],
)
async def test_traversal_and_dotfiles_refused(site: Bridge, target: str) -> None:
    status, head, body = await raw_get(site.app.port, target, HTML)
    assert b"outside the root" not in body and b"SECRET" not in body
    assert b"root:" not in body
    # Refused outright: neither the file nor the SPA page.
    assert status == 404 and body != INDEX, (status, head)


async def test_symlink_out_of_root_refused(site: Bridge, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.txt", tmp_path / "web" / "link.txt")
    status, _, body = await raw_get(site.app.port, "/link.txt")
    assert status == 404 and b"outside the root" not in body


async def test_websocket_at_root_still_works(site: Bridge) -> None:
    for path in ("/", "/api/gateway"):
        c = await HubClient.open(f"ws://127.0.0.1:{site.app.port}{path}")
        site.clients.append(c)
        login = await c.login("webby")
        assert login["code"] == 0
        pong = await c.request("system", "heartbeat", {"timestamp": 1})
        assert pong["code"] == 0


async def test_without_web_root_root_stays_426(bridge: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.http}/", headers=HTML) as r:
            assert r.status == 426
        async with http.get(f"{bridge.http}/chat/123", headers=HTML) as r:
            assert r.status == 404


def test_web_root_without_index_is_a_config_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match=r"no index\.html"):
        MioChatConfig(web_root=str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="not a directory"):
        make_config(tmp_path, miochat={"web_root": str(tmp_path / "nowhere")})
    assert MioChatConfig(web_root="").web_root == ""
