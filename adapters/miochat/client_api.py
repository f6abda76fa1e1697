"""The HTTP endpoints today's mio-chat web client calls on the bridge's origin.

Answers use the client's envelope `{code: 0, data, message: "success"}`; failures are JSON
`{code: 1, message, data: {reason, error}}` with a fitting status, because the client calls
`res.json()` on every API answer and an HTML page would break it. Every `/api/...` path the
bridge does not offer (the client's admin settings, plugins, tasks, dashboard, skills) answers
404 'not supported by this bridge' in that shape.

- `GET /api/base_info`: the hub's fields, and with `[miochat] socketio` on the client's
  `llm_providers` (one per provider in the Socket.IO login frame's `models`, keyed the same:
  the ModelGroup owner) and `default_model` as `{provider: model}`. The first provider is what
  the client picks for a new chat, so the one holding `openai.default_model` goes first.
- `GET /api/openai/tools`, `GET /api/onebot/plugins`: the empty forms the client accepts (no
  client-selectable tools, no text-wrapper presets).
- `GET /api/openai/presets`: MomoHub characters as presets (see `presets`).
- `POST /api/share/set`, `GET /api/share?id=`: the hub's shares (same storage and limits) with
  the client's share links, `<origin>/s/<id>`, which its router opens.
- `POST /api/upload/image` and `/f/up/image/<name>`: see `uploads`.
- `GET /p/qava?q=`, `GET /p/mava?model=&provider=&adapter=`: avatars, see `avatars`; a
  character with a known avatar URL gets a redirect to it. Never an error: the client shows
  these in `<img>` tags.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.miochat import protocol as P
from adapters.miochat.avatars import initials, is_web_url, svg_avatar
from adapters.miochat.http_routes import DAY, _json
from adapters.miochat.presets import CHARACTER, presets_answer
from adapters.miochat.uploads import URL_PREFIX, Uploads
from bridge.errors import ErrorCode
from bridge.models import Contact, UserRef

if TYPE_CHECKING:
    from adapters.miochat.http_routes import HttpRoutes

NOT_SUPPORTED = "not supported by this bridge"
SHARE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Who asks for presets and avatars: nobody in particular (these endpoints need no login).
ANYONE = UserRef(id="")


class ClientApi:
    def __init__(self, http: HttpRoutes) -> None:
        self.http = http
        self.config = http.config
        self.router = http.hub.router
        uploads_dir = Path(self.config.storage.path).resolve().parent / "uploads" / "image"
        self.uploads = Uploads(self, uploads_dir)

    # ----- answers ------------------------------------------------------------------------------

    @staticmethod
    def ok(data: Any) -> web.Response:
        return _json(200, P.http_success(data))

    @staticmethod
    def fail(status: int, reason: str, error: ErrorCode = ErrorCode.INVALID_DATA) -> web.Response:
        # `message` carries the reason: the client's settings pages show `data.message`.
        return _json(
            status, {"code": 1, "message": reason, "data": {"reason": reason, "error": str(error)}}
        )

    def not_supported(self) -> web.Response:
        return self.fail(404, NOT_SUPPORTED, ErrorCode.NOT_FOUND)

    # ----- routing ------------------------------------------------------------------------------

    async def route(
        self, request: web.Request, method: str, path: str
    ) -> web.StreamResponse | None:
        """The answer for the client's endpoints; None for any other path (the hub's own
        routes, the web root, the final 404)."""
        if path.startswith(URL_PREFIX):
            return await self.uploads.serve(request, path[len(URL_PREFIX) :])
        if path in ("/p/qava", "/p/qava/"):
            return self.qava(request)
        if path in ("/p/mava", "/p/mava/"):
            return self.mava(request)
        if path == "/api/upload/image":
            if method != "POST":
                return self.fail(405, "use POST")
            return await self.uploads.upload(request)
        if path == "/api/share/set":
            if method != "POST":
                return self.fail(405, "use POST")
            return await self.http.share_from_body(request, self.share_links)
        if method != "GET":
            return None
        if path == "/api/base_info":
            return self.ok(self.base_info())
        if path == "/api/openai/tools":
            # Read as {plugin: {tool: spec}}; an empty object is "no tools" to the client.
            return self.ok({"tools": {}})
        if path == "/api/onebot/plugins":
            # Read as data.options (cascader items under options.textwraper); empty: none.
            return self.ok({"options": {}})
        if path == "/api/openai/presets":
            return presets_answer(self, request.query)
        if path == "/api/share":
            return await self.share_get(request.query.get("id", ""))
        return None

    # ----- base info ----------------------------------------------------------------------------

    def base_info(self) -> dict[str, Any]:
        auth = self.config.auth
        info: dict[str, Any] = {
            "admin_qq": auth.admin_qq,
            "bot_qq": auth.bot_qq,
            "title": self.config.server.title,
        }
        if self.config.miochat.socketio:
            providers = self.llm_providers()
            info["llm_providers"] = providers
            # The client's older form, {provider: model}, read when a provider has none.
            info["default_model"] = {p["displayName"]: p["default_model"] for p in providers}
        return info

    def llm_providers(self) -> list[dict[str, Any]]:
        """One entry per provider of the login frame's `models`, the default's provider first."""
        openai = self.config.openai
        configured = {p.name: p for p in openai.providers}
        groups: dict[str, list[str]] = {}
        for g in self.router.model_groups():
            if g.models:
                groups.setdefault(g.owner, []).extend(g.models)
        # `provider/model` when the first part names a provider (as the router reads it),
        # else a bare model that any provider listing it may serve.
        want_provider, _, want_model = openai.default_model.partition("/")
        if want_provider not in configured:
            want_provider, want_model = "", openai.default_model
        first: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        for owner, models in groups.items():
            is_openai = owner in configured
            if is_openai:
                mine = want_provider in ("", owner)
                default = want_model if mine and want_model in models else ""
                description = f"OpenAI-compatible provider {owner}"
            else:
                default = self._default_character(models)
                description = _DESCRIPTIONS.get(owner, f"{owner} models")
            entry = {
                "displayName": owner,
                "adapterType": "openai" if is_openai else owner,
                "default_model": default or models[0],
                "description": description,
            }
            # The client starts new chats on the first provider: the bridge's default model's.
            (first if is_openai and default and not first else rest).append(entry)
        return first + rest

    def _default_character(self, models: list[str]) -> str:
        for c in self.characters():
            if c.default and CHARACTER + c.id in models:
                return CHARACTER + c.id
        return ""

    # ----- characters ---------------------------------------------------------------------------

    def characters(self) -> list[Contact]:
        """The characters on offer (from the targets' caches; never waits on an upstream)."""
        return [c for c in self.router.contacts(ANYONE) if c.kind == "character"]

    def providers_by_model(self) -> dict[str, str]:
        """Each listed model's provider key in the login frame (the first that lists it)."""
        out: dict[str, str] = {}
        for g in self.router.model_groups():
            for m in g.models:
                out.setdefault(m, g.owner)
        return out

    # ----- shares -------------------------------------------------------------------------------

    def share_links(self, share_id: str, request: web.Request) -> dict[str, str]:
        return {"shareUrl": f"{self.http.public_url(request)}/s/{share_id}"}

    async def share_get(self, share_id: str) -> web.Response:
        if not SHARE_ID_RE.fullmatch(share_id):
            return self.fail(400, "id must be a share id such as /s/<id> names")
        ttl = self.config.share.ttl_days * DAY
        contactor = await self.http.storage.shares.get(share_id, ttl=ttl)
        if contactor is None:
            return self.fail(404, "no such share (expired or never made)", ErrorCode.NOT_FOUND)
        return self.ok({"contactor": contactor})

    # ----- avatars ------------------------------------------------------------------------------

    def qava(self, request: web.Request) -> web.Response:
        return _svg(svg_avatar(request.query.get("q", "")[:32] or "?"))

    def mava(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        model = q.get("model", "").strip()
        if model.startswith(CHARACTER):
            cid = model[len(CHARACTER) :]
            for c in self.characters():
                if c.id == cid:
                    if is_web_url(c.avatar):
                        # The character's own picture; not cached, it may change.
                        headers = {"Location": c.avatar or "", "Cache-Control": "no-cache"}
                        return web.Response(status=302, headers=headers)
                    return _svg(svg_avatar(model, initials(c.name or cid)))
        seed = model or q.get("provider", "") or q.get("adapter", "") or "model"
        return _svg(svg_avatar(seed, initials(seed.rpartition("/")[2] or seed)))


# How the client's provider list describes the bridge's own model groups.
_DESCRIPTIONS = {"momohub": "MomoHub characters", "momoai": "MOMO AI agents"}


def _svg(text: str) -> web.Response:
    resp = web.Response(text=text, content_type="image/svg+xml", charset="utf-8")
    # Drawn from the query alone: the same query, the same picture.
    resp.headers["Cache-Control"] = "public, max-age=86400"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
