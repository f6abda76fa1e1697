"""The HTTP endpoints today's mio-chat client calls, over real loopback sockets: base info with
providers, presets from MomoHub characters, shares, image uploads, avatars, and JSON 404s for
the API paths the bridge does not offer."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.app import SANDBOX_EMAIL
from tests.conftest import Bridge
from tests.e2e.test_web_root import HTML, INDEX, make_build, raw_get
from tests.support.fake_openai import FakeOpenAI

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
WAIT = 15.0


@pytest.fixture
async def hub(bridge_factory, upstream: FakeOpenAI, tmp_path: Path) -> Bridge:
    return await bridge_factory(
        momohub={"enabled": True, "cache_ttl": 0.1},
        miochat={
            "socketio": True,
            "max_upload_bytes": 4096,
            "uploads_per_minute": 5,
            "web_root": str(make_build(tmp_path)),
        },
        openai={
            "default_model": "fake/echo",
            "providers": [{"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"}],
        },
    )


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as r:
        assert r.headers["Content-Type"].startswith("application/json"), url
        return r.status, await r.json()


def form(data: bytes, field: str = "image", name: str = "a.png") -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field(field, data, filename=name, content_type="image/png")
    return f


async def test_base_info_lists_every_provider(hub: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{hub.http}/api/base_info")
    assert status == 200 and body["code"] == 0 and body["message"] == "success"
    data = body["data"]
    assert (data["admin_qq"], data["bot_qq"], data["title"]) == ("10001", "10000", "MomoBridge")
    providers = data["llm_providers"]
    # The default model's provider first: the client starts new chats on it.
    assert [p["displayName"] for p in providers] == ["fake", "momohub"]
    fake, momohub = providers
    assert fake["adapterType"] == "openai" and fake["default_model"] == "echo"
    assert momohub["default_model"] == f"character:{MOMO}"
    assert all(p["description"] for p in providers)
    assert data["default_model"] == {"fake": "echo", "momohub": f"character:{MOMO}"}
    # The same keys as the Socket.IO login frame's `models`, each listing its default model.
    groups = {g.owner: g.models for g in hub.app.router.model_groups()}
    for p in providers:
        assert p["default_model"] in groups[p["displayName"]]


async def test_base_info_of_the_plain_hub_is_unchanged(bridge_factory) -> None:
    bridge = await bridge_factory(miochat={"socketio": False})
    async with aiohttp.ClientSession() as http:
        _, body = await get_json(http, f"{bridge.http}/api/base_info")
    assert body["data"] == {"admin_qq": "10001", "bot_qq": "10000", "title": "MomoBridge"}


async def test_tools_plugins_and_unsupported_api(hub: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{hub.http}/api/openai/tools")
        assert status == 200 and body == {"code": 0, "message": "success", "data": {"tools": {}}}
        status, body = await get_json(http, f"{hub.http}/api/onebot/plugins")
        assert status == 200 and body["data"] == {"options": {}}
        for path in ("/api/config", "/api/tasks", "/api/plugins", "/api/admin/dashboard/stats"):
            for headers in ({}, HTML):
                status, body = await get_json(http, f"{hub.http}{path}", headers=headers)
                assert status == 404 and body["code"] == 1, path
                assert body["message"] == "not supported by this bridge"
        async with http.put(f"{hub.http}/api/config/server", json={}) as r:
            assert r.status == 404 and (await r.json())["code"] == 1


async def test_presets_list_search_and_paging(hub: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{hub.http}/api/openai/presets"
        _, body = await get_json(http, url, params={"type": "recommended", "start": 0, "limit": 20})
        presets = body["data"]
        assert [p["name"] for p in presets][:1] == ["Momo"]  # the default character first
        assert {p["name"] for p in presets} >= {"Momo", "Kuro", "Sensei"}
        momo = presets[0]
        assert momo["model"] == f"character:{MOMO}" and momo["provider"] == "momohub"
        assert momo["history"] == [] and momo["tools"] == [] and momo["namePolicy"] == 1
        assert momo["title"].startswith("A cheerful") and momo["avatarPolicy"] == 0
        # What the client does with it: the provider whose login models list the model.
        groups = {g.owner: g.models for g in hub.app.router.model_groups()}
        assert [o for o, models in groups.items() if momo["model"] in models] == ["momohub"]

        _, system = await get_json(http, url, params={"type": "system", "start": 1, "limit": 1})
        assert [p["name"] for p in system["data"]] == [presets[1]["name"]]
        _, beyond = await get_json(http, url, params={"type": "common", "start": 500})
        assert beyond["data"] == []
        _, found = await get_json(http, url, params={"type": "search", "keyword": "kU"})
        assert [p["name"] for p in found["data"]] == ["Kuro"]
        _, none = await get_json(http, url, params={"type": "search", "keyword": "nobody"})
        assert none["data"] == []
        for bad in ({"limit": 101}, {"limit": 0}, {"start": -1}, {"start": "x"}, {"type": "x"}):
            status, body = await get_json(http, url, params=bad)
            assert status == 400 and body["code"] == 1 and body["message"], bad


async def test_character_avatar_in_presets_and_mava(hub: Bridge) -> None:
    assert hub.app.sandbox is not None
    store = hub.app.sandbox.state.store
    owner = store.user_by_email(SANDBOX_EMAIL)
    pic = "https://img.example/pixie.png"
    pixie = store.create_character(owner, {"name": "Pixie", "avatar": pic, "isPublic": True})
    async with aiohttp.ClientSession() as http:
        url = f"{hub.http}/api/openai/presets"
        async with asyncio.timeout(WAIT):
            while True:  # the target's cache refreshes every cache_ttl (0.1 s here)
                _, found = await get_json(http, url, params={"type": "search", "keyword": "pix"})
                if found["data"]:
                    break
                await asyncio.sleep(0.05)
        preset = found["data"][0]
        assert preset["avatar"] == pic and preset["avatarPolicy"] == 1
        mava = f"{hub.http}/p/mava"
        model = {"model": f"character:{pixie.id}", "provider": "momohub", "v": "2"}
        async with http.get(mava, params=model, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == pic
        for params in (
            {"model": f"character:{MOMO}"},
            {"model": "character:unknown"},
            {"model": "gpt-4o", "provider": "fake"},
            {"provider": "fake"},
            {"adapter": "openai"},
            {},
        ):
            async with http.get(mava, params=params) as r:
                assert r.status == 200, params
                assert r.headers["Content-Type"].startswith("image/svg+xml")
                assert (await r.text()).startswith("<svg")
        async with http.get(mava, params={"model": f"character:{MOMO}"}) as r:
            assert ">M</text>" in await r.text()


async def test_qava_draws_an_svg(hub: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/p/qava?q=1099834705", "/p/qava/?q=10001", "/p/qava", "/p/qava?q=<x>"):
            async with http.get(f"{hub.http}{path}") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml")
                text = await r.text()
                assert text.startswith("<svg") and "<x>" not in text
        async with http.get(f"{hub.http}/p/qava?q=1099834705") as r:
            first = await r.read()
        async with http.get(f"{hub.http}/p/qava?q=1099834705") as r:
            assert await r.read() == first  # the same number, the same picture


async def test_share_set_get_and_unknown(hub: Bridge) -> None:
    contactor = {"id": 7, "platform": "openai", "name": "Momo", "messageChain": [{"id": 1}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hub.http}/api/share/set", json={"contactor": contactor}) as r:
            body = await r.json()
            assert r.status == 200 and body["code"] == 0
        share_url = body["data"]["shareUrl"]
        assert share_url.startswith(f"{hub.http}/s/")
        share_id = share_url.rsplit("/", 1)[1]
        status, got = await get_json(http, f"{hub.http}/api/share", params={"id": share_id})
        assert status == 200 and got["code"] == 0 and got["data"]["contactor"] == contactor
        # The link itself opens the web client, whose router loads the share.
        async with http.get(share_url, headers=HTML) as r:
            assert r.status == 200 and await r.read() == INDEX
        status, got = await get_json(http, f"{hub.http}/api/share", params={"id": "nope"})
        assert status == 404 and got["code"] == 1 and got["message"]
        status, got = await get_json(http, f"{hub.http}/api/share", params={"id": "../x"})
        assert status == 400 and got["code"] == 1
        # The plain hub's share endpoint is untouched.
        async with http.post(f"{hub.http}/api/share", json={"contactor": contactor}) as r:
            assert (await r.json())["data"]["shareUrl"].startswith(f"{hub.http}/share/")
        too_big = {"contactor": {"name": "x" * (hub.config.share.max_bytes + 10)}}
        async with http.post(f"{hub.http}/api/share/set", json=too_big) as r:
            assert r.status == 413 and (await r.json())["code"] == 1
        async with http.post(f"{hub.http}/api/share/set", data=b"{not json") as r:
            assert r.status == 400 and (await r.json())["code"] == 1
        async with http.get(f"{hub.http}/api/share/set") as r:
            assert r.status == 405 and (await r.json())["code"] == 1


async def test_share_set_is_rate_limited(hub: Bridge) -> None:
    per_minute = hub.config.share.per_minute
    async with aiohttp.ClientSession() as http:

        async def post() -> int:
            async with http.post(f"{hub.http}/api/share/set", json={"contactor": {}}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(post() for _ in range(per_minute + 3)))
    assert statuses.count(200) == per_minute and statuses.count(429) == 3


async def test_upload_image_round_trip(hub: Bridge) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {"x-browser-fingerprint": "abc"}
        async with http.post(f"{hub.http}/api/upload/image", data=form(PNG), headers=headers) as r:
            body = await r.json()
            assert r.status == 200 and body["code"] == 0, body
        url = body["data"]["url"]
        name = hashlib.sha256(PNG).hexdigest()[:32] + ".png"
        assert url == f"{hub.http}/f/up/image/{name}"
        async with http.get(url) as r:
            assert r.status == 200 and await r.read() == PNG
            assert r.headers["Content-Type"] == "image/png"
            assert "immutable" in r.headers["Cache-Control"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        # The same image again: the same URL, stored once.
        async with http.post(f"{hub.http}/api/upload/image", data=form(PNG, name="b.jpg")) as r:
            assert (await r.json())["data"]["url"] == url
        stored = Path(hub.config.storage.path).parent / "uploads" / "image"
        assert [p.name for p in stored.iterdir()] == [name]


async def test_upload_refusals(hub: Bridge) -> None:
    up = f"{hub.http}/api/upload/image"
    async with aiohttp.ClientSession() as http:
        html = b"<html><script>alert(1)</script></html>"
        async with http.post(up, data=form(html, name="x.png")) as r:
            assert r.status == 415 and (await r.json())["code"] == 1
        big = PNG + b"\0" * 5000  # over max_upload_bytes (4096) while it streams in
        async with http.post(up, data=form(big)) as r:
            assert r.status == 413 and (await r.json())["code"] == 1
        async with http.post(up, data=form(PNG, field="file")) as r:
            assert r.status == 400 and "image" in (await r.json())["message"]
        async with http.post(up, json={"image": "data:image/png;base64,AAAA"}) as r:
            assert r.status == 400
        # Five uploads a minute from one address here (the refused ones count): the sixth
        # is refused.
        for _ in range(2):
            async with http.post(up, data=form(PNG)) as r:
                assert r.status == 200
        async with http.post(up, data=form(PNG)) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        async with http.get(up) as r:
            assert r.status == 405


@pytest.mark.parametrize(
    "target",
    [
        "/f/up/image/../../bridge.db",
        "/f/up/image/%2e%2e%2f%2e%2e%2fbridge.db",
        "/f/up/image/..%2fbridge.db",
        "/f/up/image/" + "0" * 32 + ".png",
        "/f/up/image/" + "0" * 32 + ".svg",
        "/f/up/image/",
        "/f/up/image/.tmp-x",
    ],
)
async def test_upload_names_are_strict(hub: Bridge, target: str) -> None:
    status, _, body = await raw_get(hub.app.port, target, HTML)
    assert status == 404 and body != INDEX and b"SQLite" not in body


async def test_upload_storage_cap(bridge_factory, tmp_path: Path) -> None:
    b = await bridge_factory(
        miochat={"max_upload_bytes": 600 * 1024, "max_upload_total_bytes": 1 << 20}
    )
    async with aiohttp.ClientSession() as http:

        async def upload(data: bytes) -> int:
            async with http.post(f"{b.http}/api/upload/image", data=form(data)) as r:
                await r.read()
                return r.status

        assert await upload(PNG + b"a" * 500_000) == 200
        assert await upload(PNG + b"b" * 500_000) == 200
        assert await upload(PNG + b"c" * 500_000) == 503
        assert await upload(PNG) == 200  # a small one still fits
