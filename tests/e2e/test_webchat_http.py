"""/chat and the share page over real HTTP: what is served, with which headers, and when not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from adapters.webchat.pages import CSP
from tests.conftest import Bridge


async def test_chat_files_are_served_with_types_cache_and_csp(bridge: Bridge) -> None:
    expected = {
        "/chat": "text/html",
        "/chat/": "text/html",
        "/chat/chat.js": "text/javascript",
        "/chat/chat.css": "text/css",
    }
    async with aiohttp.ClientSession() as http:
        for path, content_type in expected.items():
            async with http.get(bridge.http + path) as r:
                assert r.status == 200, path
                assert r.content_type == content_type
                assert r.headers["Cache-Control"] == "no-cache"
                assert r.headers["Content-Security-Policy"] == CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                etag = r.headers["ETag"]
                body = await r.read()
            assert body
            async with http.get(bridge.http + path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304
        async with http.head(bridge.http + "/chat/chat.js") as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) > 0
        async with http.get(bridge.http + "/chat/nothing.js") as r:
            assert r.status == 404
        async with http.post(bridge.http + "/chat") as r:
            assert r.status == 405
        # The page's module is plain JavaScript with no outside origin in it (no CDN, no fonts).
        async with http.get(bridge.http + "/chat/chat.js") as r:
            script = await r.text()
        assert "http://" not in script and "https://" not in script


async def test_chat_page_off(bridge_factory: Callable[..., Awaitable[Bridge]]) -> None:
    b = await bridge_factory(console={"chat_page": False})
    async with aiohttp.ClientSession() as http, http.get(b.http + "/chat") as r:
        assert r.status == 404
        assert r.content_type == "application/json"


async def test_share_page_for_browsers_json_for_programs(bridge: Bridge) -> None:
    card = {
        "name": '"><img src=x onerror=alert(1)>',
        "bio": "<script>alert(1)</script>",
        "avatar": "javascript:alert(1)",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(bridge.http + "/api/share", json={"contactor": card}) as r:
            url = (await r.json())["data"]["shareUrl"]
        async with http.get(url, headers={"Accept": "text/html,*/*;q=0.8"}) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src" not in r.headers["Content-Security-Policy"]
            assert r.headers["Vary"] == "Accept"
            assert r.headers["Cache-Control"] == "private, no-store"
            page = await r.text()
        async with http.get(url, headers={"Accept": "application/json"}) as r:
            assert r.status == 200 and await r.json() == card
        async with http.get(
            url.replace("/share/", "/share/nope"), headers={"Accept": "text/html"}
        ) as r:
            assert r.status == 404 and r.content_type == "application/json"
    assert "<script>" not in page and "<img src=x" not in page and "javascript:" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
