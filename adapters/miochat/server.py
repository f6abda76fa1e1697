"""The hub: a WebSocket server speaking the mio-chat envelope, plus HTTP routes on the same port.

The pieces, one job each: `transport` is the listener's WebSocket surface, `protocol` parses and
builds frames (no I/O), `connection` reads and writes one socket, `handlers` does what each frame
asks through the core (`Sessions`, `Router`, `Outbox`), `streams` renders reply events,
`http_routes` answers plain HTTP. This module owns the listening socket and the registry of live
connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from adapters.miochat import transport
from adapters.miochat.connection import Connection
from adapters.miochat.http_routes import WS_PATHS, HttpRoutes
from bridge.config import Config
from bridge.errors import BridgeError, ErrorCode
from bridge.metrics import UNSCRAPED, Metrics
from bridge.models import UserRef
from bridge.outbox import Outbox
from bridge.router import Router
from bridge.sessions import Sessions
from storage import Storage

log = structlog.get_logger(__name__)


class HubServer:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        router: Router,
        outbox: Outbox,
        sessions: Sessions,
        *,
        admin_code: str,
    ) -> None:
        self.config = config
        self.storage = storage
        self.router = router
        self.outbox = outbox
        self.sessions = sessions
        self.admin_code = admin_code
        self.active_streams: dict[str, int] = {}
        # The app's (see App.start); counted into and never scraped when built alone.
        self.metrics: Metrics = UNSCRAPED
        self._clients: dict[str, set[Connection]] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._all: set[Connection] = set()
        self._count_changed = asyncio.Condition()
        self._counters: list[Callable[[], int]] = []
        self._max_connections = config.server.max_connections
        self.http = HttpRoutes(self)
        self._mounts: list[
            tuple[Callable[[str], bool], Callable[[web.Request], Awaitable[web.StreamResponse]]]
        ] = []

    # ----- clients ----------------------------------------------------------------------------

    def add_client(self, user_id: str, client: Connection) -> None:
        self._clients.setdefault(user_id, set()).add(client)

    def drop_client(self, user_id: str, client: Connection) -> None:
        s = self._clients.get(user_id)
        if s is not None:
            s.discard(client)
            if not s:
                del self._clients[user_id]

    def clients_of(self, user_id: str) -> list[Connection]:
        return list(self._clients.get(user_id, ()))

    @property
    def websocket_count(self) -> int:
        """Connections of the plain WebSocket hub (not the mounted edges')."""
        return len(self._all)

    @property
    def users_online(self) -> int:
        """Users with at least one logged-in WebSocket connection (the admin console shows it)."""
        return len(self._clients)

    @property
    def connection_count(self) -> int:
        """Every open connection on the port, the mounted edges' (Socket.IO) included: they
        share `server.max_connections`."""
        return len(self._all) + sum(count() for count in self._counters)

    def reserve_stream(self, user_id: str) -> Callable[[], None]:
        """One of the user's `limits.streams_per_user` replies at once (BUSY past them); the
        returned function gives it back and must be called exactly once."""
        limit = self.config.limits.streams_per_user
        if self.active_streams.get(user_id, 0) >= limit:
            raise BridgeError(ErrorCode.BUSY, f"at most {limit} concurrent completions per user")
        self.active_streams[user_id] = self.active_streams.get(user_id, 0) + 1

        def release() -> None:
            left = self.active_streams.get(user_id, 0) - 1
            if left > 0:
                self.active_streams[user_id] = left
            else:
                self.active_streams.pop(user_id, None)

        return release

    def count_also(self, count: Callable[[], int]) -> None:
        """Count a mounted edge's connections (``count`` says how many are open)."""
        self._counters.append(count)

    async def wait_connections(self, count: int) -> None:
        """Until exactly ``count`` connections are open (for tests, benchmarks, shutdown)."""
        async with self._count_changed:
            await self._count_changed.wait_for(lambda: len(self._all) == count)

    async def _counted(self, client: Connection, add: bool) -> None:
        async with self._count_changed:
            if add:
                self._all.add(client)
            else:
                self._all.discard(client)
            self._count_changed.notify_all()

    def login_payload(self, user: UserRef) -> dict[str, Any]:
        auth = self.config.auth
        return {
            "is_admin": user.is_admin,
            "admin_qq": auth.admin_qq,
            "bot_qq": auth.bot_qq,
            "default_model": self.config.openai.default_model,
            "models": [g.to_json() for g in self.router.model_groups()],
            "contacts": [c.to_json() for c in self.router.contacts(user)],
        }

    # ----- server -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._runner is not None
        return self._port

    @property
    def max_connections(self) -> int:
        return self._max_connections

    def _effective_max_connections(self) -> int:
        limit = self.config.server.max_connections
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except ImportError:
            return limit
        if soft != resource.RLIM_INFINITY and soft - 64 < limit:
            # Running out of descriptors makes accept() fail in a tight, log-flooding loop;
            # refusing politely below the limit keeps the server healthy.
            limit = max(1, soft - 64)
            log.warning("hub.max_connections_lowered", limit=limit, open_file_limit=soft)
        return limit

    async def start(self) -> None:
        cfg = self.config.server
        self._max_connections = self._effective_max_connections()
        app = web.Application(client_max_size=self.http.max_body())
        app.router.add_route("*", "/{tail:.*}", self._entry)
        app.on_response_prepare.append(_server_header)
        # A connection that has not completed a request (an upgrade included) within the login
        # timeout is closed: aiohttp's default would hold a silent or trickling socket for an
        # hour, outside the count of `max_connections`.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            keepalive_timeout=self.config.auth.login_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("hub.listening", host=cfg.host, port=self.port, compression=cfg.compression)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Stop accepting first, then say goodbye to every peer (1001), then let aiohttp end
        # whatever handler is left.
        for site in list(runner.sites):
            await site.stop()
        clients = list(self._all)
        if clients:
            done = await asyncio.wait(
                [asyncio.ensure_future(c.close(1001, "server shutting down")) for c in clients],
                timeout=5,
            )
            if done[1]:
                log.warning("hub.stop_timeout", open=len(done[1]))
        await runner.cleanup()

    def mount(
        self,
        serves: Callable[[str], bool],
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> None:
        """Serve the paths ``serves`` accepts with ``handler`` (another edge on this port: the
        QQ link's reverse WebSocket)."""
        self._mounts.append((serves, handler))

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        for serves, handler in self._mounts:
            if serves(request.path):
                return await handler(request)
        if request.path in WS_PATHS and transport.is_upgrade(request):
            if self.connection_count >= self.max_connections:
                return self.http.server_full()
            return await self._websocket(request)
        return await self.http.handle(request)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config.server
        sock = await transport.accept(
            request,
            max_size=cfg.max_frame_bytes,
            compression=cfg.compression,
            idle_timeout=cfg.idle_timeout,
        )
        client = Connection(self, sock)
        await self._counted(client, True)
        log.info("hub.connect", peer=client.peer)
        try:
            await client.run()
        except transport.SocketClosed:
            pass
        except Exception:
            log.exception("hub.connection_crashed", peer=client.peer)
        finally:
            await self._counted(client, False)
            await client.cleanup()
            log.info(
                "hub.close",
                peer=client.peer,
                user=client.user.id if client.user else None,
                code=sock.close_code,
            )
            structlog.contextvars.unbind_contextvars("user")
        return sock.ws


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "MomoBridge"
