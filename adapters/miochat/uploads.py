"""Image uploads from the mio-chat client: `POST /api/upload/image`, served at `/f/up/image/<name>`.

Who may upload: anyone who can reach the port, like the reference server (it only asks for a
browser-fingerprint header, which anyone can send). The client uploads with a plain XHR that
carries no bridge credentials, so requiring a login would break it; the uploads are bounded
instead:

- one image at most `[miochat] max_upload_bytes` (413), counted while it streams in, so a
  larger body is never held in memory;
- only PNG, JPEG, GIF and WebP, recognised by their first bytes, never by the name or the
  declared type the client sends (415 otherwise), so nothing a browser could run as a page
  (HTML, SVG) is ever served back from this origin;
- `[miochat] uploads_per_minute` per client address (IPv6 per /64), 429 with Retry-After;
- all uploads together at most `[miochat] max_upload_total_bytes`: past it new uploads get 503
  'upload storage full'. Nothing is evicted, since URLs already sent in chats must keep working.

Files are named by content (the first 32 hex digits of their SHA-256 plus the extension), so
the same image uploaded twice is stored once and its URL never changes meaning; they are served
as immutable. They live in `uploads/image/` next to the database file.

On PostgreSQL (one database, possibly several nodes of a cluster behind a load balancer) an
upload is also stored in the database (storage.uploads), so any node serves its URL: a node
serves its local file when it has one, and otherwise reads the image from the database once,
keeps it in its own `uploads/image/` as a cache, and serves it like a local file (same content
type, same immutable caching); a name the database does not have either is a 404. There the cap
`max_upload_total_bytes` counts what the database holds, so it holds for the whole cluster
(nodes storing at the same time take turns), not for one node's folder. A database out of reach
is a 503. On SQLite nothing of this applies: uploads are files only, as above.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import BodyPartReader, web

from adapters.miochat.http_routes import RateLimiter, client_key, peer_of
from bridge.errors import ErrorCode
from bridge.locks import KeyedLocks

if TYPE_CHECKING:
    from adapters.miochat.client_api import ClientApi
    from storage.uploads import UploadRepo

log = structlog.get_logger(__name__)

URL_PREFIX = "/f/up/image/"
NAME_RE = re.compile(r"[0-9a-f]{32}\.(?:png|jpg|gif|webp)")
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
# Multipart framing and the other small form fields the client may add around the file.
FORM_OVERHEAD = 64 * 1024
CHUNK = 64 * 1024
# The longest a request waits for an image from the database (PostgreSQL), the turn of another
# request fetching the same one included; the database's own timeouts are shorter.
FETCH_TIMEOUT = 60.0


def sniff(head: bytes) -> str | None:
    """The extension of an image recognised by its first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


class TooLarge(Exception):
    pass


class Uploads:
    def __init__(self, api: ClientApi, directory: Path) -> None:
        self.api = api
        self.config = api.config.miochat
        self.directory = directory
        self.limiter = RateLimiter(self.config.uploads_per_minute)
        # Bytes stored, counted once from disk at the first upload and kept up to date after.
        self._total: int | None = None
        self._lock = asyncio.Lock()
        # PostgreSQL: the uploads are kept in the database too, for every node (see the
        # module's docstring); the local folder is then a cache. SQLite: files only.
        storage = api.http.storage
        self.shared: UploadRepo | None = (
            storage.uploads if storage.db.dialect == "postgresql" else None
        )
        # Per name: the requests waiting for it from the database take turns (one fetches,
        # the others then find the cached file).
        self._fetching = KeyedLocks()

    async def upload(self, request: web.Request) -> web.StreamResponse:
        limit = self.config.max_upload_bytes
        length = request.content_length
        if length is not None and length > limit + FORM_OVERHEAD:
            return self.api.fail(413, f"image too large: at most {limit} bytes")
        if not request.content_type.startswith("multipart/form-data"):
            return self.api.fail(400, "send multipart/form-data with the image in field 'image'")
        wait = self.limiter.hit(client_key(peer_of(request)))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            resp = self.api.fail(
                429,
                f"too many uploads: at most {self.config.uploads_per_minute} a minute; "
                f"try again in {seconds} s",
                ErrorCode.RATE_LIMITED,
            )
            resp.headers["Retry-After"] = str(seconds)
            return resp
        try:
            data = await self._read_image(request, limit)
        except TooLarge:
            return self.api.fail(413, f"image too large: at most {limit} bytes")
        except ValueError as e:
            return self.api.fail(400, f"bad multipart body: {e}")
        if data is None:
            return self.api.fail(400, "no file in field 'image'")
        ext = sniff(data[:16])
        if ext is None:
            return self.api.fail(
                415,
                "not an image this bridge stores (PNG, JPEG, GIF or WebP)",
                ErrorCode.INVALID_DATA,
            )
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
        if self.shared is None:
            stored = await self._store(name, data)
        else:
            try:
                stored = await self._store_shared(self.shared, name, data)
            except Exception:
                log.exception("upload.database_failed", name=name)
                return self.api.fail(503, "upload storage unavailable", ErrorCode.UNAVAILABLE)
        if not stored:
            log.warning("upload.storage_full", max_total=self.config.max_upload_total_bytes)
            return self.api.fail(503, "upload storage full", ErrorCode.UNAVAILABLE)
        url = f"{self.api.http.public_url(request)}{URL_PREFIX}{name}"
        return self.api.ok({"url": url})

    async def _read_image(self, request: web.Request, limit: int) -> bytes | None:
        """The `image` field's bytes (None if there is none), counting every part against the
        limits as it streams in."""
        reader = await request.multipart()
        found: bytes | None = None
        budget = limit + FORM_OVERHEAD
        while True:
            part = await reader.next()
            if part is None:
                return found
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart is not accepted")
            cap = limit if part.name == "image" and found is None else FORM_OVERHEAD
            chunks: list[bytes] = []
            size = 0
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                budget -= len(chunk)
                if size > cap or budget < 0:
                    raise TooLarge
                chunks.append(chunk)
            if part.name == "image" and found is None:
                found = b"".join(chunks)

    async def _store(self, name: str, data: bytes) -> bool:
        """Write the file unless it is there already; False when the total cap refuses it."""
        async with self._lock:
            path = self.directory / name
            if self._total is None:
                self._total = await asyncio.to_thread(self._count)
            if await asyncio.to_thread(path.is_file):
                return True  # the same image again: same name, same URL
            if self._total + len(data) > self.config.max_upload_total_bytes:
                return False
            await asyncio.to_thread(self._write, path, data)
            self._total += len(data)
            log.info("upload.stored", name=name, size=len(data))
            return True

    async def _store_shared(self, shared: UploadRepo, name: str, data: bytes) -> bool:
        """PostgreSQL: store the image in the database under the cluster-wide cap, then keep
        it in the local folder as a cache; False when the cap refuses it."""
        if not await shared.add(name, data, max_total=self.config.max_upload_total_bytes):
            return False
        log.info("upload.stored", name=name, size=len(data), shared=True)
        await self._cache(name, data)
        return True

    async def _cache(self, name: str, data: bytes) -> bool:
        """Keep an image of the database in the local folder; False (logged) when the folder
        refuses it: the database has it, so that is no failure of the request."""
        try:
            await asyncio.to_thread(self._write_cache, self.directory / name, data)
        except OSError as e:
            log.warning("upload.cache_failed", name=name, error=str(e))
            return False
        return True

    def _write_cache(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            self._write(path, data)

    def _count(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())

    def _write(self, path: Path, data: bytes) -> None:
        # Written aside and renamed, so a crash or a concurrent read never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def serve(self, request: web.Request, name: str) -> web.StreamResponse:
        """GET/HEAD of a stored upload. Only names this module makes are looked up at all, so
        no path can reach outside the directory (nor ask the database for anything else)."""
        if request.method not in ("GET", "HEAD"):
            return self.api.fail(405, "use GET")
        if not NAME_RE.fullmatch(name):
            return self._missing()
        path = self.directory / name
        if await asyncio.to_thread(path.is_file):
            return self._file_response(path, name)
        if self.shared is None:
            return self._missing()
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                return await self._serve_shared(self.shared, path, name)
        except Exception:
            log.exception("upload.database_failed", name=name)
            return self.api.fail(503, "upload storage unavailable", ErrorCode.UNAVAILABLE)

    async def _serve_shared(self, shared: UploadRepo, path: Path, name: str) -> web.StreamResponse:
        """PostgreSQL, no local file: the image from the database, kept as a local file first.
        Requests for one name take turns, so a burst of them reads it from the database once."""
        async with self._fetching.hold(name):
            if await asyncio.to_thread(path.is_file):
                return self._file_response(path, name)  # cached by the request before
            data = await shared.get(name)
            if data is None:
                return self._missing()
            if await self._cache(name, data):
                return self._file_response(path, name)
            return self._headers(web.Response(body=data), name)  # not cached: served anyway

    def _missing(self) -> web.Response:
        return self.api.fail(404, "no such file", ErrorCode.NOT_FOUND)

    def _file_response(self, path: Path, name: str) -> web.StreamResponse:
        return self._headers(web.FileResponse(path), name)

    @staticmethod
    def _headers(resp: web.StreamResponse, name: str) -> web.StreamResponse:
        resp.content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp
