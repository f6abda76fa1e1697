"""The hub's HTTP side on the same port: health, base info and shared contact cards.

websockets hands every request to `process_request`; a WebSocket upgrade on the hub's paths
goes on to the WebSocket handler, anything else is answered here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from adapters.miochat import protocol as P
from adapters.miochat.share_card import render_card
from bridge.errors import ErrorCode

if TYPE_CHECKING:
    from adapters.miochat.server import HubServer

log = structlog.get_logger(__name__)

WS_PATHS = {"/", "/api/gateway"}


def _need_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    return data


class HttpRoutes:
    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.config = hub.config
        self.storage = hub.storage

    def public_url(self, request: Request | None) -> str:
        if self.config.server.public_url:
            return self.config.server.public_url.rstrip("/")
        host = request.headers.get("Host") if request is not None else None
        return f"http://{host or f'{self.config.server.host}:{self.hub.port}'}"

    async def create_share(
        self, contactor: dict[str, Any], request: Request | None, peer: str = ""
    ) -> dict[str, str]:
        share_id = await self.storage.shares.create(contactor)
        base = self.public_url(request)
        return {
            "shareUrl": f"{base}/share/{share_id}",
            "previewImg": f"{base}/share/{share_id}/preview.svg",
        }

    async def handle(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        method = request.method
        if (
            method == "GET"
            and path in WS_PATHS
            and "upgrade" in request.headers.get("Connection", "").lower()
        ):
            if self.hub.connection_count >= self.hub.max_connections:
                log.warning("hub.connection_limit", limit=self.hub.max_connections)
                return _json(conn, 503, _fail("server is full, try again later", ErrorCode.BUSY))
            return None
        try:
            return await self._route(conn, request, method, path)
        except Exception:
            log.exception("http.crashed", path=path)
            return _json(
                conn,
                500,
                {
                    "code": 1,
                    "message": "failed",
                    "data": {"reason": "internal error", "error": "INTERNAL"},
                },
            )

    async def _route(
        self, conn: ServerConnection, request: Request, method: str, path: str
    ) -> Response:
        if method == "OPTIONS":
            return _cors(conn.respond(204, ""))
        if method == "GET" and path == "/healthz":
            return _json(conn, 200, {"status": "ok", "connections": self.hub.connection_count})
        if method == "GET" and path == "/api/base_info":
            auth = self.config.auth
            return _json(
                conn,
                200,
                {
                    "code": 0,
                    "message": "success",
                    "data": {
                        "admin_qq": auth.admin_qq,
                        "bot_qq": auth.bot_qq,
                        "title": self.config.server.title,
                    },
                },
            )
        if path == "/api/share":
            if method != "POST":
                return _json(conn, 405, _fail("use POST", ErrorCode.BAD_FRAME))
            if getattr(conn, "body_too_large", False):
                return _json(conn, 413, _fail("body too large", ErrorCode.INVALID_DATA))
            try:
                body = json.loads(getattr(conn, "http_body", b"") or b"null")
                data = P.ShareData.model_validate(_need_object(body))
            except (ValueError, ValidationError) as e:
                reason = (
                    P.validation_reason(e)
                    if isinstance(e, ValidationError)
                    else f'body must be JSON {{"contactor": {{...}}}}: {e}'
                )
                return _json(conn, 400, _fail(reason, ErrorCode.INVALID_DATA))
            return _json(
                conn,
                200,
                {
                    "code": 0,
                    "message": "success",
                    "data": await self.create_share(data.contactor, request, _peer(conn)),
                },
            )
        if method == "GET" and path.startswith("/share/"):
            rest = path[len("/share/") :]
            share_id, _, tail = rest.partition("/")
            contactor = await self.storage.shares.get(share_id) if share_id else None
            if contactor is None:
                return _json(conn, 404, _fail("no such share", ErrorCode.NOT_FOUND))
            if tail == "preview.svg":
                resp = conn.respond(200, render_card(contactor, self.config.server.title))
                return _ctype(resp, "image/svg+xml; charset=utf-8")
            if tail:
                return _json(conn, 404, _fail("no such page", ErrorCode.NOT_FOUND))
            return _json(conn, 200, contactor)
        if path in WS_PATHS and method == "GET":
            return _json(
                conn,
                426,
                _fail(
                    "this is a WebSocket endpoint: connect with a WebSocket client",
                    ErrorCode.BAD_FRAME,
                ),
            )
        return _json(conn, 404, _fail(f"no route {method} {path}", ErrorCode.NOT_FOUND))


def _fail(reason: str, error: ErrorCode) -> dict[str, Any]:
    return {"code": 1, "message": "failed", "data": {"reason": reason, "error": str(error)}}


def _ctype(resp: Response, ctype: str) -> Response:
    del resp.headers["Content-Type"]
    resp.headers["Content-Type"] = ctype
    return _cors(resp)


def _cors(resp: Response) -> Response:
    h: Headers = resp.headers
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    h["Access-Control-Allow-Headers"] = "Content-Type"
    return resp


def _json(conn: ServerConnection, status: int, body: Any) -> Response:
    return _ctype(conn.respond(status, json.dumps(body, ensure_ascii=False)), "application/json")


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return str(addr[0]) if addr else ""
