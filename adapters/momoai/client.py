"""The MOMO AI agents API over aiohttp: list agents, read the balance, call an agent (whole or
streamed).

Failures the API reports come out as ``MomoAIError`` carrying its own code, message and details
(see adapters.momoai.wire); a network problem, a timeout or a stream cut short is a BridgeError
(UPSTREAM_ERROR / UPSTREAM_TIMEOUT). Every request first takes a paced slot (adapters.momoai.pacing)
and a Retry-After in a RATE_LIMIT answer pauses the pacer for everyone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

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
                timeout=aiohttp.ClientTimeout(total=None, connect=self._config.connect_timeout),
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
        body: Any = None
        try:
            body = json.loads(raw)
        except ValueError:
            pass
        if resp.status >= 400 or not isinstance(body, dict) or body.get("success") is False:
            failure = wire.parse_failure(
                resp.status,
                body,
                raw.decode("utf-8", "replace"),
                resp.headers.get("Retry-After"),
            )
            self._note(failure)
            raise MomoAIError(failure)
        return body

    def _note(self, failure: wire.ApiFailure) -> None:
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
        resp: aiohttp.ClientResponse | None = None
        try:
            answer: wire.Answer | None = None
            try:
                async with asyncio.timeout(cfg.first_event_timeout):
                    resp = await self._http().post(url, json=body)
                    if resp.status >= 400 or not _is_stream(resp):
                        answer = wire.parse_answer(await self._json_or_raise(resp))
            except TimeoutError:
                raise BridgeError(
                    ErrorCode.UPSTREAM_TIMEOUT,
                    f"MOMO AI did not start answering in {cfg.first_event_timeout:g} s",
                ) from None
            # Yielded outside the timeout: the consumer's time between pieces is not ours.
            if answer is not None:
                if answer.content:
                    yield TextDelta(answer.content)
                yield StreamEnd(answer.tokens_used, answer.cost, answer.request_id)
                return
            assert resp is not None
            async for event in _events(resp, cfg.idle_timeout):
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


async def _events(
    resp: aiohttp.ClientResponse, idle_timeout: float
) -> AsyncIterator[TextDelta | StreamEnd]:
    parser = StreamParser()
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    piece = await resp.content.readany()
            except TimeoutError:
                raise BridgeError(
                    ErrorCode.UPSTREAM_TIMEOUT,
                    f"MOMO AI's stream sent nothing for {idle_timeout:g} s",
                ) from None
            events = parser.feed(piece) if piece else parser.close()
            for event in events:
                if isinstance(event, StreamFailure):
                    raise MomoAIError(event.failure)
                yield event
            if parser.ended:
                return
            if not piece:
                # A clean end of the body without a final line: the answer is what came.
                yield StreamEnd()
                return
    except StreamError as e:
        raise BridgeError(
            ErrorCode.UPSTREAM_ERROR, f"MOMO AI's stream is unreadable: {e}"
        ) from None


def _is_stream(resp: aiohttp.ClientResponse) -> bool:
    # Some servers ignore `stream` and answer with the whole JSON envelope.
    return "json" not in resp.headers.get("Content-Type", "").lower()


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
