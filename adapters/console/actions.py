"""The console's conversation and log endpoints.

Each action goes through the same core call the conversation's own user would cause: a recall
is `Sessions.recall` as the message's owner (upstream deleted too, the user's tabs told), a
reset and a persona go to the conversation's contact target (`bridge.router.ContextTarget`),
as `/reset` and `/persona set` do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from adapters.console.auth import ConsoleSession
from bridge.errors import BridgeError
from bridge.logging import RECENT_LOGS
from bridge.models import ConversationKey, UserRef

if TYPE_CHECKING:
    from bridge.app import App

log = structlog.get_logger(__name__)

LIST_LIMIT = 200
# The conversation list is read from the newest SCAN messages only (a bounded read, whatever
# the table's size), and one read serves every page for up to LIST_CACHE_SECONDS while no
# message is stored: open console pages must not keep the one storage connection busy.
SCAN = 5000
LIST_CACHE_SECONDS = 3.0
TURNS_LIMIT = 200
PERSONA_MAX = 4000
MAX_BODY = 16384

Handler = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def edge_of(user_id: str) -> str:
    """Which edge a conversation came in by, from its owner's id (QQ owners are `qq:...`)."""
    return "qq" if user_id.startswith("qq:") else "hub"


def respond(status: int, body: Any) -> web.Response:
    from adapters.console.pages import json_response

    return json_response(status, body)


def guarded(fn: Handler) -> Handler:
    async def run(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        try:
            return await fn(request, session)
        except Refused as e:
            return respond(e.status, {"error": e.reason})
        except BridgeError as e:
            return respond(409, {"error": e.reason, "code": str(e.code)})

    return run


async def read_body(request: web.Request) -> dict[str, Any]:
    if (request.content_length or 0) > MAX_BODY:
        raise Refused(413, "body too large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        # Chunked, so no Content-Length above: aiohttp stops it at its client_max_size.
        raise Refused(413, "body too large") from None
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise Refused(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "body must be a JSON object")
    return body


def _key(source: Any) -> ConversationKey:
    user, contact = source.get("user"), source.get("contact")
    thread = source.get("thread") or "default"
    if not (isinstance(user, str) and user and isinstance(contact, str) and contact):
        raise Refused(400, "user and contact are required")
    if not isinstance(thread, str):
        raise Refused(400, "thread must be a string")
    return ConversationKey(user, contact, thread)


class Actions:
    def __init__(self, app: App) -> None:
        self.app = app
        # (newest message id when read, monotonic time read, the rows); and the read under way,
        # which every request arriving meanwhile waits for instead of starting its own.
        self._listed: tuple[int, float, list[tuple[str, str, str, int, float, int]]] | None = None
        self._reading: asyncio.Future[list[tuple[str, str, str, int, float, int]]] | None = None

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "conversations"): guarded(self.conversations),
            ("GET", "conversation"): guarded(self.conversation),
            ("POST", "recall"): guarded(self.recall),
            ("POST", "reset"): guarded(self.reset),
            ("POST", "persona"): guarded(self.persona),
            ("GET", "logs"): guarded(self.logs),
        }

    @property
    def _storage(self) -> Any:
        if self.app.storage is None:
            raise Refused(503, "the bridge is stopping")
        return self.app.storage

    async def _conversation_rows(self) -> list[tuple[str, str, str, int, float, int]]:
        storage = self._storage
        # A message stored since the last read makes it stale at once (the page was told of it
        # and asks for the new row); otherwise only a recall changes a count, and it may wait.
        newest = await storage.messages.latest_id()
        listed = self._listed
        if (
            listed is not None
            and listed[0] == newest
            and time.monotonic() - listed[1] < LIST_CACHE_SECONDS
        ):
            return listed[2]
        if self._reading is None:

            async def read() -> list[tuple[str, str, str, int, float, int]]:
                rows = await storage.messages.conversations(LIST_LIMIT, SCAN)
                self._listed = (newest, time.monotonic(), rows)
                return rows

            reading = self._reading = asyncio.ensure_future(read())

            def done(f: asyncio.Future[Any]) -> None:
                # Here rather than in read(): a read cancelled before its first step never runs
                # its own cleanup, and would be awaited by every later request.
                if self._reading is f:
                    self._reading = None
                if not f.cancelled():
                    f.exception()  # retrieved even when every waiting request went away

            reading.add_done_callback(done)
        # Shielded: one page closing must not cancel the read the others wait for.
        return await asyncio.shield(self._reading)

    async def conversations(self, request: web.Request, _: ConsoleSession) -> web.Response:
        rows = await self._conversation_rows()
        names = {c.id: c.name for c in self.app.router.contacts(UserRef("console", True))}
        items = [
            {
                "edge": edge_of(user),
                "user": user,
                "contact": contact,
                "contact_name": names.get(contact, contact),
                "thread": thread,
                "last_id": last_id,
                "last_activity": last_time,
                "messages": count,
            }
            for user, contact, thread, last_id, last_time, count in rows
        ]
        # `window`: the counts are of each conversation's messages among the newest this many.
        return respond(200, {"conversations": items, "window": SCAN})

    async def conversation(self, request: web.Request, _: ConsoleSession) -> web.Response:
        key = _key(request.query)
        rows = await self._storage.messages.recent(
            key.user_id, key.contact, key.thread, TURNS_LIMIT
        )
        persona = None
        method = self._context_method(key.contact, "get_instructions")
        if method is not None:
            persona = await method(key)
        turns = [
            {
                "id": r.id,
                "direction": r.direction,
                "kind": r.kind,
                "time": r.time,
                "reply_to": r.reply_to,
                "content": r.content,
            }
            for r in rows
        ]
        return respond(200, {"turns": turns, "persona": persona})

    async def recall(self, request: web.Request, _: ConsoleSession) -> web.Response:
        body = await read_body(request)
        message_id = body.get("message_id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise Refused(400, "message_id must be an integer")
        row = await self._storage.messages.get(message_id)
        if row is None or row.deleted:
            raise Refused(404, f"no message {message_id}")
        if self.app.sessions is None:
            raise Refused(503, "the bridge is stopping")
        # As its owner would: the owner's every tab is told, the upstream copy deleted.
        await self.app.sessions.recall(UserRef(row.user_id), message_id)
        log.info("console.recall", message_id=message_id, user=row.user_id, contact=row.contact)
        return respond(200, {"ok": True})

    async def reset(self, request: web.Request, _: ConsoleSession) -> web.Response:
        key = _key(await read_body(request))
        method = self._context_method(key.contact, "reset_context")
        if method is None:
            raise Refused(409, "this conversation has no upstream context to reset")
        # Everything stored so far belongs to the old context.
        at = await self._storage.messages.newest_id(key.user_id, key.contact, key.thread)
        await method(key, at=at)
        log.info("console.reset", user=key.user_id, contact=key.contact, thread=key.thread)
        return respond(200, {"ok": True})

    async def persona(self, request: web.Request, _: ConsoleSession) -> web.Response:
        body = await read_body(request)
        key = _key(body)
        text = body.get("text")
        if text is not None and not isinstance(text, str):
            raise Refused(400, "text must be a string or null")
        text = (text or "").strip() or None
        if text is not None and len(text) > PERSONA_MAX:
            raise Refused(400, f"a persona is at most {PERSONA_MAX} characters")
        method = self._context_method(key.contact, "set_instructions")
        if method is None:
            raise Refused(409, "this conversation's target takes no persona")
        await method(key, text)
        log.info("console.persona", user=key.user_id, contact=key.contact, cleared=text is None)
        return respond(200, {"ok": True, "persona": text})

    async def logs(self, request: web.Request, _: ConsoleSession) -> web.Response:
        q = request.query
        try:
            after = int(q.get("after", "0"))
            limit = min(1000, max(1, int(q.get("limit", "200"))))
        except ValueError:
            raise Refused(400, "after and limit must be integers") from None
        entries = RECENT_LOGS.since(
            after, level=q.get("level", ""), conversation=q.get("conversation", ""), limit=limit
        )
        return respond(200, {"logs": entries})

    def _context_method(self, contact: str, name: str) -> Any:
        try:
            target = self.app.router.contact_target(contact)
        except BridgeError:
            return None
        return getattr(target, name, None)
