"""Serving /chat: three static files shipped in the package, read once at start.

The page is a plain client of the public hub protocol, so all the server does is hand out
files: no templating, nothing per user. The files are small, so they are kept in memory and
answered without touching the disk again.

Headers, and why:

- a strict Content-Security-Policy: scripts and styles only from this origin (no inline code,
  so an injected string can never run), WebSocket connections to the hub, images also from the
  web (character avatars live on MomoHub's CDN), and the page may not be framed;
- `no-cache` on everything: the files are not content-hashed, so a browser must revalidate
  (an ETag makes that a 304) or it would keep a stale script after an upgrade;
- `X-Content-Type-Options: nosniff` so a file is only ever run as what it is declared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' https: http: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
CACHE = "no-cache"
# URL path → (file in ./static, content type).
FILES = {
    "/chat": ("chat.html", "text/html"),
    "/chat/": ("chat.html", "text/html"),
    "/chat/chat.js": ("chat.js", "text/javascript"),
    "/chat/chat.css": ("chat.css", "text/css"),
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """The page's files by URL path, read from the installed package."""
    folder = resources.files(__package__) / "static"
    loaded: dict[str, StaticFile] = {}
    for path, (name, content_type) in FILES.items():
        body = (folder / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        loaded[path] = StaticFile(body, content_type, etag)
    return loaded


class ChatPages:
    """The `Pages` callable for /chat: a response for its paths, None for every other."""

    def __init__(self) -> None:
        self.files = load_files()

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        found = self.files.get(request.path)
        if found is None:
            # Other /chat/... paths are not ours: the mio-chat build served at / (`web_root`)
            # routes its conversations there (/chat/<id>), and without it the hub answers 404.
            return None
        if request.method not in ("GET", "HEAD"):
            return _headers(web.Response(status=405, text="405: GET only\n"))
        if request.headers.get("If-None-Match") == found.etag:
            resp = web.Response(status=304)
        else:
            # aiohttp leaves the body out of a HEAD answer itself.
            resp = web.Response(body=found.body, content_type=found.content_type, charset="utf-8")
        resp.headers["ETag"] = found.etag
        return _headers(resp)


def _headers(resp: web.Response) -> web.Response:
    h = resp.headers
    h["Content-Security-Policy"] = CSP
    h["Cache-Control"] = CACHE
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    return resp
