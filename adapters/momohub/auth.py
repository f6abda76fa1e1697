"""MomoHub sign-in and tokens: the client's lifecycle, proactive refresh, one shared renewal on 401.

Auth state is a token pair plus a *generation* counter bumped on every new pair. A request remembers
the generation it was sent with, so a 401 for a token that has meanwhile been replaced just retries
with the new one; requests that fail with the current token all await the same renewal task.
The proactive refresh (~30 s before the access token expires) is a ``date`` job on the app's one
scheduler (`bridge.scheduler`), or on one the client owns when it runs on its own; the job only
hands off to an owned task so ``close`` can cancel it.

In a cluster (``shared_tokens``, see `adapters.momohub.shared_tokens`) the pair is the cluster's,
kept in Redis: MomoHub rotates refresh tokens, so nodes renewing on their own would spend each
other's refresh token and sign in again and again. A node needing a token (none yet, one about to
expire, a 401) first re-reads Redis and takes what another node stored meanwhile; only if that
is still the token it had does it take the lease ``momohub:auth``, re-read once more (the node
before it in line may have renewed), and then refresh (or sign in) and store the new pair for
everyone. Within a node it is still one renewal task that all of its waiting requests share.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

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

if TYPE_CHECKING:
    # Only a cluster's client uses them (and they bring the Redis client library along).
    from adapters.momohub.shared_tokens import SharedTokens, StoredTokens

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
    # A cluster's stored token this close to its expiry is renewed rather than taken up.
    SHARED_EXPIRY_MARGIN = 1.0

    def __init__(
        self,
        config: MomoHubConfig,
        *,
        base_url: str | None = None,
        on_state: Callable[[str, str], None] | None = None,
        scheduler: Scheduler | None = None,
        shared_tokens: SharedTokens | None = None,
    ) -> None:
        super().__init__(config, base_url=base_url, on_state=on_state)
        # The cluster's token pair in Redis (None: this client's own pair, as a lone bridge).
        self._shared = shared_tokens
        # The configured tokens start the cluster's pair once, when Redis has none yet.
        self._config_tokens_offered = False
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
            if self._shared is not None and self._can_authenticate():
                # The cluster's pair; or this node signs in (or seeds the configured tokens).
                if wait:
                    await self._sign_in_or_defer(self._renew(self._generation))
                else:
                    self._spawn(self._connect_loop(), name="momohub-connect")
            elif self._config.access_token:
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
                await self._sign_in_or_defer(self._sign_in())
            else:
                log.warning("momohub.no_credentials", hint="set momohub.email/password or tokens")
        except BaseException:
            await self.close()
            raise

    async def _sign_in_or_defer(self, attempt: Awaitable[None]) -> None:
        """Await a sign-in at start: rejected credentials raise, an unreachable MomoHub defers
        the sign-in to the first request."""
        try:
            await attempt
        except MomoHubAuthError:
            raise
        except MomoHubError as e:
            if e.status is not None and e.status < 500:
                raise
            log.warning("momohub.sign_in_deferred", reason=e.reason)

    def _can_authenticate(self) -> bool:
        c = self._config
        return bool(c.access_token or c.refresh_token or (c.email and c.password))

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
        self,
        access: str,
        refresh: str | None,
        expires_at: float | None,
        *,
        how: str,
        shared_generation: int | None = None,
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
            **({} if shared_generation is None else {"shared_generation": shared_generation}),
        )
        self._schedule_refresh()

    def _install(self, result: Any, *, how: str) -> None:
        auth = _auth_result(result, how)
        tokens: Tokens = auth.tokens
        if auth.user is not None:
            self.user = auth.user
        self._install_tokens(
            tokens.accessToken,
            tokens.refreshToken,
            tokens.accessTokenExpiredIn or jwt_expiry(tokens.accessToken),
            how=how,
        )

    async def _sign_in_call(self) -> Any:
        return await self._call(
            "POST",
            "/auth/sign-in/email",
            json={"email": self._config.email, "password": self._config.password},
            auth=False,
        )

    async def _refresh_call(self, refresh: str) -> Any:
        return await self._call("POST", "/auth/refresh", json={"refreshToken": refresh}, auth=False)

    async def _sign_in(self) -> None:
        self._install(await self._sign_in_call(), how="sign-in")

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
        if self._shared is not None:
            await self._renew_shared(self._shared, self._access)
            return
        refresh_failure: MomoHubError | None = None
        if self._refresh:
            try:
                self._install(await self._refresh_call(self._refresh), how="refresh")
                return
            except MomoHubError as e:
                refresh_failure = e
                log.info("momohub.refresh_failed", status=e.status, reason=e.server_message)
        self._install(await self._sign_in_again(refresh_failure), how="sign-in")

    async def _sign_in_again(self, refresh_failure: MomoHubError | None) -> Any:
        """The reply of a fresh sign-in after the refresh could not be used; MomoHubAuthError
        when there are no credentials or MomoHub refuses them."""
        if not (self._config.email and self._config.password):
            why = refresh_failure.server_message if refresh_failure else "no token to refresh"
            raise MomoHubAuthError(
                f"{why} (and no email/password configured to sign in again)",
                status=refresh_failure.status if refresh_failure else None,
            )
        try:
            return await self._sign_in_call()
        except MomoHubAuthError:
            raise
        except MomoHubError as e:
            if e.status is None or e.status >= 500 or e.code == ErrorCode.RATE_LIMITED:
                raise  # MomoHub is down or busy: say so rather than blame the credentials
            raise MomoHubAuthError(e.server_message, status=e.status) from e

    # ----- the cluster's pair -------------------------------------------------------------------

    async def _renew_shared(self, shared: SharedTokens, failed: str) -> None:
        """Replace `failed` (this node's token, refused or about to expire; "" for none yet) with
        the cluster's pair, renewing it for every node if nobody has yet."""
        from bridge.cluster import ClusterError, LeaseBusy

        try:
            if self._adopt(await shared.read(), failed):
                return
            try:
                async with shared.hold(wait=self._one_renewal_limit()) as kept:
                    # The node before us in line for the lease may have renewed already.
                    stored = await shared.read()
                    if self._adopt(stored, failed):
                        return
                    await self._renew_for_cluster(shared, stored, failed, kept.token)
            except LeaseBusy:
                # The holder took longer than any renewal should: it may still have stored one.
                if self._adopt(await shared.read(), failed):
                    return
                raise MomoHubError(
                    "another bridge node is renewing the MomoHub sign-in and has not finished",
                    code=ErrorCode.UPSTREAM_TIMEOUT,
                ) from None
        except ClusterError as e:
            # No renewal without Redis: a refresh here would spend the other nodes' token.
            raise MomoHubError(
                f"the cluster's MomoHub sign-in is out of reach: {e}", code=ErrorCode.UNAVAILABLE
            ) from e

    def _adopt(self, stored: StoredTokens | None, failed: str) -> bool:
        """Take up the stored pair if it is not the token that failed and not about to expire."""
        if stored is None or stored.access == failed or stored.expired(self.SHARED_EXPIRY_MARGIN):
            return False
        if stored.access != self._access:
            self._install_stored(stored, how=f"cluster ({stored.how} by {stored.node})")
        return True

    def _install_stored(self, stored: StoredTokens, *, how: str) -> None:
        if stored.user is not None:
            try:
                self.user = User.model_validate(stored.user)
            except ValidationError:
                pass
        self._install_tokens(
            stored.access,
            stored.refresh,
            stored.access_expires_at,
            how=how,
            shared_generation=stored.generation,
        )

    async def _renew_for_cluster(
        self, shared: SharedTokens, stored: StoredTokens | None, failed: str, fence: int
    ) -> None:
        """Holding the lease (fencing token `fence`), with `stored` still the pair in Redis (None:
        none yet): get a new pair from MomoHub and store it for every node."""
        c = self._config
        if stored is None and c.access_token and not self._config_tokens_offered:
            # The configured tokens start the cluster's pair, as they start a lone bridge's.
            self._config_tokens_offered = True
            await self._store_pair(
                shared,
                fence,
                access=c.access_token,
                refresh=c.refresh_token,
                expires_at=jwt_expiry(c.access_token),
                user=None,
                how="config",
            )
            return
        refresh = stored.refresh if stored is not None else ""
        if stored is None and c.refresh_token and not self._config_tokens_offered:
            self._config_tokens_offered = True
            refresh = c.refresh_token
        refresh_failure: MomoHubError | None = None
        if refresh:
            try:
                result = await self._refresh_call(refresh)
            except MomoHubError as e:
                refresh_failure = e
                log.info("momohub.refresh_failed", status=e.status, reason=e.server_message)
                # A refresh token works once: refused, it may have been spent by a holder whose
                # lease ran out under it and who stored its pair after all. Theirs, if so.
                again = await shared.read()
                changed = again is not None and (
                    stored is None or again.generation != stored.generation
                )
                if changed and self._adopt(again, failed):
                    return
            else:
                await self._store_auth(shared, fence, result, refresh, how="refresh")
                return
        result = await self._sign_in_again(refresh_failure)
        await self._store_auth(shared, fence, result, "", how="sign-in")

    async def _store_auth(
        self, shared: SharedTokens, fence: int, result: Any, old_refresh: str, *, how: str
    ) -> None:
        auth = _auth_result(result, how)
        tokens = auth.tokens
        await self._store_pair(
            shared,
            fence,
            access=tokens.accessToken,
            # A server that does not rotate sends no new refresh token: the old one stays good.
            refresh=tokens.refreshToken or old_refresh,
            expires_at=tokens.accessTokenExpiredIn or jwt_expiry(tokens.accessToken),
            user=auth.user,
            how=how,
        )

    async def _store_pair(
        self,
        shared: SharedTokens,
        fence: int,
        *,
        access: str,
        refresh: str,
        expires_at: float | None,
        user: User | None,
        how: str,
    ) -> None:
        from bridge.cluster import ClusterError

        profile = None if user is None else user.model_dump(mode="json")
        try:
            stored = await shared.write(
                access=access,
                refresh=refresh,
                access_expires_at=expires_at,
                fence=fence,
                how=how,
                user=profile,
            )
        except ClusterError as e:
            # MomoHub just issued this pair, so it works: use it here at least. The other nodes
            # find the stored one refused in time and renew it themselves (a refresh that fails
            # is followed by a sign-in: no loop).
            log.warning("momohub.shared_tokens_not_stored", how=how, error=str(e))
            if user is not None:
                self.user = user
            self._install_tokens(access, refresh, expires_at, how=how)
            return
        self._install_stored(stored, how=how)

    def _one_renewal_limit(self) -> float:
        """The longest one renewal (a refresh, then a sign-in) may take."""
        c = self._config
        per_call = c.request_timeout + self.MAX_RATE_WAITS * c.max_retry_after
        return 2 * per_call + c.connect_timeout

    def _renew_wait_limit(self) -> float:
        one = self._one_renewal_limit()
        if self._shared is None:
            return one
        # In a cluster: the wait for another node's renewal (the lease), then perhaps our own,
        # and the Redis calls around them.
        return 2 * one + 6 * self._shared.timeout

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
        can_renew = self._refresh or (self._config.email and self._config.password)
        if self._shared is not None:
            can_renew = can_renew or self._can_authenticate()
        if not self._access and can_renew:
            # No token yet (deferred sign-in): get one; failure is the request's error.
            await self._renew(self._generation)
        # Without any way to authenticate, go anonymous: public listings still work, and a 401
        # from anything else reports the missing credentials.
        return self._access, self._generation


def _auth_result(result: Any, how: str) -> AuthResult:
    try:
        return AuthResult.model_validate(result)
    except ValidationError as e:
        raise MomoHubError(f"MomoHub {how} reply has no usable tokens") from e
