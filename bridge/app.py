"""The composition root: the only place that wires adapters, storage and plugins together."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import structlog

from adapters.miochat.server import HubServer
from bridge.config import Config, OpenAIProvider, SandboxConfig
from bridge.outbox import Outbox
from bridge.router import Router
from bridge.sessions import Sessions
from storage import Storage

log = structlog.get_logger(__name__)


def _admin_code_file(config: Config) -> Path:
    db = Path(config.storage.path)
    return db.with_name("admin_code")


def _load_or_create_admin_code(config: Config) -> str:
    """With no admin code configured, make one once and keep it beside the database.

    Nobody is admin by accident (an empty code would make every token match), and the owner can
    read the code from the file; it is never logged.
    """
    if config.auth.admin_code:
        return config.auth.admin_code
    if config.storage.path == ":memory:":
        return secrets.token_urlsafe(18)
    path = _admin_code_file(config)
    if path.is_file():
        code = path.read_text(encoding="utf-8").strip()
        if code:
            return code
    path.parent.mkdir(parents=True, exist_ok=True)
    code = secrets.token_urlsafe(18)
    path.write_text(code + "\n", encoding="utf-8")
    path.chmod(0o600)
    log.info("auth.admin_code_created", file=str(path))
    return code


async def run_sandbox_command(
    config: SandboxConfig, providers: list[OpenAIProvider], stop: asyncio.Event
) -> None:
    from adapters.momohub.sandbox import run_sandbox

    await run_sandbox(config, providers, stop=stop)


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.storage: Storage | None = None
        self.router = Router()
        self.outbox: Outbox | None = None
        self.sessions: Sessions | None = None
        self.hub: HubServer | None = None

    async def start(self) -> None:
        cfg = self.config
        self.storage = await Storage.open(cfg.storage.path)
        try:
            admin_code = await asyncio.to_thread(_load_or_create_admin_code, cfg)
            self.outbox = Outbox(self.storage.outbox, cfg.limits.outbox_per_user)
            self.sessions = Sessions(self.storage, self.router, self.outbox)
            self.hub = HubServer(
                cfg, self.storage, self.router, self.outbox, self.sessions, admin_code=admin_code
            )
            await self.hub.start()
        except BaseException:
            await self.stop()
            raise

    @property
    def port(self) -> int:
        assert self.hub is not None
        return self.hub.port

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        if self.sessions is not None:
            await self.sessions.close()
        if self.storage is not None:
            await self.storage.close()
            self.storage = None
        log.info("app.stopped")
