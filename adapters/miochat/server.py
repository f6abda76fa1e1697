"""The hub: a websockets server speaking the mio-chat envelope, plus HTTP routes on the same port.

The pieces, one job each: `protocol` parses and builds frames (no I/O), `connection` reads and
writes one socket, `handlers` does what each frame asks through the core (`Sessions`, `Router`,
`Outbox`), `streams` renders reply events, `http_routes` answers plain HTTP. This module owns the
listening socket and the registry of live connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapters.miochat.connection import Connection
from adapters.miochat.http_routes import HttpRoutes
from adapters.miochat.http_shim import HubConnection
from bridge.config import Config
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
        self._clients: dict[str, set[Connection]] = {}
        self._server: Server | None = None
        self._all: set[Connection] = set()
        self._count_changed = asyncio.Condition()
        self._max_connections = config.server.max_connections
        self.http = HttpRoutes(self)

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
    def connection_count(self) -> int:
        return len(self._all)

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
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

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
        HubConnection.max_body = cfg.max_frame_bytes
        # Pings every third of the idle timeout; a peer that misses them for the rest is dropped.
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            create_connection=HubConnection,
            process_request=self.http.handle,
            max_size=cfg.max_frame_bytes,
            compression="deflate" if cfg.compression else None,
            ping_interval=cfg.idle_timeout / 3,
            ping_timeout=cfg.idle_timeout * 2 / 3,
            close_timeout=2,
            server_header="MomoBridge",
        )
        log.info("hub.listening", host=cfg.host, port=self.port, compression=cfg.compression)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=True)
        try:
            async with asyncio.timeout(5):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("hub.stop_timeout", open=len(self._all))
        self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        client = Connection(self, ws)
        await self._counted(client, True)
        log.info("hub.connect", peer=client.peer)
        try:
            await client.run()
        except ConnectionClosed:
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
                code=ws.close_code,
                reason=ws.close_reason,
            )
            structlog.contextvars.unbind_contextvars("user")
