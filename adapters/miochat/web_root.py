"""A mio-chat web-client build served at `/` (`[miochat] web_root`).

The build is a single-page app: `index.html`, hashed files under `/assets/`, a few fixed files
(icons, manifest, service workers) and `.gz` copies of the larger ones. What this module does:

- existing files only, for GET and HEAD: every path segment is checked (no `..`, no dotfiles, no
  empty segments, no backslashes or NULs; percent-decoding happens before the check, so `%2e%2e`
  is caught too), then the resolved file must still lie inside the root (a symlink pointing out
  is refused). Directories are never listed.
- a `.gz` sibling is sent when the client accepts gzip (aiohttp's FileResponse picks it and sets
  Content-Encoding); `Vary: Accept-Encoding` goes on every file so a shared cache never hands
  the compressed body to a client that cannot read it.
- caching: hashed `/assets/` files are immutable for a year; `index.html` and the service
  workers are `no-cache`, so a new build is picked up at the next visit; the rest an hour.
- SPA fallback: a GET for a path that is no file, is none of the bridge's own (API, Socket.IO,
  health, shares, uploads, avatars) and accepts HTML gets `index.html` (the client's router
  takes it from there: `/chat/123`, `/s/<share id>`). Anything else is left to the caller's
  404, so an API client never receives a page it cannot parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from aiohttp import web

# Paths the bridge answers itself (or refuses as JSON): never a file, never the SPA page.
RESERVED_PREFIXES = ("/api/", "/socket.io/", "/f/", "/p/", "/share/")
RESERVED_EXACT = frozenset({"/api", "/socket.io", "/f", "/p", "/share", "/healthz", "/readyz"})

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
SHORT = "public, max-age=3600"

Lookup = Path | Literal["missing", "refused"]


def is_reserved(path: str) -> bool:
    """Whether ``path`` belongs to the bridge's own routes rather than the web client."""
    return path in RESERVED_EXACT or path.startswith(RESERVED_PREFIXES)


def cache_control(rel: str) -> str:
    """The Cache-Control of a file at ``rel`` (relative to the root, '/'-separated)."""
    name = rel.rsplit("/", 1)[-1]
    if name == "index.html" or (name.startswith("service-worker") and name.endswith(".js")):
        return NO_CACHE
    if rel.startswith("assets/"):
        # Vite names them by content hash: a new build gets new names.
        return IMMUTABLE
    return SHORT


def accepts_html(request: web.Request) -> bool:
    """A browser navigation (Accept names text/html); fetch() and API clients do not ask for it."""
    return "text/html" in request.headers.get("Accept", "")


class WebRoot:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve(strict=True)
        self.index_path = self.root / "index.html"

    @classmethod
    def from_config(cls, web_root: str) -> WebRoot | None:
        return cls(web_root) if web_root else None

    def index(self) -> web.StreamResponse:
        return self._file(self.index_path, NO_CACHE)

    def serve(self, request: web.Request) -> web.StreamResponse | None:
        """The file or SPA page for a GET/HEAD, or None when it is not the web client's to
        answer (the caller then answers 404 or 405)."""
        if request.method not in ("GET", "HEAD"):
            return None
        path = request.path
        if path == "/":
            return self.index()
        if is_reserved(path):
            return None
        found = self.lookup(path)
        if found == "refused":
            return None
        if found == "missing":
            return self.index() if accepts_html(request) else None
        rel = found.relative_to(self.root).as_posix()
        return self._file(found, cache_control(rel))

    def lookup(self, path: str) -> Lookup:
        """The regular file ``path`` names inside the root, "missing", or "refused" for a path
        that tries to leave the root or reach a hidden file.

        Plain stat calls on the loop: a few microseconds on a local build directory, cheaper
        than a thread hop per request.
        """
        parts = path.split("/")[1:]
        for part in parts:
            if not part or part in (".", "..") or part.startswith("."):
                return "refused"
            if "\\" in part or "\x00" in part:
                return "refused"
        candidate = self.root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return "missing"
        if not resolved.is_relative_to(self.root):
            return "refused"
        if not resolved.is_file():
            return "missing"  # a directory: no listing
        return resolved

    @staticmethod
    def _file(path: Path, cache: str) -> web.StreamResponse:
        resp = web.FileResponse(path)
        resp.headers["Cache-Control"] = cache
        resp.headers["Vary"] = "Accept-Encoding"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp
