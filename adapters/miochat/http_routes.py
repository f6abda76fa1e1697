"""The hub's HTTP side on the same port: health, readiness, base info and shared contact cards.

The listener (`transport`, `server`) hands every request that is not a WebSocket upgrade on the
hub's paths to `HttpRoutes.handle`.

Shares are open to anyone who can reach the port (no login), so they are bounded every way:
a card's size (`share.max_bytes`, 413), shares per client address per minute (`share.per_minute`,
429 with Retry-After; IPv6 clients count per /64), their age (`share.ttl_days`: an expired share
is not served and is deleted by the next write) and their number (`share.max_total`: expired
shares make room first; with that many live ones stored, new shares are refused with 503
'share storage full' rather than dropping links people have already sent).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from adapters.miochat import protocol as P
from adapters.miochat.web_root import WebRoot
from bridge.errors import BridgeError, ErrorCode
from bridge.health import Health
from storage.shares import ShareStorageFull

if TYPE_CHECKING:
    from adapters.miochat.server import HubServer

log = structlog.get_logger(__name__)

WS_PATHS = {"/", "/api/gateway"}
# A set of pages mounted on the hub's port: the answer to a request it serves, else None.
Pages = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
DAY = 86400.0
# Client addresses the share limiter remembers at most; past this the least recently seen is
# forgotten (it starts afresh), so the table cannot grow with the number of addresses.
LIMITER_MAX_KEYS = 4096
# A Host header worth building a URL from: a DNS name or IPv4 address, or a bracketed IPv6
# address, with an optional port. Anything else (a path, a quote, spaces) is ignored.
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_UNSPECIFIED = {"0.0.0.0", "::", "[::]", ""}


class ShareRefused(BridgeError):
    """A share the limits refuse: a BridgeError for the WebSocket (a failure frame), with the
    HTTP status (and Retry-After) for `POST /api/share`."""

    def __init__(
        self, code: ErrorCode, reason: str, status: int, retry_after: int | None = None
    ) -> None:
        super().__init__(code, reason)
        self.status = status
        self.retry_after = retry_after


class RateLimiter:
    """At most ``limit`` hits per ``window`` seconds per key (a sliding window), in bounded
    memory: each key keeps at most ``limit`` timestamps, and at most ``max_keys`` keys are
    kept, the least recently seen dropped first."""

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_keys: int = LIMITER_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: str) -> float:
        """Count a hit for ``key``: 0.0 when allowed, else the seconds until one would be."""
        wait = self.wait(key)
        if wait == 0.0:
            self.record(key)
        return wait

    def wait(self, key: str) -> float:
        """0.0 when ``key`` may hit now, else the seconds until it may (nothing counted)."""
        hits = self._hits.get(key)
        if hits is None or len(hits) < self.limit:
            return 0.0
        return max(0.0, hits[0] + self.window - self._clock())

    def record(self, key: str) -> None:
        """Count a hit for ``key`` without asking (a failure, once it is known to be one)."""
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.limit)
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        hits.append(self._clock())  # full: the oldest, outside the window, falls off


def client_key(peer: str) -> str:
    """The rate-limit key of a "host:port" peer: the host; for IPv6 its /64 (one client
    usually holds a whole /64, and could otherwise take a fresh address per request)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    host = host.strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _need_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    return data


class HttpRoutes:
    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.config = hub.config
        self.storage = hub.storage
        # Set by the app: the registry behind /readyz (None: nothing to report, ready).
        self.health: Health | None = None
        self.share_limiter = RateLimiter(self.config.share.per_minute)
        # The mio-chat build served at / (None: `[miochat] web_root` unset).
        self.web = WebRoot.from_config(self.config.miochat.web_root)
        # The mio-chat client's endpoints. Imported here: that module builds on this one's helpers.
        from adapters.miochat.client_api import ClientApi

        self.client = ClientApi(self)
        self._pages: list[Pages] = []

    def public_url(self, request: web.Request | None) -> str:
        """Where clients reach this server: `server.public_url` if set, else the host the
        request was sent to (for `system/share`, the WebSocket upgrade request's): a reverse
        proxy's X-Forwarded-Host/-Proto, else the Host header. Never a wildcard address such
        as 0.0.0.0 (the bind address in a container, or what a proxy forwards to): then the
        bound address, or localhost. Only the requester sees the URL it gets, so trusting
        these headers lets nobody mislead anyone else.
        """
        if self.config.server.public_url:
            return self.config.server.public_url.rstrip("/")
        scheme = "http"
        host = _usable_host(_one_header(request, "X-Forwarded-Host"))
        if host is not None:
            proto = (_one_header(request, "X-Forwarded-Proto") or "").strip().lower()
            scheme = proto if proto in ("http", "https") else scheme
        else:
            host = _usable_host(_one_header(request, "Host"))
        if host is None:
            bind = self.config.server.host
            bind = "localhost" if bind in _UNSPECIFIED else bind
            if ":" in bind and not bind.startswith("["):
                bind = f"[{bind}]"
            host = f"{bind}:{self.hub.port}"
        return f"{scheme}://{host}"

    async def create_share(
        self, contactor: dict[str, Any], request: web.Request | None, peer: str = ""
    ) -> dict[str, str]:
        """Store a card and return its URLs, within the limits of the module doc.

        ``peer`` is the client's "host:port". Raises ShareRefused.
        """
        share_id = await self.store_share(contactor, peer)
        return self.share_links(share_id, request)

    def share_links(self, share_id: str, request: web.Request | None) -> dict[str, str]:
        base = self.public_url(request)
        return {
            "shareUrl": f"{base}/share/{share_id}",
            "previewImg": f"{base}/share/{share_id}/preview.svg",
        }

    async def store_share(self, contactor: dict[str, Any], peer: str) -> str:
        """Store a card within the limits; its id. Raises ShareRefused."""
        limits = self.config.share
        size = len(json.dumps(contactor, ensure_ascii=False).encode())
        if size > limits.max_bytes:
            raise ShareRefused(
                ErrorCode.INVALID_DATA,
                f"contact card too large: {size} bytes, at most {limits.max_bytes}",
                413,
            )
        wait = self.share_limiter.hit(client_key(peer))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ShareRefused(
                ErrorCode.RATE_LIMITED,
                f"too many shares: at most {limits.per_minute} a minute; try again in {seconds} s",
                429,
                retry_after=seconds,
            )
        try:
            share_id = await self.storage.shares.create(
                contactor, ttl=limits.ttl_days * DAY, max_total=limits.max_total
            )
        except ShareStorageFull:
            log.warning("share.storage_full", max_total=limits.max_total)
            raise ShareRefused(ErrorCode.UNAVAILABLE, "share storage full", 503) from None
        return share_id

    def add_pages(self, pages: Pages) -> None:
        """Serve more pages on this port (the console, /chat, /metrics): ``pages`` answers the
        requests it serves and returns None for the others; tried before the hub's own routes."""
        self._pages.append(pages)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        try:
            for pages in self._pages:
                answer = await pages(request)
                if answer is not None:
                    return answer
            return await self._route(request, request.method, path)
        except Exception:
            log.exception("http.crashed", path=path)
            return _json(500, _fail("internal error", ErrorCode.INTERNAL))

    def server_full(self) -> web.Response:
        log.warning("hub.connection_limit", limit=self.hub.max_connections)
        return _json(503, _fail("server is full, try again later", ErrorCode.BUSY))

    async def _route(self, request: web.Request, method: str, path: str) -> web.StreamResponse:
        if method == "OPTIONS":
            return _cors(web.Response(status=204))
        answer = await self.client.route(request, method, path)
        if answer is not None:
            return answer
        if method == "GET" and path == "/healthz":
            return _json(200, {"status": "ok", "connections": self.hub.connection_count})
        if method == "GET" and path == "/readyz":
            if self.health is None:
                body: dict[str, Any] = {"status": "ok", "components": {}}
            else:
                body = await self.health.snapshot()
            return _json(200 if body["status"] == "ok" else 503, body)
        if path == "/api/share":
            if method != "POST":
                return _json(405, _fail("use POST", ErrorCode.BAD_FRAME))
            return await self.share_from_body(request, self.share_links)
        if method == "GET" and path.startswith("/share/"):
            rest = path[len("/share/") :]
            share_id, _, tail = rest.partition("/")
            ttl = self.config.share.ttl_days * DAY
            contactor = await self.storage.shares.get(share_id, ttl=ttl) if share_id else None
            if contactor is None:
                return _json(404, _fail("no such share", ErrorCode.NOT_FOUND))
            if tail == "preview.svg":
                # Imported on first use: its XML escaping pulls in urllib/http modules.
                from adapters.miochat.share_card import render_card

                svg = render_card(contactor, self.config.server.title)
                return _cors(web.Response(text=svg, content_type="image/svg+xml", charset="utf-8"))
            if tail:
                return _json(404, _fail("no such page", ErrorCode.NOT_FOUND))
            if "text/html" in request.headers.get("Accept", ""):
                # A browser opening the link: the card as a page. Programs keep the JSON.
                from adapters.miochat.share_page import CSP, render_share_page

                preview = self.share_links(share_id, request)["previewImg"]
                html = render_share_page(contactor, self.config.server.title, preview)
                page = web.Response(text=html, content_type="text/html", charset="utf-8")
                page.headers["Content-Security-Policy"] = CSP
                page.headers["X-Content-Type-Options"] = "nosniff"
                page.headers["Vary"] = "Accept"
                # Built from this request's Host: no shared cache may keep it for others (nor
                # keep serving a share that has expired).
                page.headers["Cache-Control"] = "private, no-store"
                return _cors(page)
            resp = _json(200, contactor)
            # One URL, two representations: a cache must key on Accept.
            resp.headers["Vary"] = "Accept"
            return resp
        if path in WS_PATHS and method == "GET":
            if path == "/" and self.web is not None:
                return self.web.index()
            return _json(
                426,
                _fail(
                    "this is a WebSocket endpoint: connect with a WebSocket client",
                    ErrorCode.BAD_FRAME,
                ),
            )
        if self.web is not None and (page := self.web.serve(request)) is not None:
            return page
        if path.startswith("/api/"):
            return self.client.not_supported()
        return _json(404, _fail(f"no route {method} {path}", ErrorCode.NOT_FOUND))

    def max_body(self) -> int:
        """The largest request body read at all: no more than a WebSocket frame may carry, and
        far past what a card may be."""
        return min(self.config.server.max_frame_bytes, 4 * self.config.share.max_bytes + 1024)

    async def share_from_body(
        self,
        request: web.Request,
        links: Callable[[str, web.Request], dict[str, str]],
    ) -> web.Response:
        """A share from a `{"contactor": {...}}` body, answered with ``links(id, request)``."""
        too_large = _json(413, _fail("body too large", ErrorCode.INVALID_DATA))
        length = request.content_length
        if length is not None and length > self.max_body():
            return too_large  # refused before a byte of it is read
        try:
            raw = await request.read() or b"null"
        except web.HTTPRequestEntityTooLarge:
            return too_large
        try:
            # The hub's strict parser: depth, int64, NaN and lone surrogates are refused.
            body = P.loads(raw)
            data = P.ShareData.model_validate(_need_object(body))
        except (ValueError, ValidationError) as e:
            reason = (
                P.validation_reason(e)
                if isinstance(e, ValidationError)
                else f'body must be JSON {{"contactor": {{...}}}}: {e}'
            )
            return _json(400, _fail(reason, ErrorCode.INVALID_DATA))
        try:
            share_id = await self.store_share(data.contactor, peer_of(request))
        except ShareRefused as e:
            resp = _json(e.status, _fail(e.reason, e.code))
            if e.retry_after is not None:
                resp.headers["Retry-After"] = str(e.retry_after)
            return resp
        return _json(200, P.http_success(links(share_id, request)))


_fail = P.http_failure


def _cors(resp: web.Response) -> web.Response:
    h = resp.headers
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    h["Access-Control-Allow-Headers"] = "Content-Type"
    return resp


def _json(status: int, body: Any) -> web.Response:
    text = json.dumps(body, ensure_ascii=False)
    return _cors(web.Response(status=status, text=text, content_type="application/json"))


def peer_of(request: web.Request) -> str:
    """The client as "host:port", the way the WebSocket side names its peers."""
    transport = request.transport
    addr = transport.get_extra_info("peername") if transport is not None else None
    return f"{addr[0]}:{addr[1]}" if addr else ""


def _one_header(request: web.Request | None, name: str) -> str | None:
    """The header's value if the request has it exactly once (the first of a proxy chain's
    comma-separated list: the client-facing one)."""
    if request is None:
        return None
    values = request.headers.getall(name, [])
    return values[0].split(",", 1)[0] if len(values) == 1 else None


def _usable_host(value: str | None) -> str | None:
    """``host[:port]`` if it names a usable host (well formed, not a wildcard address)."""
    if value is None:
        return None
    host = value.strip()
    if not _HOST_RE.fullmatch(host):
        return None
    name = host[: host.rindex("]") + 1] if host.startswith("[") else host.partition(":")[0]
    if name in _UNSPECIFIED:
        return None
    return host
