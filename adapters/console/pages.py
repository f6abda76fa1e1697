"""The console's HTTP side: its static page, login and logout, and the guard every data
endpoint sits behind (see `auth` for the rules). The data endpoints themselves are in
`actions` (conversations, logs), `schedules` and `live` (the event stream)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from adapters.console import auth
from adapters.console.actions import Actions
from adapters.console.figures import RecentFigures
from adapters.console.live import LiveStreams
from adapters.console.overview import overview
from adapters.console.schedules import Schedules
from adapters.miochat.http_routes import RateLimiter, client_key, peer_of
from bridge.logging import ensure_recent_logs

if TYPE_CHECKING:
    from bridge.app import App

log = structlog.get_logger(__name__)

STATIC = Path(__file__).with_name("static")
# The only files served, by name: nothing else under the package is reachable.
STATIC_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
# The page loads only its own script and style, talks only to this origin, and cannot be framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A login body is a code and nothing else.
MAX_LOGIN_BODY = 4096
# Login attempts per client address per minute, right or wrong: bounds guessing even where the
# failure limit (`[console] login_per_minute`) cannot refuse a try before its code is checked.
LOGIN_ATTEMPTS_PER_MINUTE = 60

Handler = Callable[[web.Request, auth.ConsoleSession], Awaitable[web.StreamResponse]]


def json_response(status: int, body: Any) -> web.Response:
    resp = web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json"
    )
    return _hardened(resp)


def _hardened(resp: web.StreamResponse) -> web.StreamResponse:
    h = resp.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["X-Frame-Options"] = "DENY"
    h.setdefault("Cache-Control", "no-store")
    return resp


class Console:
    def __init__(self, app: App) -> None:
        self.app = app
        cfg = app.config.console
        self.started = time.monotonic()
        self.sessions = auth.SessionTable(cfg.session_hours * 3600.0)
        self.login_attempts = RateLimiter(LOGIN_ATTEMPTS_PER_MINUTE)
        self.login_failures = RateLimiter(cfg.login_per_minute)  # counts failures only
        self.actions = Actions(app)
        # One per console, shared by every page and stream (see `figures`).
        self.figures = RecentFigures(app.metrics)
        self.live = LiveStreams(app, self)
        # Set when the bridge stops (`App.stop` calls `console_stop` first): the live streams
        # end at once instead of at their next tick.
        self.stopping = asyncio.Event()
        app.console_stop = self.stopping.set
        # The log view reads the ring, which only a chain that has it fills.
        ensure_recent_logs()
        # (method, path after /console/api/) -> handler; POSTs also pass the CSRF checks.
        self._api: dict[tuple[str, str], Handler] = {
            ("GET", "session"): self._session_info,
            ("GET", "overview"): self._overview,
            ("GET", "events"): self.live.stream,
            ("POST", "logout"): self._logout,
            **self.actions.routes(),
            **Schedules(app).routes(),
        }

    @property
    def public_url(self) -> str:
        return self.app.config.server.public_url

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        path = request.path
        if path != "/console" and not path.startswith("/console/"):
            return None
        method = request.method
        if path in ("/console", "/console/"):
            if method != "GET":
                return json_response(405, {"error": "use GET"})
            return self._static("index.html", "text/html")
        if path.startswith("/console/static/"):
            name = path[len("/console/static/") :]
            if method != "GET" or name not in STATIC_FILES:
                return json_response(404, {"error": "no such file"})
            return self._static(name, STATIC_FILES[name])
        if path == "/console/api/login":
            if method != "POST":
                return json_response(405, {"error": "use POST"})
            return await self._login(request)
        if not path.startswith("/console/api/"):
            return json_response(404, {"error": "no such page"})
        handler = self._api.get((method, path[len("/console/api/") :]))
        session = self.sessions.get(request.cookies.get(auth.COOKIE))
        # Before anything else, a 404 included: without a session nothing is learnt here.
        if session is None:
            return json_response(401, {"error": "log in first"})
        if handler is None:
            return json_response(404, {"error": "no such endpoint"})
        if method != "GET":
            if not auth.origin_allowed(request, self.public_url):
                return json_response(403, {"error": "foreign origin"})
            if not auth.csrf_ok(request, session):
                return json_response(403, {"error": "missing or wrong CSRF token"})
        return await handler(request, session)

    def _static(self, name: str, content_type: str) -> web.StreamResponse:
        resp = web.Response(body=(STATIC / name).read_bytes(), content_type=content_type)
        if content_type.startswith("text/"):
            resp.charset = "utf-8"
        return _hardened(resp)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not auth.origin_allowed(request, self.public_url):
            return json_response(403, {"error": "foreign origin"})
        peer = client_key(peer_of(request))
        # Every try costs one of the minute's attempts, counted before the code is even read.
        wait = self.login_attempts.hit(peer)
        if wait > 0:
            return self._too_many(wait)
        if (request.content_length or 0) > MAX_LOGIN_BODY:
            return json_response(413, {"error": "body too large"})
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            # A chunked body has no Content-Length to refuse it by; aiohttp stops it at its
            # client_max_size.
            return json_response(413, {"error": "body too large"})
        try:
            body = json.loads(raw or b"null")
            code = body["code"] if isinstance(body, dict) else None
        except (ValueError, KeyError):
            code = None
        if not isinstance(code, str):
            return json_response(400, {"error": 'body must be {"code": "..."}'})
        hub = self.app.hub
        if hub is None or not auth.code_matches(code, hub.admin_code):
            # Only a wrong code is held back by the failures: the right one always gets in (a
            # shared address's guesser cannot lock the admin out); guessing is then bounded by
            # the attempts above.
            wait = self.login_failures.wait(peer)
            if wait > 0:
                return self._too_many(wait)
            self.login_failures.record(peer)
            log.warning("console.login_refused", peer=peer)
            return json_response(403, {"error": "wrong code"})
        session = self.sessions.create()
        log.info("console.login", peer=peer)
        resp = json_response(200, {"csrf": session.csrf})
        secure = auth.is_https(request, self.public_url)
        auth.set_cookie(resp, session, secure, int(self.sessions.lifetime))
        return resp

    @staticmethod
    def _too_many(wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        resp = json_response(429, {"error": f"too many attempts; try again in {seconds} s"})
        resp.headers["Retry-After"] = str(seconds)
        return resp

    async def _logout(self, request: web.Request, session: auth.ConsoleSession) -> web.Response:
        self.sessions.drop(session.id)
        resp = json_response(200, {"ok": True})
        auth.clear_cookie(resp)
        return resp

    async def _session_info(
        self, request: web.Request, session: auth.ConsoleSession
    ) -> web.Response:
        # A reloaded page has the cookie but not the token: it asks for it here (same-origin
        # only: a foreign page cannot read this answer).
        return json_response(200, {"csrf": session.csrf})

    async def _overview(self, request: web.Request, session: auth.ConsoleSession) -> web.Response:
        return json_response(200, await overview(self.app, self.started, self.figures))
