"""MomoHub sign-in and tokens: the client's lifecycle, proactive refresh, one shared renewal on 401.

Auth state is a token pair plus a *generation* counter bumped on every new pair. A request remembers
the generation it was sent with, so a 401 for a token that has meanwhile been replaced just retries
with the new one; requests that fail with the current token all await the same renewal task.
The proactive refresh (~30 s before the access token expires) is a ``date`` job on the app's one
scheduler (`bridge.scheduler`), or on one the client owns when it runs on its own; the job only
hands off to an owned task so ``close`` can cancel it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Self

import structlog
from apscheduler.triggers.date import DateTrigger
from pydantic import ValidationError

from adapters.momohub.errors import MomoHubAuthError, MomoHubError
from adapters.momohub.transport import MomoHubTransport
from adapters.momohub.types import AuthResult, Tokens, User, jwt_expiry
from bridge.config import MomoHubConfig
from bridge.errors import ErrorCode
from bridge.health import AUTH_FAILED, UNREACHABLE
from bridge.scheduler import Scheduler

__all__ = ["REFRESH_JOB_ID", "MomoHubAuth"]

# The client's logger name from before it was split into modules, so log filters still match.
log = structlog.get_logger("adapters.momohub.client")

REFRESH_JOB_ID = "momohub-token-refresh"


class MomoHubAuth(MomoHubTransport):
    """The transport with a signed-in account behind it; ``start`` opens it, ``close`` ends it."""

    # How long before the access token expires the scheduled refresh runs.
    REFRESH_LEAD = 30.0
    # Never schedule refreshes closer than this (a server handing out nearly-expired tokens must
    # not turn into a refresh storm).
    MIN_REFRESH_DELAY = 0.5
    # After a failed scheduled refresh, try again this much later (while the token still lives).
    REFRESH_RETRY = 15.0
    # Background sign-in (``start(wait=False)``): first retry after this, doubling up to the cap.
    MAX_CONNECT_BACKOFF = 300.0

    def __init__(
        self,
        config: MomoHubConfig,
        *,
        base_url: str | None = None,
        on_state: Callable[[str, str], None] | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__(config, base_url=base_url, on_state=on_state)
        self.connect_backoff = 1.0
        # The app's scheduler when given (started and stopped by the app), else our own.
        self._shared_scheduler = scheduler
        self._scheduler: Scheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renew_task: asyncio.Task[None] | None = None
        self._access = ""
        self._refresh = ""
        self._access_exp: float | None = None
        self._generation = 0
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
        self._open_http()
        if self._shared_scheduler is not None:
            self._scheduler = self._shared_scheduler
        else:
            self._scheduler = Scheduler()
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

    async def close(self) -> None:
        """Stop the refresh job, cancel owned tasks, close the HTTP session (and open streams)."""
        self._closed = True
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            if scheduler is self._shared_scheduler:
                scheduler.remove(REFRESH_JOB_ID)
            else:
                await scheduler.shutdown()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:
                log.warning("momohub.tasks_stuck_on_close", count=len(pending))
        self._renew_task = None
        await self._close_http()

    async def __aenter__(self) -> Self:
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
        scheduler.remove(REFRESH_JOB_ID)
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
        run_date = datetime.fromtimestamp(time.time() + delay, tz=UTC)
        self._scheduler.add(
            REFRESH_JOB_ID,
            self._refresh_job,
            DateTrigger(run_date=run_date, timezone=UTC),
            # A late wake-up (busy loop, suspended laptop) must still refresh, not skip.
            misfire_grace=None,
        )

    async def _refresh_job(self) -> None:
        # Runs as the scheduler's task; hand off to a task of ours so close() cancels it.
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
