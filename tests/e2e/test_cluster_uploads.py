"""Image uploads (adapters/miochat/uploads.py) on bridges sharing one PostgreSQL, as cluster
nodes on a real Redis: an image uploaded on one node is served by another (its own data folder
never had it), the cap on all uploads holds for the cluster, and a bridge on SQLite still keeps
its uploads as files only."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Bridge
from tests.e2e.test_client_api import PNG, form
from tests.e2e.test_cluster_nodes import cluster

TIMEOUT = aiohttp.ClientTimeout(total=15)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 2


def folder(bridge: Bridge) -> Path:
    return Path(bridge.config.storage.path).resolve().parent / "uploads" / "image"


def name_of(data: bytes, ext: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"


async def node(
    bridge_factory, postgres_dsn: str, redis_url: str, tmp_path: Path, node_id: str, **extra: Any
) -> Bridge:
    # Each node's data folder of its own (as on separate machines): only the database is shared.
    return await bridge_factory(
        storage={"url": postgres_dsn, "path": str(tmp_path / node_id / "bridge.db")},
        cluster=cluster(redis_url, node_id),
        **extra,
    )


async def upload(http: aiohttp.ClientSession, bridge: Bridge, data: bytes) -> tuple[int, Any]:
    async with http.post(f"{bridge.http}/api/upload/image", data=form(data)) as r:
        return r.status, await r.json()


# The database and Redis come first, so they go last: the bridges stop before them.


async def test_an_image_uploaded_on_one_node_is_served_by_another(
    postgres_dsn: str, redis_url: str, tmp_path: Path, bridge_factory
) -> None:
    a = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-a")
    b = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-b")
    assert folder(a) != folder(b)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for data, ext, kind in ((PNG, "png", "image/png"), (JPEG, "jpg", "image/jpeg")):
            status, body = await upload(http, a, data)
            assert status == 200 and body["code"] == 0, body
            name = name_of(data, ext)
            assert body["data"]["url"] == f"{a.http}/f/up/image/{name}"
            assert (folder(a) / name).is_file()  # the uploading node keeps its file too
            assert not (folder(b) / name).exists()
            # The URL on node B (where a load balancer may send the browser).
            for method in ("GET", "GET", "HEAD"):  # the database, then B's cached copy
                async with http.request(method, f"{b.http}/f/up/image/{name}") as r:
                    got = await r.read()
                    assert r.status == 200, (method, got)
                    assert got == (data if method == "GET" else b"")
                    assert r.headers["Content-Type"] == kind
                    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
                    if method == "HEAD":
                        assert int(r.headers["Content-Length"]) == len(data)
                assert (folder(b) / name).read_bytes() == data  # cached on B
        # A name nobody uploaded, on either node; a name that is no upload's at all.
        for bridge in (a, b):
            for target in ("0" * 32 + ".png", name_of(PNG, "gif"), "x.png"):
                async with http.get(f"{bridge.http}/f/up/image/{target}") as r:
                    assert r.status == 404 and (await r.json())["code"] == 1
        # Stored once, whichever node is asked: the database holds the two images.
        status, body = await upload(http, b, PNG)
        assert status == 200 and body["data"]["url"] == f"{b.http}/f/up/image/{name_of(PNG, 'png')}"
    assert await a.app.storage.uploads.total() == len(PNG) + len(JPEG)


async def test_the_cap_on_all_uploads_holds_across_the_cluster(
    postgres_dsn: str, redis_url: str, tmp_path: Path, bridge_factory
) -> None:
    limits = {"miochat": {"max_upload_bytes": 600 * 1024, "max_upload_total_bytes": 1 << 20}}
    a = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-a", **limits)
    b = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-b", **limits)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        assert (await upload(http, a, PNG + b"a" * 500_000))[0] == 200
        assert (await upload(http, a, PNG + b"b" * 500_000))[0] == 200
        # Node B's own folder is empty, but the cluster's uploads are full.
        status, body = await upload(http, b, PNG + b"c" * 500_000)
        assert status == 503 and body["message"] == "upload storage full", body
        assert not folder(b).exists() or not any(folder(b).iterdir())
        assert (await upload(http, b, PNG))[0] == 200  # a small one still fits
        # What was refused is served by no node.
        refused = name_of(PNG + b"c" * 500_000, "png")
        for bridge in (a, b):
            async with http.get(f"{bridge.http}/f/up/image/{refused}") as r:
                assert r.status == 404
    assert await b.app.storage.uploads.total() == 2 * (len(PNG) + 500_000) + len(PNG)


async def test_a_bridge_on_sqlite_keeps_its_uploads_as_files_only(bridge_factory) -> None:
    b = await bridge_factory()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        status, body = await upload(http, b, PNG)
        assert status == 200, body
        async with http.get(body["data"]["url"]) as r:
            assert r.status == 200 and await r.read() == PNG
        name = name_of(PNG, "png")
        assert [p.name for p in folder(b).iterdir()] == [name]
        # The file gone, the URL is gone: the database is no second copy on SQLite.
        (folder(b) / name).unlink()
        async with http.get(body["data"]["url"]) as r:
            assert r.status == 404
    assert await b.app.storage.uploads.total() == 0


async def test_a_burst_reads_the_database_once_and_a_copy_refused_is_served_anyway(
    postgres_dsn: str, redis_url: str, tmp_path: Path, bridge_factory, monkeypatch
) -> None:
    a = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-a")
    b = await node(bridge_factory, postgres_dsn, redis_url, tmp_path, "node-b")
    assert b.app.hub is not None
    uploads = b.app.hub.http.client.uploads
    assert uploads.shared is not None
    reads: list[str] = []
    get = uploads.shared.get

    async def counting(name: str) -> bytes | None:
        reads.append(name)
        return await get(name)

    monkeypatch.setattr(uploads.shared, "get", counting)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:

        async def fetch(bridge: Bridge, name: str) -> tuple[int, bytes, str]:
            async with http.get(f"{bridge.http}/f/up/image/{name}") as r:
                return r.status, await r.read(), r.headers["Content-Type"]

        assert (await upload(http, a, PNG))[0] == 200
        name = name_of(PNG, "png")
        got = await asyncio.gather(*(fetch(b, name) for _ in range(8)))
        assert got == [(200, PNG, "image/png")] * 8
        assert reads == [name]  # the others found B's cached copy

        # B's folder refuses the copy (full, read-only): the image is served all the same.
        def refuse(path: Path, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(uploads, "_write_cache", refuse)
        assert (await upload(http, a, JPEG))[0] == 200
        jpg = name_of(JPEG, "jpg")
        assert await fetch(b, jpg) == (200, JPEG, "image/jpeg")
        assert not (folder(b) / jpg).exists()
        async with http.get(f"{b.http}/f/up/image/{jpg}") as r:
            assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
