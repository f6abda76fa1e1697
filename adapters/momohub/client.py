"""MomoHub REST + SSE client on aiohttp: auth with shared refresh, retries that are safe, typed results.

Retry policy, and why:
* 401 → one shared renewal (refresh, else sign in again), then one retry. A 401 means the request was
  rejected before anything ran, so retrying even a POST is safe. Never more than once per request.
* 429 → wait ``Retry-After`` if it is within ``max_retry_after`` (a rejected request did not run, so
  this is safe for POSTs too), at most ``MAX_RATE_WAITS`` times; otherwise RATE_LIMITED.
* 5xx / connection errors → GETs retry with exponential backoff (3 tries in all). Anything else is
  never retried: a POST that died with a 500 may have created a chat or stored a message already.

Auth state is a token pair plus a *generation* counter bumped on every new pair. A request remembers
the generation it was sent with, so a 401 for a token that has meanwhile been replaced just retries
with the new one; requests that fail with the current token all await the same renewal task.
The proactive refresh (~30 s before the access token expires) is an apscheduler ``date`` job on a
scheduler the client owns; the job only hands off to an owned task so ``close`` can cancel it.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ValidationError

from adapters.momohub.sse import SSEParser, SSEProtocolError
from adapters.momohub.types import (
    AuthResult,
    Character,
    Chat,
    ChatConfig,
    Envelope,
    Message,
    Page,
    StreamDecoder,
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    Tokens,
    User,
    jwt_expiry,
)
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.health import AUTH_FAILED, OK, STARTING, UNREACHABLE

__all__ = ["MomoHubAuthError", "MomoHubClient", "MomoHubError"]

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

REFRESH_JOB_ID = "momohub-token-refresh"
_EPOCH = datetime.fromtimestamp(0, tz=UTC)


class MomoHubError(BridgeError):
    """A MomoHub failure as the bridge reports it. ``status`` is the HTTP status (None for transport
    failures); ``server_message`` is MomoHub's own text, kept so wrappers don't repeat prefixes."""

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.UPSTREAM_ERROR,
        status: int | None = None,
        server_code: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(code, reason)
        self.status = status
        self.server_code = server_code
        self.server_message = server_message if server_message is not None else reason


class MomoHubAuthError(MomoHubError):
    """MomoHub refused our credentials even after a refresh and a fresh sign-in."""

    def __init__(self, server_message: str, *, status: int | None = None) -> None:
        super().__init__(
            f"authentication failed: {server_message}",
            status=status,
            server_message=server_message,
        )


def _seg(value: str) -> str:
    """One path segment: ids come from users and other systems, never trust them in a URL."""
    return quote(str(value), safe="")


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


def _interpret(status: int, body: bytes, reason: str) -> Any:
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


def _retry_after(headers: Mapping[str, str]) -> float | None:
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


class MomoHubClient:
    """A signed-in MomoHub account. ``start`` before use, ``close`` when done."""

    # How long before the access token expires the scheduled refresh runs.
    REFRESH_LEAD = 30.0
    # Never schedule refreshes closer than this (a server handing out nearly-expired tokens must
    # not turn into a refresh storm).
    MIN_REFRESH_DELAY = 0.5
    # After a failed scheduled refresh, try again this much later (while the token still lives).
    REFRESH_RETRY = 15.0
    MAX_GET_TRIES = 3
    MAX_RATE_WAITS = 3
    # Background sign-in (``start(wait=False)``): first retry after this, doubling up to the cap.
    MAX_CONNECT_BACKOFF = 300.0

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
        self.connect_backoff = 1.0
        self._base = (base_url if base_url is not None else config.base_url).rstrip("/")
        # First backoff step for GET retries (doubles each try, plus jitter); tests shrink it.
        self.retry_backoff = 0.25
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renew_task: asyncio.Task[None] | None = None
        self._access = ""
        self._refresh = ""
        self._access_exp: float | None = None
        self._generation = 0
        self._closed = False
        self.user: User | None = None

    # ----- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> None:
        """Open the HTTP session and authenticate.

        Given tokens are used as they are (credentials stay as the fallback). Otherwise we sign in
        now; if MomoHub is unreachable the sign-in is deferred to the first request so the bridge
        can still start, but rejected credentials fail here, where the owner will see it.

        With ``wait=False`` nothing here touches the network: the sign-in runs in an owned
        background task that retries with backoff until it succeeds, reporting ``unreachable``
        or ``auth_failed`` meanwhile (logged, never raised), so a server's start-up never waits
        on MomoHub nor dies of a wrong password.
        """
        if self._session is not None:
            return
        if not self._base:
            raise MomoHubError("momohub.base_url is not set", code=ErrorCode.UNAVAILABLE)
        self._closed = False
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self._config.request_timeout, connect=self._config.connect_timeout
            ),
            raise_for_status=False,
        )
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.start()
        try:
            if self._config.access_token:
                self._install_tokens(
                    self._config.access_token,
                    self._config.refresh_token,
                    jwt_expiry(self._config.access_token),
                    how="config",
                )
            elif not wait and (
                self._config.refresh_token or (self._config.email and self._config.password)
            ):
                self._spawn(self._connect_loop(), name="momohub-connect")
            elif self._config.refresh_token:
                await self._renew(self._generation)
            elif self._config.email and self._config.password:
                try:
                    await self._sign_in()
                except MomoHubAuthError:
                    raise
                except MomoHubError as e:
                    if e.status is not None and e.status < 500:
                        raise
                    log.warning("momohub.sign_in_deferred", reason=e.reason)
            else:
                log.warning("momohub.no_credentials", hint="set momohub.email/password or tokens")
        except BaseException:
            await self.close()
            raise

    async def _connect_loop(self) -> None:
        """Sign in until it works: exponential backoff with jitter, capped; each failure logged."""
        delay = self.connect_backoff
        while not self._closed and not self._access:
            try:
                await self._renew(self._generation)
                return
            except MomoHubError as e:
                wrong = isinstance(e, MomoHubAuthError)
                (log.error if wrong else log.warning)(
                    "momohub.sign_in_failed",
                    state=AUTH_FAILED if wrong else UNREACHABLE,
                    reason=e.reason,
                    retry_in=round(delay, 1),
                )
            except Exception as e:  # a bug must not end the retries for good
                log.exception("momohub.sign_in_crashed", retry_in=round(delay, 1))
                self._report(UNREACHABLE, f"internal error: {type(e).__name__}")
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self.MAX_CONNECT_BACKOFF)

    def _report(self, state: str, detail: str = "") -> None:
        self.state, self.state_detail = state, detail
        if self._on_state is not None:
            self._on_state(state, detail)

    async def close(self) -> None:
        """Stop the refresh job, cancel owned tasks, close the HTTP session (and open streams)."""
        self._closed = True
        if self._scheduler is not None:
            if self._scheduler.running:
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:
                log.warning("momohub.tasks_stuck_on_close", count=len(pending))
        self._renew_task = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> MomoHubClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def generation(self) -> int:
        """Bumped whenever a new token pair is installed (sign-in, refresh)."""
        return self._generation

    @property
    def access_expires_at(self) -> float | None:
        """Epoch seconds when the current access token expires, if known."""
        return self._access_exp

    # ----- owned tasks --------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Renewal failures reach their waiters; this only records ones nobody awaited.
            log.debug("momohub.task_failed", task=task.get_name(), error=str(task.exception()))

    # ----- auth ---------------------------------------------------------------------------------

    def _install_tokens(
        self, access: str, refresh: str | None, expires_at: float | None, *, how: str
    ) -> None:
        self._access = access
        if refresh:
            self._refresh = refresh
        self._access_exp = expires_at
        self._generation += 1
        log.info(
            "momohub.tokens_installed",
            how=how,
            generation=self._generation,
            expires_in=None if expires_at is None else round(expires_at - time.time(), 1),
        )
        self._schedule_refresh()

    def _install(self, result: Any, *, how: str) -> None:
        try:
            auth = AuthResult.model_validate(result)
        except ValidationError as e:
            raise MomoHubError(f"MomoHub {how} reply has no usable tokens") from e
        tokens: Tokens = auth.tokens
        if auth.user is not None:
            self.user = auth.user
        self._install_tokens(
            tokens.accessToken,
            tokens.refreshToken,
            tokens.accessTokenExpiredIn or jwt_expiry(tokens.accessToken),
            how=how,
        )

    async def _sign_in(self) -> None:
        result = await self._call(
            "POST",
            "/auth/sign-in/email",
            json={"email": self._config.email, "password": self._config.password},
            auth=False,
        )
        self._install(result, how="sign-in")

    async def _do_renew(self) -> None:
        """Renew the pair, reporting how that went (one place sees every sign-in's outcome)."""
        try:
            await self._renew_pair()
        except MomoHubAuthError as e:
            self._report(AUTH_FAILED, e.server_message)
            raise
        except MomoHubError as e:
            self._report(UNREACHABLE, e.reason)
            raise

    async def _renew_pair(self) -> None:
        """Refresh the pair; if that fails sign in again; if that fails too, raise (no loop)."""
        refresh_failure: MomoHubError | None = None
        if self._refresh:
            try:
                result = await self._call(
                    "POST", "/auth/refresh", json={"refreshToken": self._refresh}, auth=False
                )
                self._install(result, how="refresh")
                return
            except MomoHubError as e:
                refresh_failure = e
                log.info("momohub.refresh_failed", status=e.status, reason=e.server_message)
        if not (self._config.email and self._config.password):
            why = refresh_failure.server_message if refresh_failure else "no token to refresh"
            raise MomoHubAuthError(
                f"{why} (and no email/password configured to sign in again)",
                status=refresh_failure.status if refresh_failure else None,
            )
        try:
            await self._sign_in()
        except MomoHubAuthError:
            raise
        except MomoHubError as e:
            if e.status is None or e.status >= 500 or e.code == ErrorCode.RATE_LIMITED:
                raise  # MomoHub is down or busy: say so rather than blame the credentials
            raise MomoHubAuthError(e.server_message, status=e.status) from e

    def _renew_wait_limit(self) -> float:
        c = self._config
        per_call = c.request_timeout + self.MAX_RATE_WAITS * c.max_retry_after
        return 2 * per_call + c.connect_timeout

    async def _renew(self, failed_generation: int) -> None:
        """Make sure the token of ``failed_generation`` is replaced, sharing one renewal."""
        if self._generation != failed_generation and self._access:
            return  # already replaced while this request was in flight: just retry
        task = self._renew_task
        if task is None or task.done():
            # A finished task here failed (success would have bumped the generation): a new
            # request may try again, but requests waiting together share one attempt.
            task = self._spawn(self._do_renew(), name="momohub-renew")
            self._renew_task = task
        try:
            async with asyncio.timeout(self._renew_wait_limit()):
                await asyncio.shield(task)
        except TimeoutError as e:
            raise MomoHubError(
                "MomoHub sign-in did not finish in time", code=ErrorCode.UPSTREAM_TIMEOUT
            ) from e

    def _schedule_refresh(self) -> None:
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            return
        if scheduler.get_job(REFRESH_JOB_ID) is not None:
            scheduler.remove_job(REFRESH_JOB_ID)
        if self._access_exp is None:
            return  # unknown lifetime: the 401 path renews when needed
        remaining = self._access_exp - time.time()
        if remaining <= 0:
            log.warning("momohub.token_already_expired")
            return
        lead = self.REFRESH_LEAD if remaining > 2 * self.REFRESH_LEAD else remaining / 2
        self._schedule_job(max(remaining - lead, self.MIN_REFRESH_DELAY))

    def _schedule_job(self, delay: float) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(
            self._refresh_job,
            "date",
            run_date=datetime.fromtimestamp(time.time() + delay, tz=UTC),
            id=REFRESH_JOB_ID,
            replace_existing=True,
            # A late wake-up (busy loop, suspended laptop) must still refresh, not skip.
            misfire_grace_time=None,
            coalesce=True,
        )

    async def _refresh_job(self) -> None:
        # Runs inside apscheduler's executor; hand off to an owned task so close() cancels it.
        if not self._closed:
            self._spawn(self._scheduled_refresh(), name="momohub-scheduled-refresh")

    async def _scheduled_refresh(self) -> None:
        try:
            await self._renew(self._generation)
        except MomoHubError as e:
            log.warning("momohub.scheduled_refresh_failed", reason=e.reason)
            left = None if self._access_exp is None else self._access_exp - time.time()
            if left is not None and left > self.REFRESH_RETRY and self._scheduler is not None:
                self._schedule_job(self.REFRESH_RETRY)

    async def _token_for_request(self) -> tuple[str, int]:
        if not self._access and (self._refresh or (self._config.email and self._config.password)):
            # No token yet (deferred sign-in): get one; failure is the request's error.
            await self._renew(self._generation)
        # Without any way to authenticate, go anonymous: public listings still work, and a 401
        # from anything else reports the missing credentials.
        return self._access, self._generation

    # ----- HTTP core ----------------------------------------------------------------------------

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
                data = _interpret(status, body, reason)
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
        delay = _retry_after(headers)
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
            await self._call("DELETE", f"/chats/{_seg(chat_id)}/{_seg(message_id)}")

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
        seen_event = False
        at_eof = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await resp.content.readany()
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
                _interpret(resp.status, body, resp.reason or "")
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
    out: list[StreamEvent] = []
    for ev in events:
        if isinstance(ev, StreamDelta) and out and isinstance(out[-1], StreamDelta):
            out[-1] = StreamDelta(out[-1].text + ev.text)
        else:
            out.append(ev)
    return out
