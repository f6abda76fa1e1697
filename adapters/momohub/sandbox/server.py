"""The sandbox's aiohttp application, its lifecycle, and the runnable server around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from adapters.momohub.sandbox import (
    controls,
    routes_auth,
    routes_characters,
    routes_chats,
    streaming,
)
from adapters.momohub.sandbox.api import ApiError, error_response
from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from adapters.momohub.sandbox.state import STATE, SandboxState
from bridge.addresses import url_host
from bridge.config import OpenAIProvider, SandboxConfig

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHUTDOWN_TIMEOUT = 5.0


@web.middleware
async def _envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # aiohttp's own 404/405/413 would be plain text; the real server envelopes those too.
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return error_response(ApiError(e.status, e.reason, headers=headers))
    except Exception:
        log.exception("sandbox.handler_crashed", path=request.path)
        return error_response(ApiError(500, "internal server error"))


def _route_key(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else request.path}"


@web.middleware
async def _count_and_inject(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path.startswith(controls.PREFIX):
        return await handler(request)
    state.stats.requests[_route_key(request)] += 1
    fault = (
        state.faults.take(request.method, request.path) if state.config.fault_injection else None
    )
    if fault is None:
        return await handler(request)
    log.debug("sandbox.fault_applied", fault=fault.to_api(), path=request.path)
    is_stream = _route_key(request) == f"POST {streaming.STREAM_PATH}"
    if fault.status is None and is_stream:
        # Stall and drop act inside the stream: after `: connected`, before/among the events.
        request[streaming.FAULT] = fault
        return await handler(request)
    if fault.stall:
        await state.pause(fault.stall)
    if fault.status is not None:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        raise ApiError(
            fault.status, f"injected fault: HTTP {fault.status}", bare=fault.bare, headers=headers
        )
    if fault.drop_after is not None:
        # A plain request has no deltas to count: drop the connection without any answer.
        if request.transport is not None:
            request.transport.abort()
        raise ApiError(500, "connection dropped by injected fault")
    return await handler(request)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.store.open()
    yield
    state.closing.set()
    await state.tasks.cancel_all(timeout=SHUTDOWN_TIMEOUT)
    await state.responder.aclose()
    await state.store.close()


async def _end_streams(app: web.Application) -> None:
    # Runs before aiohttp waits for in-flight handlers: cancelling the generations lets every open
    # stream finish with a final `event: error` instead of holding shutdown up.
    state = app[STATE]
    state.closing.set()
    await state.tasks.cancel_all(timeout=SHUTDOWN_TIMEOUT)


def create_app(
    config: SandboxConfig, providers: list[OpenAIProvider] | None = None
) -> web.Application:
    """The sandbox as an aiohttp application (raises ValueError on an unusable responder config)."""
    app = web.Application(
        middlewares=[_envelope_errors, _count_and_inject],
        # Cancel a handler when its client disconnects, so a reply stops being generated at once
        # instead of at the next write.
        handler_args={"handler_cancellation": True},
    )
    app[STATE] = SandboxState(config, providers)
    for module in (routes_auth, routes_characters, routes_chats, streaming):
        app.add_routes(module.routes)
    if config.fault_injection:
        app.add_routes(controls.routes)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_end_streams)
    return app


class SandboxServer:
    """The sandbox on a real socket. `start()` returns the base URL (".../v1")."""

    def __init__(
        self, config: SandboxConfig, providers: list[OpenAIProvider] | None = None
    ) -> None:
        self.config = config
        self.app = create_app(config, providers)
        self.base_url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        # Accounts asked for before start(): the store only opens with the app.
        self._pending_accounts: list[tuple[str, str, str]] = []

    @property
    def state(self) -> SandboxState:
        return self.app[STATE]

    async def start(self) -> str:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for account in self._pending_accounts:
            self._apply_account(*account)
        self._pending_accounts.clear()
        bound_host, self.port = runner.addresses[0][:2]
        # With a name like "localhost" each address family may get its own OS-chosen port, so the
        # URL names the socket we report rather than the configured name.
        host = self.config.host if self.config.port else bound_host
        self.base_url = f"http://{url_host(host, bound_host)}:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def ensure_account(self, email: str, password: str, name: str = "MomoBridge") -> None:
        """Make sure `email` can sign in with `password` (before start() it is applied at start).

        An existing account gets this password: the embedded bridge owns it, and a password changed
        in the config must not lock the bridge out of its own persisted sandbox.
        """
        if self._runner is None:
            self._pending_accounts.append((email, password, name))
        else:
            self._apply_account(email, password, name)

    def _apply_account(self, email: str, password: str, name: str) -> None:
        store = self.state.store
        user = store.user_by_email(email)
        if user is None:
            store.create_user(email, password, name)
        elif not store.check_password(user, password):
            store.set_password(user, password)


async def run_sandbox(
    config: SandboxConfig, providers: list[OpenAIProvider] | None = None, *, stop: asyncio.Event
) -> None:
    """Serve until `stop` is set (the `momobridge sandbox` command)."""
    server = SandboxServer(config, providers)
    url = await server.start()
    log.info(
        "sandbox.listening",
        url=url,
        responder=config.responder,
        persistent=bool(config.database),
        fault_injection=config.fault_injection,
        characters={c.name: c.id for c in DEMO_CHARACTERS},
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("sandbox.stopped")
