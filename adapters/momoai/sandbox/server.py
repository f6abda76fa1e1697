"""The sandbox on a real loopback socket: MomoAISandbox for tests, run_standalone for the CLI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from adapters.momoai.sandbox import controls, errors, routes
from adapters.momoai.sandbox.agents import DEFAULT_AGENTS, Agent
from adapters.momoai.sandbox.faults import Fault, make_fault
from adapters.momoai.sandbox.state import STATE, Recorded, SandboxState
from bridge.addresses import url_host

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# How long close() lets aiohttp wait for handlers; ours end at once (close cuts their streams).
SHUTDOWN_TIMEOUT = 2.0
DEFAULT_KEYS = {"sandbox-key": "pro"}


@web.middleware
async def _envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return await handler(request)
    try:
        return await handler(request)
    except errors.ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # An unknown path or method under /v1 still needs a key first ("every endpoint").
        try:
            request.app[STATE].authenticate(request)
        except errors.ApiError as auth:
            return auth.response()
        code = {413: "INVALID_PARAMETERS"}.get(e.status, "NOT_FOUND")
        details = f"{request.method} {request.path}: {e.reason}"
        return errors.ApiError(code, details, status=e.status).response()
    except Exception:
        log.exception("momoai_sandbox.handler_crashed", path=request.path)
        return errors.ApiError("INTERNAL_ERROR", "sandbox handler crashed", status=500).response()


def create_app(state: SandboxState, *, controls_enabled: bool = False) -> web.Application:
    app = web.Application(
        middlewares=[_envelope],
        # Cancel a handler as soon as its client disconnects: that is how a stalled or sleeping
        # stream learns the client left (and `aborted` is counted) without writing anything.
        handler_args={"handler_cancellation": True},
    )
    app[STATE] = state
    app.add_routes(routes.routes)
    if controls_enabled:
        app.add_routes(controls.routes)
    return app


class MomoAISandbox:
    """MOMO AI's agents API on a real socket; see the package docstring for its behaviour."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: dict[str, str] | None = None,
        token_delay: float = 0.0,
        balance: float = 100.0,
        agents: list[dict[str, Any]] | None = None,
        controls: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.controls = controls
        self.state = SandboxState(
            keys=dict(DEFAULT_KEYS if keys is None else keys),
            balance=balance,
            agents=DEFAULT_AGENTS if agents is None else agents,
            token_delay=token_delay,
            clock=clock,
        )
        self.app = create_app(self.state, controls_enabled=controls)
        self.base_url = ""
        self.root_url = ""  # without /v1: the controls live at root_url + "/_sandbox/..."
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen and return the base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        if self._runner is not None:
            return self.base_url
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, self.port = runner.addresses[0][:2]
        self.root_url = f"http://{url_host(self.host, bound_host)}:{self.port}"
        self.base_url = self.root_url + "/v1"
        return self.base_url

    async def close(self) -> None:
        """Stop listening and end every open stream (cut, as a dying server would). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.state.closing.set()  # wakes stalls and token delays
        for transport in list(self.state.stream_transports):
            transport.abort()  # unblocks a write waiting on a client that stopped reading
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT * 3):
                await runner.cleanup()
        except TimeoutError:
            log.warning("momoai_sandbox.close_timed_out", base_url=self.base_url)

    async def __aenter__(self) -> MomoAISandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what tests look at ------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """The POST /agents/{id} calls, oldest first: a copy of the latest `MAX_RECORDED`."""
        return list(self.state.requests)

    @property
    def request_count(self) -> int:
        """Every POST /agents/{id} call since the start (or reset), also those no longer kept."""
        return self.state.request_count

    @property
    def balance(self) -> float:
        return self.state.balance

    @balance.setter
    def balance(self, value: float) -> None:
        self.state.balance = round(float(value), 6)
        self.state.changed()

    @property
    def agents(self) -> dict[int, Agent]:
        return self.state.agents

    @property
    def aborted(self) -> int:
        return self.state.aborted

    @property
    def open_streams(self) -> int:
        return self.state.open_streams

    @property
    def completed_streams(self) -> int:
        return self.state.completed_streams

    @property
    def dropped(self) -> int:
        return self.state.dropped

    # -- what tests do -----------------------------------------------------------------------

    def inject(self, kind: str, *, count: int = 1, **params: Any) -> Fault:
        """Queue a fault for the next `count` matching calls; ValueError on a bad kind or param."""
        fault = make_fault(kind, count, **params)
        self.state.faults.add(fault)
        return fault

    def reset(self) -> None:
        self.state.reset()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        """Until `condition()` holds (re-checked on every change); TimeoutError after `timeout`."""
        await self.state.wait_until(condition, timeout)

    async def wait_aborted(self, n: int = 1, timeout: float = 10) -> None:
        """Until `n` streams in all were abandoned by their client; TimeoutError after `timeout`."""
        await self.wait_until(lambda: self.state.aborted >= n, timeout)

    async def wait_requests(self, n: int = 1, timeout: float = 10) -> None:
        """Until `n` POST /agents/{id} calls in all were received."""
        await self.wait_until(lambda: self.state.request_count >= n, timeout)


async def run_standalone(
    host: str,
    port: int,
    keys: dict[str, str],
    stop: asyncio.Event,
    token_delay: float = 0.02,
    *,
    controls: bool = True,
    balance: float = 100.0,
    started: asyncio.Future[str] | None = None,
) -> None:
    """Serve until `stop` is set (`momobridge momoai-sandbox`). Controls answer loopback only.

    `port` 0 lets the OS choose one; the URL actually served (``http://HOST:PORT/v1``) is logged
    as ``momoai_sandbox.listening`` and, when given, set as the result of `started` once the
    socket listens (or `started` gets the error that kept it from listening).
    """
    sandbox = MomoAISandbox(
        host=host, port=port, keys=keys, token_delay=token_delay, balance=balance, controls=controls
    )
    try:
        base_url = await sandbox.start()
    except BaseException as e:
        if started is not None and not started.done():
            if isinstance(e, Exception):
                started.set_exception(e)
            else:
                started.cancel()
        raise
    try:
        log.info(
            "momoai_sandbox.listening",
            base_url=base_url,
            api_keys={key: tier for key, tier in sandbox.state.keys.items()},
            agents={a.id: a.name for a in sandbox.agents.values()},
            controls=sandbox.root_url + "/_sandbox/" if controls else None,
        )
        if started is not None and not started.done():
            started.set_result(base_url)
        await stop.wait()
    finally:
        await sandbox.close()
        log.info("momoai_sandbox.stopped")
