"""Who may use the console: the admin code, console sessions, and the checks on state changes.

The console is reached in a browser, so its session lives in a cookie; what that cookie lets a
page do is kept narrow:

- the code is compared in constant time and logins are rate-limited per client address (bounded
  tables), so the code cannot be guessed by timing or by brute force at line speed: wrong codes
  (`[console] login_per_minute`) and, much more loosely, every attempt. Only failures count
  toward the tight limit, so that someone else's wrong guesses (behind a reverse proxy every
  client has the proxy's address) never refuse the admin's right code;
- the session id is random (32 bytes), kept server-side with its expiry (a cookie's own
  Max-Age is only a hint to the browser), in a bounded table: the oldest sessions go first;
- the cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it)
  and scoped to /console; Secure when the console is reached over https;
- a state change (POST) also needs the session's CSRF token in a header, which only the
  console's own script knows, and an Origin header naming this server: SameSite alone is not
  honoured by every browser, and the Origin check also covers a login from a foreign page.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "momobridge_console"
CSRF_HEADER = "X-Console-CSRF"
# Sessions kept at most; a new login past this forgets the oldest (an admin console has one or
# a few users, so this only matters to someone logging in over and over).
MAX_SESSIONS = 64


@dataclass(slots=True)
class ConsoleSession:
    id: str
    csrf: str
    expires: float  # on the table's clock


class SessionTable:
    """Console sessions with a server-side expiry, bounded in number."""

    def __init__(
        self,
        lifetime: float,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> ConsoleSession:
        self._purge()
        session = ConsoleSession(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._clock() + self.lifetime
        )
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _purge(self) -> None:
        now = self._clock()
        for sid in [s.id for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[sid]


def code_matches(given: str, admin_code: str) -> bool:
    """Constant time in the code's content (its length may show; the code is random and long)."""
    # surrogatepass: a lone surrogate (valid JSON, "\ud800") is a wrong code, not a crash.
    return bool(admin_code) and hmac.compare_digest(
        given.encode(errors="surrogatepass"), admin_code.encode()
    )


def is_https(request: web.Request, public_url: str) -> bool:
    """Whether the browser reached us over https: directly, through a proxy that says so, or
    (when set) by the configured public URL."""
    if public_url:
        return public_url.lower().startswith("https://")
    proto = request.headers.get("X-Forwarded-Proto", "").split(",", 1)[0].strip().lower()
    return request.secure or proto == "https"


def set_cookie(
    resp: web.StreamResponse, session: ConsoleSession, secure: bool, max_age: int
) -> None:
    resp.set_cookie(
        COOKIE,
        session.id,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_cookie(resp: web.StreamResponse) -> None:
    resp.del_cookie(COOKIE, path="/console")


def origin_allowed(request: web.Request, public_url: str) -> bool:
    """The request's Origin is this server: the configured public URL, or the host the request
    was sent to. A missing Origin is refused: browsers send it on every POST from a page."""
    origin = request.headers.get("Origin", "")
    if not origin or origin == "null":
        return False
    allowed = set()
    if public_url:
        parts = urlsplit(public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}".lower())
    host = request.headers.get("Host", "")
    if host:
        allowed.update({f"http://{host}".lower(), f"https://{host}".lower()})
    return origin.lower().rstrip("/") in allowed


def csrf_ok(request: web.Request, session: ConsoleSession) -> bool:
    given = request.headers.get(CSRF_HEADER, "")
    # surrogatepass: header bytes that are not UTF-8 arrive as lone surrogates (a wrong token).
    return bool(given) and hmac.compare_digest(
        given.encode(errors="surrogatepass"), session.csrf.encode()
    )
