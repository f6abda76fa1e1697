"""MomoHub's API as the bridge uses it: account, characters, chats, messages, and the SSE reply.

The layers underneath, each in its own module: ``transport`` sends requests with the safe retries
and reads MomoHub's envelope, ``auth`` signs in and keeps the tokens fresh, ``errors`` holds the
error types (re-exported here, where callers have always imported them from).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from adapters.momohub.auth import MomoHubAuth
from adapters.momohub.errors import MomoHubAuthError, MomoHubError
from adapters.momohub.sse import SSEParser, SSEProtocolError
from adapters.momohub.transport import interpret
from adapters.momohub.types import (
    Character,
    Chat,
    ChatConfig,
    Message,
    Page,
    StreamDecoder,
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    User,
)
from bridge.errors import ErrorCode
from bridge.health import OK, UNREACHABLE

__all__ = ["MomoHubAuthError", "MomoHubClient", "MomoHubError"]

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def _seg(value: str) -> str:
    """One path segment: ids come from users and other systems, never trust them in a URL."""
    return quote(str(value), safe="")


class MomoHubClient(MomoHubAuth):
    """A signed-in MomoHub account. ``start`` before use, ``close`` when done."""

    async def _get_model(self, path: str, model: type[M], **params: Any) -> M:
        return _validate(model, await self._call("GET", path, params=params or None), path)

    # ----- account ------------------------------------------------------------------------------

    async def get_me(self) -> User:
        return _validate(User, await self._call("GET", "/auth/me"), "/auth/me")

    # ----- characters ---------------------------------------------------------------------------

    async def list_my_characters(self, *, max_pages: int = 10) -> list[Character]:
        """All characters of this account (bounded to ``max_pages`` pages of 100)."""
        out: list[Character] = []
        for page in range(1, max_pages + 1):
            data = await self._call("GET", "/characters", params={"page": page, "limit": 100})
            result = _page(Character, data, "/characters")
            out.extend(result.items)
            if not result.hasNext or isinstance(data, list):
                break
        return out

    async def list_public_characters(self, page: int = 1, limit: int = 20) -> Page[Character]:
        data = await self._call(
            "GET", "/characters/public", params={"page": page, "limit": _limit(limit)}
        )
        return _page(Character, data, "/characters/public")

    async def search_characters(self, q: str, page: int = 1, limit: int = 20) -> Page[Character]:
        data = await self._call(
            "GET", "/characters/search", params={"q": q, "page": page, "limit": _limit(limit)}
        )
        return _page(Character, data, "/characters/search")

    async def get_character(self, character_id: str) -> Character:
        return await self._get_model(f"/characters/{_seg(character_id)}", Character)

    # ----- chats --------------------------------------------------------------------------------

    async def create_chat(
        self, character_id: str, name: str | None = None, *, temporary: bool | None = None
    ) -> Chat:
        body: dict[str, Any] = {"characterId": character_id}
        if name is not None:
            body["name"] = name
        if temporary is not None:
            body["temporary"] = temporary
        return _validate(Chat, await self._call("POST", "/chats", json=body), "/chats")

    async def get_chat(self, chat_id: str) -> Chat:
        return await self._get_model(f"/chats/{_seg(chat_id)}", Chat)

    async def list_chats(self, page: int = 1, limit: int = 20) -> Page[Chat]:
        data = await self._call("GET", "/chats", params={"page": page, "limit": _limit(limit)})
        return _page(Chat, data, "/chats")

    async def rename_chat(self, chat_id: str, name: str) -> Chat | None:
        """Returns the renamed chat when MomoHub sends it back (builds differ)."""
        path = f"/chats/{_seg(chat_id)}/name"
        data = await self._call("PUT", path, json={"name": name})
        return _validate(Chat, data, path) if isinstance(data, dict) and data.get("id") else None

    async def delete_chat(self, chat_id: str) -> None:
        await self._call("DELETE", f"/chats/{_seg(chat_id)}")

    # ----- messages -----------------------------------------------------------------------------

    async def list_messages(self, chat_id: str, page: int = 1, limit: int = 20) -> list[Message]:
        """One page of messages, oldest first whatever order the server lists them in."""
        page_ = await self._messages_page(chat_id, page, limit)
        return _chronological(page_.items)

    async def list_latest_messages(self, chat_id: str, limit: int = 20) -> list[Message]:
        """The newest ``limit`` messages, oldest first.

        The listing order is undocumented, so page 1 may hold the oldest messages; if the
        server lists oldest-first, the newest are on the last page(s) instead.
        """
        limit = _limit(limit)
        first = await self._messages_page(chat_id, 1, limit)
        if not first.hasNext or not _oldest_first(first.items):
            return _chronological(first.items)[-limit:]
        last = first.totalPages
        if last is None or last <= 1:
            return _chronological(first.items)[-limit:]
        items = (await self._messages_page(chat_id, last, limit)).items
        if len(items) < limit and last - 1 > 1:
            items = (await self._messages_page(chat_id, last - 1, limit)).items + items
        elif len(items) < limit:
            items = first.items + items
        by_id = {m.id: m for m in items}
        return _chronological(list(by_id.values()))[-limit:]

    async def _messages_page(self, chat_id: str, page: int, limit: int) -> Page[Message]:
        path = f"/chats/{_seg(chat_id)}/messages"
        data = await self._call("GET", path, params={"page": page, "limit": _limit(limit)})
        return _page(Message, data, path)

    async def delete_message(self, chat_id: str, message_id: str) -> None:
        """Delete one message; builds that route it as ``/chats/{id}/{mid}`` are tried once."""
        try:
            await self._call("DELETE", f"/chats/{_seg(chat_id)}/messages/{_seg(message_id)}")
        except MomoHubError as e:
            if e.status not in (404, 405):
                raise
            log.info("momohub.delete_message_fallback", status=e.status)
            try:
                await self._call("DELETE", f"/chats/{_seg(chat_id)}/{_seg(message_id)}")
            except MomoHubError as again:
                if e.status != 404 or again.status not in (404, 405):
                    raise
                # That says only that this build lacks the legacy route: the documented
                # route's 404 stands (the message or its chat is gone; a recall takes it as done).
                raise e from again

    async def clear_messages(self, chat_id: str) -> None:
        await self._call("DELETE", f"/chats/{_seg(chat_id)}/messages")

    async def get_chat_config(self, chat_id: str) -> ChatConfig:
        """The chat's model settings; all None when MomoHub has none (``data: null``)."""
        path = f"/chats/{_seg(chat_id)}/config"
        data = await self._call("GET", path)
        return ChatConfig() if data is None else _validate(ChatConfig, data, path)

    async def put_chat_config(
        self, chat_id: str, config: ChatConfig | Mapping[str, Any]
    ) -> ChatConfig:
        path = f"/chats/{_seg(chat_id)}/config"
        body = (
            config.model_dump(exclude_unset=True)
            if isinstance(config, ChatConfig)
            else dict(config)
        )
        data = await self._call("PUT", path, json=body)
        if isinstance(data, dict):
            return _validate(ChatConfig, data, path)
        return ChatConfig.model_validate(body)

    # ----- sending: the SSE stream --------------------------------------------------------------

    async def send_message(
        self, chat_id: str, content: list[dict[str, Any]]
    ) -> AsyncIterator[StreamEvent]:
        """Send a message and stream the reply.

        Yields deltas (continuation text of the unescaped format comes as further deltas), tool
        events, heartbeats, and finally ``StreamDone`` or ``StreamError`` (MomoHub's failures after
        the stream started; the caller decides what they mean). Raises MomoHubError before the
        stream (HTTP errors), UPSTREAM_TIMEOUT when nothing -- not even a heartbeat -- arrives in
        ``first_event_timeout`` / ``idle_timeout``, and UPSTREAM_ERROR when the stream ends
        without ``done``/``error``. Closing the generator early closes the connection, which is
        how MomoHub learns the reader went away.
        """
        loop = asyncio.get_running_loop()
        resp, deadline = await self._open_stream(f"/chats/{_seg(chat_id)}/messages", content)
        parser = SSEParser()
        decoder = StreamDecoder()
        content = resp.content
        seen_event = False
        at_eof = False
        try:
            while True:
                try:
                    # Under a burst the next bytes are usually there already: take them without
                    # arming a timer (a timer handle and a task-cancel guard for every read).
                    chunk = content.read_nowait()
                    if not chunk and not content.at_eof():
                        async with asyncio.timeout_at(deadline):
                            chunk = await content.readany()
                except TimeoutError:
                    held = decoder.flush()
                    if held:
                        # done/error came but the server kept the stream open: that was the end.
                        for ev in held:
                            yield ev
                        return
                    timeout = (
                        self._config.idle_timeout
                        if seen_event
                        else self._config.first_event_timeout
                    )
                    what = "went silent" if seen_event else "did not start replying"
                    raise MomoHubError(
                        f"MomoHub {what} for {timeout:g}s", code=ErrorCode.UPSTREAM_TIMEOUT
                    ) from None
                except aiohttp.ClientError as e:
                    raise MomoHubError(
                        f"stream ended before the reply finished (connection lost: "
                        f"{e or type(e).__name__})"
                    ) from e
                try:
                    if chunk:
                        sse = parser.feed(chunk)
                        events = decoder.feed(sse)
                    else:
                        at_eof = True
                        sse = parser.close()
                        events = decoder.feed(sse) + decoder.close()
                except SSEProtocolError as e:
                    at_eof = False  # abandon the connection rather than reuse it
                    raise MomoHubError(f"MomoHub sent a broken event stream: {e}") from e
                if sse:
                    seen_event = True
                    deadline = loop.time() + self._config.idle_timeout
                for ev in _merge_deltas(events):
                    yield ev
                    if isinstance(ev, StreamDone | StreamError):
                        return
                if at_eof:
                    raise MomoHubError("stream ended before the reply finished")
        finally:
            # Fully read: the connection can be reused. Otherwise (early close, cancel, error)
            # drop it, so MomoHub sees the disconnect and stops generating.
            if at_eof:
                resp.release()
            else:
                resp.close()

    async def _open_stream(
        self, path: str, content: list[dict[str, Any]]
    ) -> tuple[aiohttp.ClientResponse, float]:
        """POST the message; returns the open event-stream response and the first-event deadline."""
        session = self._require_session()
        loop = asyncio.get_running_loop()
        # The stream sets its own pace (idle/first-event timeouts), so no total/read timeout here.
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._config.connect_timeout,
            sock_connect=self._config.connect_timeout,
        )
        renewed = False
        rate_waits = 0
        while True:
            token, generation = await self._token_for_request()
            headers = {"Accept": "text/event-stream"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            deadline = loop.time() + self._config.first_event_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    resp = await session.post(
                        self._url(path), json={"content": content}, headers=headers, timeout=timeout
                    )
            except TimeoutError as e:
                raise MomoHubError(
                    "MomoHub did not accept the message in time", code=ErrorCode.UPSTREAM_TIMEOUT
                ) from e
            except aiohttp.ClientError as e:
                # Never retried: the message may have been stored before the connection broke.
                self._report(UNREACHABLE, f"cannot reach MomoHub: {e or type(e).__name__}")
                raise MomoHubError(f"cannot reach MomoHub: {e or type(e).__name__}") from e
            if 200 <= resp.status < 300 and resp.content_type != "application/json":
                log.debug("momohub.stream_open", path=path, status=resp.status)
                self._report(OK)
                return resp, deadline
            try:
                async with asyncio.timeout(self._config.request_timeout):
                    body = await resp.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                resp.close()
                raise MomoHubError(f"MomoHub HTTP {resp.status} with an unreadable body") from e
            resp.release()
            try:
                interpret(resp.status, body, resp.reason or "")
            except MomoHubError as e:
                # 401 and 429 reject the request before anything is stored: safe to send again.
                if e.status == 401 and not renewed:
                    renewed = True
                    await self._renew(generation)
                    continue
                if e.status == 429:
                    await self._wait_rate_limit(e, resp.headers, rate_waits)
                    rate_waits += 1
                    continue
                raise
            raise MomoHubError(
                f"MomoHub answered the message with JSON instead of an event stream: "
                f"{body[:200].decode('utf-8', errors='replace')}"
            )


# ----- helpers --------------------------------------------------------------------------------


def _limit(limit: int) -> int:
    return max(1, min(100, int(limit)))


def _validate(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MomoHubError(
            f"MomoHub sent an unexpected {model.__name__} for {what}: "
            f"{e.error_count()} problem(s), first: {e.errors()[0]['msg']}"
        ) from e


def _page(model: type[M], data: Any, what: str) -> Page[M]:
    page_type: Any = Page[model]  # type: ignore[valid-type]
    if data is None:
        data = []
    try:
        return page_type.model_validate(data)  # type: ignore[no-any-return]
    except ValidationError as e:
        raise MomoHubError(
            f"MomoHub sent an unexpected page of {model.__name__} for {what}: "
            f"{e.errors()[0]['msg']}"
        ) from e


def _time_key(m: Message) -> datetime:
    return m.createdAt or _EPOCH


def _oldest_first(items: list[Message]) -> bool:
    times = [m.createdAt for m in items if m.createdAt is not None]
    return len(times) >= 2 and times[0] < times[-1]


def _chronological(items: list[Message]) -> list[Message]:
    # Reverse a newest-first listing before the stable sort, so messages sharing a timestamp
    # (a question and its instant reply) keep their real order instead of the listing's.
    times = [m.createdAt for m in items if m.createdAt is not None]
    if len(times) >= 2 and times[0] > times[-1]:
        items = items[::-1]
    return sorted(items, key=_time_key)


def _merge_deltas(events: list[StreamEvent]) -> list[StreamEvent]:
    """Join consecutive deltas that arrived in one network read into one.

    Under a burst one read holds dozens of tokens; relaying each as its own frame costs the hub
    far more than the text itself. At model pace a read holds one token, so nothing waits.
    """
    if len(events) < 2:
        return events
    out: list[StreamEvent] = []
    run: list[str] = []  # the texts of the deltas in a row, joined once when the row ends
    for ev in events:
        if type(ev) is StreamDelta:
            run.append(ev.text)
            continue
        if run:
            out.append(StreamDelta(run[0] if len(run) == 1 else "".join(run)))
            run = []
        out.append(ev)
    if run:
        out.append(StreamDelta(run[0] if len(run) == 1 else "".join(run)))
    return out
