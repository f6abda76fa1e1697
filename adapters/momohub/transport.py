"""MomoHub's HTTP core on aiohttp: requests with the retries that are safe, answers read as data.

Retry policy, and why:
* 401 → one shared renewal (refresh, else sign in again), then one retry. A 401 means the request was
  rejected before anything ran, so retrying even a POST is safe. Never more than once per request.
* 429 → wait ``Retry-After`` if it is within ``max_retry_after`` (a rejected request did not run, so
  this is safe for POSTs too), at most ``MAX_RATE_WAITS`` times; otherwise RATE_LIMITED.
* 5xx / connection errors → GETs retry with exponential backoff (3 tries in all). Anything else is
  never retried: a POST that died with a 500 may have created a chat or stored a message already.

Tokens and their renewal belong to the auth layer (``auth.py``) built on this one; the two hooks it
fills in, ``_token_for_request`` and ``_renew``, are all this layer knows of them.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from pydantic import ValidationError

from adapters.momohub.errors import MomoHubAuthError, MomoHubError
from adapters.momohub.types import Envelope
from bridge.config import MomoHubConfig
from bridge.errors import ErrorCode
from bridge.health import OK, STARTING, UNREACHABLE

__all__ = ["MomoHubTransport", "interpret", "retry_after"]

# The client's logger name from before it was split into modules, so log filters still match.
log = structlog.get_logger("adapters.momohub.client")


def _decode_body(body: bytes) -> tuple[Envelope | None, Any, str]:
    """(envelope if the body is one, parsed JSON or None, text)."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return None, None, ""
    try:
        parsed = jsonlib.loads(text)
    except ValueError:
        return None, None, text
    if isinstance(parsed, dict) and isinstance(parsed.get("success"), bool):
        try:
            return Envelope.model_validate(parsed), parsed, text
        except ValidationError:
            pass
    return None, parsed, text


def _message_of(env: Envelope | None, parsed: Any, text: str, fallback: str) -> str:
    if env is not None:
        if env.message:
            base = env.message
        elif env.code:
            base = env.code
        else:
            base = fallback
        if env.errors:
            details = "; ".join(f"{k}: {v}" for k, v in env.errors.items())
            base = f"{base} ({details})"
        return base
    if isinstance(parsed, dict):
        for key in ("message", "error", "detail"):
            value = parsed.get(key)
            if isinstance(value, str) and value:
                return value
    if text and parsed is None:
        return text[:300]
    return fallback


def _error_for(status: int, message: str, server_code: str | None) -> MomoHubError:
    if status in (401, 403):
        return MomoHubAuthError(message, status=status)
    if status == 404:
        code = ErrorCode.NOT_FOUND
    elif status == 429:
        code = ErrorCode.RATE_LIMITED
    elif status in (400, 422):
        code = ErrorCode.INVALID_DATA
    elif status == 409 and server_code == "CONCURRENT_CONFLICT":
        code = ErrorCode.BUSY
    else:
        code = ErrorCode.UPSTREAM_ERROR
    return MomoHubError(
        f"MomoHub HTTP {status}: {message}",
        code=code,
        status=status,
        server_code=server_code,
        server_message=message,
    )


# The envelope can say success=false on an HTTP 200; its code tells what it would have been.
_CODE_STATUS = {
    "VALIDATION_ERROR": 400,
    "BAD_REQUEST": 400,
    "BAD_REQUEST_BODY": 400,
    "AUTHENTICATION_FAILED": 401,
    "AUTHORIZATION_FAILED": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "CONCURRENT_CONFLICT": 409,
    "HIT_LIMIT": 429,
}


def interpret(status: int, body: bytes, reason: str) -> Any:
    """The ``data`` of a successful answer, or the MomoHubError the answer amounts to."""
    if status == 204:
        return None
    env, parsed, text = _decode_body(body)
    if 200 <= status < 300:
        if env is None:
            if parsed is None and text:
                raise MomoHubError(
                    f"MomoHub HTTP {status}: expected JSON, got: {text[:200]}", status=status
                )
            return parsed  # a build without the envelope: the body is the data
        if env.success:
            return env.data
        status = _CODE_STATUS.get(env.code or "", 502)
    message = _message_of(env, parsed, text, reason or f"HTTP {status}")
    raise _error_for(status, message, env.code if env else None)


def retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


class MomoHubTransport(ABC):
    """Sends requests to one MomoHub base URL and turns the answers into data or MomoHubErrors."""

    MAX_GET_TRIES = 3
    MAX_RATE_WAITS = 3

    def __init__(
        self,
        config: MomoHubConfig,
        *,
        base_url: str | None = None,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self._config = config
        # Reachability/auth as last seen: "starting", "ok", "auth_failed" or "unreachable";
        # every report also goes to ``on_state(state, detail)`` (readiness).
        self.state = STARTING
        self.state_detail = ""
        self._on_state = on_state
        self._base = (base_url if base_url is not None else config.base_url).rstrip("/")
        # First backoff step for GET retries (doubles each try, plus jitter); tests shrink it.
        self.retry_backoff = 0.25
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _report(self, state: str, detail: str = "") -> None:
        self.state, self.state_detail = state, detail
        if self._on_state is not None:
            self._on_state(state, detail)

    def _open_http(self) -> None:
        self._closed = False
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self._config.request_timeout, connect=self._config.connect_timeout
            ),
            raise_for_status=False,
        )

    async def _close_http(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ----- hooks the auth layer fills in --------------------------------------------------------

    @abstractmethod
    async def _token_for_request(self) -> tuple[str, int]:
        """The bearer token to send (empty: none) and the generation it belongs to."""

    @abstractmethod
    async def _renew(self, failed_generation: int) -> None:
        """Replace the token of ``failed_generation``, which MomoHub just refused."""

    # ----- requests -----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self._base + path

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._closed:
            raise MomoHubError("MomoHub client is not started", code=ErrorCode.UNAVAILABLE)
        return self._session

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: Mapping[str, Any] | None,
        token: str | None,
    ) -> tuple[int, CIMultiDictProxy[str], bytes, str]:
        session = self._require_session()
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        async with session.request(
            method, self._url(path), json=json, params=params, headers=headers
        ) as resp:
            body = await resp.read()
            log.debug(
                "momohub.http",
                method=method,
                path=path,
                status=resp.status,
                ms=round((time.monotonic() - started) * 1000),
            )
            return resp.status, resp.headers, body, resp.reason or ""

    async def _backoff(self, attempt: int) -> None:
        delay = self.retry_backoff * (2**attempt)
        await asyncio.sleep(delay + random.uniform(0, delay / 2))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        """One API call with the retry policy of the module doc; returns the envelope's data."""
        retry_transport = method == "GET"
        tries = 0
        rate_waits = 0
        renewed = False
        while True:
            token, generation = ("", 0)
            if auth:
                token, generation = await self._token_for_request()
            tries += 1
            try:
                status, headers, body, reason = await self._send(
                    method, path, json=json, params=params, token=token or None
                )
            except TimeoutError as e:
                self._report(UNREACHABLE, f"no answer to {method} {path} in time")
                raise MomoHubError(
                    f"MomoHub did not answer {method} {path} in time",
                    code=ErrorCode.UPSTREAM_TIMEOUT,
                ) from e
            except aiohttp.ClientError as e:
                if retry_transport and tries < self.MAX_GET_TRIES:
                    log.info("momohub.retry", method=method, path=path, error=type(e).__name__)
                    await self._backoff(tries - 1)
                    continue
                self._report(UNREACHABLE, f"cannot reach MomoHub: {e or type(e).__name__}")
                raise MomoHubError(f"cannot reach MomoHub: {e or type(e).__name__}") from e
            try:
                data = interpret(status, body, reason)
            except MomoHubError as e:
                if e.status == 401 and auth and not renewed:
                    renewed = True
                    await self._renew(generation)
                    continue
                if e.status == 429:
                    await self._wait_rate_limit(e, headers, rate_waits)
                    rate_waits += 1
                    continue
                if (
                    e.status is not None
                    and e.status >= 500
                    and retry_transport
                    and tries < self.MAX_GET_TRIES
                ):
                    log.info("momohub.retry", method=method, path=path, status=e.status)
                    await self._backoff(tries - 1)
                    continue
                if e.status in (502, 503, 504):
                    self._report(UNREACHABLE, e.reason)
                raise
            self._report(OK)
            return data

    async def _wait_rate_limit(
        self, error: MomoHubError, headers: Mapping[str, str], waits: int
    ) -> None:
        """Sleep as MomoHub asked, or raise RATE_LIMITED if that is too long or too often."""
        delay = retry_after(headers)
        wait = 1.0 if delay is None else delay
        if waits >= self.MAX_RATE_WAITS or wait > self._config.max_retry_after:
            after = "" if delay is None else f" (retry after {delay:.0f}s)"
            raise MomoHubError(
                f"MomoHub rate limit{after}: {error.server_message}",
                code=ErrorCode.RATE_LIMITED,
                status=429,
                server_code=error.server_code,
                server_message=error.server_message,
            )
        log.info("momohub.rate_limited", wait=wait)
        await asyncio.sleep(wait)
