"""The console's live updates: one server-sent-event stream per open console page.

Each tick (`[console] live_seconds`) the stream sends the overview, the log events that came
since the last tick, and a `conversations` event when a message was stored since the last one
(the overview's newest message id moved), so the page's conversation list follows without a
reopen. A page that stops reading is dropped (a write that does not finish
within WRITE_TIMEOUT), at most MAX_STREAMS are open at once, and a stream ends when its
session expires or the bridge stops: `App.stop` sets the console's `stopping` event first,
and a stream waits on that between ticks, so a stop is not held up by a sleeping stream. The
stream is the request's own handler: aiohttp owns that task and cancels it when the bridge
stops, so there is no task of the console's own to leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from adapters.console.auth import ConsoleSession
from adapters.console.overview import overview
from bridge.logging import RECENT_LOGS

if TYPE_CHECKING:
    from adapters.console.pages import Console
    from bridge.app import App

log = structlog.get_logger(__name__)

MAX_STREAMS = 16
WRITE_TIMEOUT = 10.0
# Log events sent per tick at most: a burst is shown as its newest part, not a backlog.
LOGS_PER_TICK = 200


class LiveStreams:
    def __init__(self, app: App, console: Console) -> None:
        self.app = app
        self.console = console
        self.open = 0

    async def stream(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        from adapters.console.pages import json_response

        if self.open >= MAX_STREAMS:
            return json_response(503, {"error": "too many console pages open"})
        self.open += 1
        try:
            return await self._run(request, session)
        finally:
            self.open -= 1

    async def _run(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                # A buffering reverse proxy would hold the events back.
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        level = request.query.get("level", "")
        conversation = request.query.get("conversation", "")
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            after = 0
        tick = self.app.config.console.live_seconds
        newest: int | None = None  # what the page's list was read at (it reads on opening)
        try:
            stopping = self.console.stopping
            while not stopping.is_set() and self.app.scheduler.running:
                if self.console.sessions.get(session.id) is None:
                    await self._send(resp, "logout", {})
                    break
                console = self.console
                now = await overview(self.app, console.started, console.figures)
                await self._send(resp, "overview", now)
                if newest is not None and now["newest_message"] != newest:
                    await self._send(resp, "conversations", {"newest": now["newest_message"]})
                newest = now["newest_message"]
                logs = RECENT_LOGS.since(
                    after, level=level, conversation=conversation, limit=LOGS_PER_TICK
                )
                if logs:
                    after = logs[-1]["seq"]
                    await self._send(resp, "logs", logs)
                # The stream's period, cut short when the bridge stops.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), tick)
        except (ConnectionResetError, TimeoutError):
            log.info("console.stream_dropped")
        except Exception:
            # The response is already started: an error let out would make the router write a
            # second (500) response into it. The stream ends; the page reconnects by itself.
            log.exception("console.stream_failed")
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, event: str, data: Any) -> None:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        frame = f"event: {event}\ndata: {payload}\n\n".encode()
        await asyncio.wait_for(resp.write(frame), WRITE_TIMEOUT)
