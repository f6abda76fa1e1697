"""The MOMO AI agents API over aiohttp: list agents, read the balance, call an agent (whole or
streamed).

Failures the API reports come out as ``MomoAIError`` carrying its own code, message and details
(see adapters.momoai.wire); a network problem, a timeout or a stream cut short is a BridgeError
(UPSTREAM_ERROR / UPSTREAM_TIMEOUT). Every request first takes a paced slot (adapters.momoai.pacing)
and a Retry-After in a RATE_LIMIT answer pauses the pacer for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from adapters.momoai import wire
from adapters.momoai.pacing import Pacer, rate_for
from adapters.momoai.stream import StreamEnd, StreamError, StreamFailure, StreamParser, TextDelta
from bridge.config import MomoAIConfig
from bridge.errors import BridgeError, ErrorCode

PAGE_SIZE = 100
# A catalogue bigger than this many pages is read no further (max_agents bounds it anyway).
MAX_PAGES = 50
# The largest JSON answer read (an agent list page, a whole answer, an error body).
MAX_BODY = 8 << 20
READ_CHUNK = 64 << 10
# What is kept of a stream's first bytes to explain one that carried no text.
HEAD_KEPT = 64 << 10
# How an event stream's lines start (a body starting otherwise was no stream).
_STREAM_LINES = (b"data:", b":", b"event:", b"id:", b"retry:")


class MomoAIError(Exception):
    """MOMO AI refused a request with one of its error codes."""

    def __init__(self, failure: wire.ApiFailure) -> None:
        super().__init__(f"{failure.code}: {failure.message}")
        self.failure = failure


class MomoAIClient:
    def __init__(self, config: MomoAIConfig) -> None:
        self._config = config
        self._base = config.base_url.rstrip("/")
        self.pacer = Pacer(rate_for(config.tier, config.requests_per_minute), config.max_wait)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self._config.api_key}",
                    "Accept": "application/json, text/event-stream",
                },
                # sock_connect, not connect: waiting for a pooled connection is no failure.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._config.connect_timeout
                ),
                # Unlimited: the bridge's own limits (streams per user, pacing) bound them.
                connector=aiohttp.TCPConnector(limit=0),
                # Proxies come from the environment like every other HTTP client here.
                trust_env=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----- reads ----------------------------------------------------------------------------------

    async def list_agents(self, limit: int) -> list[wire.Agent]:
        """Every agent the account lists, page by page, at most ``limit``."""
        agents: list[wire.Agent] = []
        seen: set[str] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await self._get_json("/agents", {"page": str(page), "page_size": str(PAGE_SIZE)})
            found, total = wire.parse_agents_page(body)
            new = [a for a in found if a.id not in seen]
            for a in new:
                seen.add(a.id)
            agents.extend(new)
            # A server that ignores paging repeats its one page: no new agents ends it too.
            if not new or len(agents) >= limit or (total is not None and len(agents) >= total):
                break
        return agents[:limit]

    async def balance(self) -> wire.Balance:
        return wire.parse_balance(await self._get_json("/account/balance"))

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """A GET answered with the success envelope; these are not paced (only agent calls
        are counted by the API's tiers)."""
        try:
            async with asyncio.timeout(self._config.first_event_timeout):
                async with self._http().get(self._base + path, params=params) as resp:
                    return await self._json_or_raise(resp)
        except TimeoutError:
            raise BridgeError(
                ErrorCode.UPSTREAM_TIMEOUT, f"MOMO AI did not answer GET {path} in time"
            ) from None
        except aiohttp.ClientError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI connection failed: {_describe(e)}"
            ) from None

    async def _json_or_raise(self, resp: aiohttp.ClientResponse) -> Any:
        raw = await _read_capped(resp)
        return self._body_or_raise(resp.status, raw, resp.headers.get("Retry-After"))

    def _body_or_raise(self, status: int, raw: bytes, retry_after: str | None = None) -> Any:
        """The decoded JSON of a successful answer; MomoAIError for a refusal, an error page or
        anything that is not JSON."""
        body: Any = None
        try:
            # orjson: bounded nesting (a hostile `[[[[...` is an error, not a RecursionError).
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if status >= 400 or body is None or wire.is_failure(body):
            failure = wire.parse_failure(status, body, raw.decode("utf-8", "replace"), retry_after)
            self.note(failure)
            raise MomoAIError(failure)
        return body

    def note(self, failure: wire.ApiFailure) -> None:
        """A refusal seen anywhere (an answer, a stream): a rate limit pauses everyone."""
        if wire.failure_error(failure)[0] == ErrorCode.RATE_LIMITED:
            # Nobody starts again before the API's pause is over (1 s when it named none).
            self.pacer.pause(failure.retry_after if failure.retry_after is not None else 1.0)

    # ----- calling an agent -----------------------------------------------------------------------

    async def call(
        self,
        agent_id: str,
        prompt: str,
        *,
        temperature: float | None,
        max_tokens: int | None,
        stream: bool,
    ) -> AsyncGenerator[TextDelta | StreamEnd, None]:
        """The agent's answer as text pieces and one StreamEnd. Closing the iterator early
        closes the HTTP request (the API stops generating)."""
        if not wire.AGENT_ID_RE.fullmatch(agent_id):
            raise BridgeError(ErrorCode.NOT_FOUND, f"{agent_id!r} is not a MOMO AI agent id")
        await self.pacer.acquire()
        body = wire.request_body(
            prompt, temperature=temperature, max_tokens=max_tokens, stream=stream
        )
        url = f"{self._base}/agents/{quote(agent_id, safe='')}"
        cfg = self._config
        loop = asyncio.get_running_loop()
        # Until the answer's first text: the request, the headers, and (streamed) the first
        # piece. A whole answer is generated before its headers come: it has longer.
        wait = cfg.first_event_timeout if stream else cfg.answer_timeout
        first_by = loop.time() + wait
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout_at(first_by):
                    resp = await self._http().post(url, json=body)
            except aiohttp.ServerTimeoutError as e:
                # aiohttp's own connect timeout (a TimeoutError too): not an answer's delay.
                raise BridgeError(
                    ErrorCode.UPSTREAM_TIMEOUT, f"MOMO AI could not be reached: {_describe(e)}"
                ) from None
            except TimeoutError:
                raise BridgeError(
                    ErrorCode.UPSTREAM_TIMEOUT, f"MOMO AI did not start answering in {wait:g} s"
                ) from None
            if resp.status >= 400 or _is_whole(resp):
                # Some servers ignore `stream` and send the whole envelope.
                answer = wire.parse_answer(await self._whole(resp))
                if answer.content:
                    yield TextDelta(answer.content)
                yield StreamEnd(answer.tokens_used, answer.cost, answer.request_id)
                return
            events = self._events(resp, first_by)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        except aiohttp.ClientPayloadError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI's stream was cut off: {_describe(e)}"
            ) from None
        except aiohttp.ClientError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI connection failed: {_describe(e)}"
            ) from None
        except wire.WireError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI answered something unreadable: {e}"
            ) from None
        finally:
            if resp is not None:
                # Not release(): a stream left unread must close its connection, which is what
                # tells the API to stop generating.
                resp.close()

    async def _whole(self, resp: aiohttp.ClientResponse) -> Any:
        timeout = self._config.answer_timeout
        try:
            async with asyncio.timeout(timeout):
                raw = await _read_capped(resp)
        except TimeoutError:
            raise BridgeError(
                ErrorCode.UPSTREAM_TIMEOUT, f"MOMO AI's whole answer took longer than {timeout:g} s"
            ) from None
        return self._body_or_raise(resp.status, raw, resp.headers.get("Retry-After"))

    async def _events(
        self, resp: aiohttp.ClientResponse, first_by: float
    ) -> AsyncGenerator[TextDelta | StreamEnd, None]:
        """The stream's events; nothing at all by ``first_by`` (loop time), then nothing for
        ``idle_timeout`` between two pieces, is a timeout."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        parser = StreamParser()
        # The start of the body, kept to explain a "stream" that carried no text at all (an
        # error page, a pretty-printed error envelope).
        head = b""
        seen_text = False
        try:
            while True:
                started = bool(head)
                by = loop.time() + cfg.idle_timeout if started else first_by
                try:
                    async with asyncio.timeout_at(by):
                        piece = await resp.content.readany()
                except TimeoutError:
                    raise BridgeError(
                        ErrorCode.UPSTREAM_TIMEOUT,
                        f"MOMO AI's stream sent nothing for {cfg.idle_timeout:g} s"
                        if started
                        else f"MOMO AI did not start answering in {cfg.first_event_timeout:g} s",
                    ) from None
                if len(head) < HEAD_KEPT:
                    head += piece[: HEAD_KEPT - len(head)]
                for event in parser.feed(piece) if piece else parser.close():
                    if isinstance(event, StreamFailure):
                        self.note(event.failure)
                        raise MomoAIError(event.failure)
                    seen_text = seen_text or isinstance(event, TextDelta)
                    yield event
                if parser.ended:
                    return
                if not piece:
                    break
        except StreamError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI's stream is unreadable: {e}"
            ) from None
        # The body ended without a final line.
        if not seen_text and (not head.strip() or head.lstrip().startswith(_STREAM_LINES)):
            raise BridgeError(ErrorCode.UPSTREAM_ERROR, "MOMO AI's stream ended without any text")
        if not seen_text:
            # Not a stream after all: an error page, a pretty-printed error envelope.
            retry_after = resp.headers.get("Retry-After")
            answer = wire.parse_answer(self._body_or_raise(resp.status, head, retry_after))
            if answer.content:
                yield TextDelta(answer.content)
            yield StreamEnd(answer.tokens_used, answer.cost, answer.request_id)
        elif _framed(resp):
            # A chunked or sized body that ended properly: the answer is what came.
            yield StreamEnd()
        else:
            # Ended by closing the connection: a cut looks exactly like this.
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR,
                "MOMO AI's stream ended without its final line (the connection closed)",
            )


def _is_whole(resp: aiohttp.ClientResponse) -> bool:
    """Plain JSON (not NDJSON or an event stream): one answer, read whole."""
    return resp.content_type.lower() in ("application/json", "text/json")


def _framed(resp: aiohttp.ClientResponse) -> bool:
    """Whether the body's end is marked (chunked or sized), so a cut shows as a payload error
    rather than as an end."""
    chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
    return chunked or "Content-Length" in resp.headers


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        piece = await resp.content.read(READ_CHUNK)
        if not piece:
            return b"".join(chunks)
        size += len(piece)
        if size > MAX_BODY:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI's answer is larger than {MAX_BODY} bytes"
            )
        chunks.append(piece)


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
