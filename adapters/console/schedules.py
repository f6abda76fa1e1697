"""The console's schedules: every user's `/schedule` entries, paused, resumed or deleted.

Everything goes through the schedule plugin's own `Book` (`app.plugins.api("schedule")`), the
object its commands use, so a console change takes the same steps as `/schedule del` (the job
leaves the scheduler, the entry the store) and never touches the plugin's state directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from adapters.console.actions import Handler, Refused, guarded, read_body, respond
from adapters.console.auth import ConsoleSession

if TYPE_CHECKING:
    from bridge.app import App

log = structlog.get_logger(__name__)


def _entry_id(body: dict[str, Any]) -> int:
    value = body.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Refused(400, "id must be a schedule id")
    return value


class Schedules:
    def __init__(self, app: App) -> None:
        self.app = app

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "schedules"): guarded(self.list),
            ("POST", "schedule/pause"): guarded(self.pause),
            ("POST", "schedule/resume"): guarded(self.resume),
            ("POST", "schedule/delete"): guarded(self.delete),
        }

    @property
    def _book(self) -> Any:
        plugins = self.app.plugins
        book = plugins.api("schedule") if plugins is not None else None
        if book is None:
            raise Refused(409, "the schedule plugin is not loaded")
        return book

    async def list(self, request: web.Request, _: ConsoleSession) -> web.Response:
        plugins = self.app.plugins
        if plugins is None or plugins.api("schedule") is None:
            # Not an error for the page: it says the plugin is off instead of a table.
            return respond(200, {"enabled": False, "schedules": []})
        return respond(200, {"enabled": True, "schedules": self._book.all()})

    async def pause(self, request: web.Request, _: ConsoleSession) -> web.Response:
        return await self._set_paused(request, True)

    async def resume(self, request: web.Request, _: ConsoleSession) -> web.Response:
        return await self._set_paused(request, False)

    async def _set_paused(self, request: web.Request, paused: bool) -> web.Response:
        entry_id = _entry_id(await read_body(request))
        book = self._book
        entry = await book.set_paused(entry_id, paused)
        if entry is None:
            raise Refused(404, f"no schedule #{entry_id}")
        log.info("console.schedule_paused" if paused else "console.schedule_resumed", id=entry_id)
        return respond(200, {"schedule": book.describe(entry)})

    async def delete(self, request: web.Request, _: ConsoleSession) -> web.Response:
        entry_id = _entry_id(await read_body(request))
        if await self._book.delete(entry_id) is None:
            raise Refused(404, f"no schedule #{entry_id}")
        log.info("console.schedule_deleted", id=entry_id)
        return respond(200, {"ok": True})
