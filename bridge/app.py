"""The composition root: the only place that wires adapters, storage and plugins together."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path
from typing import Any

import structlog

from adapters.miochat.server import HubServer
from adapters.momohub.client import MomoHubClient
from adapters.momohub.sandbox import SandboxServer
from adapters.momohub.target import CharacterTarget
from bridge.config import Config, MomoHubConfig, OpenAIProvider, SandboxConfig
from bridge.engine import Engine
from bridge.outbox import Outbox
from bridge.router import Router
from bridge.sessions import Sessions
from bridge.tasks import TaskSet
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


SANDBOX_EMAIL = "bridge@sandbox.local"


def embedded_sandbox_config(config: Config) -> SandboxConfig:
    sandbox = config.sandbox.model_copy()
    if not sandbox.database and config.storage.path != ":memory:":
        sandbox.database = str(Path(config.storage.path).with_name("sandbox.db"))
    return sandbox


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
        self.sandbox: SandboxServer | None = None
        self.momohub: MomoHubClient | None = None
        self._closers: list[Any] = []
        self._tasks = TaskSet("app")
        self.frameworks: Any = None

    async def _start_momohub(self, admin_code: str) -> None:
        assert self.storage is not None
        cfg: MomoHubConfig = self.config.momohub
        if not cfg.base_url:
            self.sandbox = SandboxServer(
                embedded_sandbox_config(self.config), self.config.openai.providers
            )
            base_url = await self.sandbox.start()
            # The embedded sandbox is private to this bridge: derive a stable password from
            # the admin code instead of asking the owner for one.
            password = hashlib.sha256(f"sandbox:{admin_code}".encode()).hexdigest()
            await self.sandbox.ensure_account(SANDBOX_EMAIL, password)
            cfg = cfg.model_copy(
                update={
                    "base_url": base_url,
                    "email": SANDBOX_EMAIL,
                    "password": password,
                    "access_token": "",
                    "refresh_token": "",
                    # The sandbox's demo characters are public: offer them, greet with Momo.
                    "list_public": True,
                    "default_character": cfg.default_character or "Momo",
                }
            )
            log.info("momohub.embedded_sandbox", url=base_url)
        self.momohub = MomoHubClient(cfg)
        await self.momohub.start()
        target = CharacterTarget(
            cfg,
            self.momohub,
            self.storage,
            max_chats_per_user=self.config.limits.conversations_per_user,
        )
        await target.start()
        self._closers.append(target.close)
        self.router.add_contact_target(target)
        self.router.add_model_target(target)

    async def _start_onebot(self) -> None:
        if not self.config.onebot.frameworks:
            return
        from adapters.onebot.framework_target import FrameworkTarget

        assert self.storage is not None and self.outbox is not None
        target = FrameworkTarget(self.config, self.storage, self.outbox)
        self._closers.append(target.close)
        await target.start()
        self.frameworks = target
        self.router.add_contact_target(target)

    async def _start_openai(self) -> None:
        if not self.config.openai.providers:
            return
        # Imported only when used: the OpenAI SDK is slow to import and most setups need none.
        from adapters.openai.target import OpenAITarget

        target = OpenAITarget(self.config.openai)
        self._closers.append(target.close)
        await target.start()
        self.router.add_model_target(target)

    async def start(self) -> None:
        cfg = self.config
        self.storage = await Storage.open(cfg.storage.path)
        try:
            admin_code = await asyncio.to_thread(_load_or_create_admin_code, cfg)
            self.outbox = Outbox(self.storage.outbox, cfg.limits.outbox_per_user)
            self.sessions = Sessions(self.storage, self.router, self.outbox, Engine())
            if cfg.momohub.enabled:
                await self._start_momohub(admin_code)
            await self._start_openai()
            await self._start_onebot()
            self.hub = HubServer(
                cfg, self.storage, self.router, self.outbox, self.sessions, admin_code=admin_code
            )
            await self.hub.start()
            # Replies a previous run left in flight: recovered or reported, in the background
            # (the upstream may be slow or down; serving does not wait for it).
            self._tasks.spawn(self.sessions.recover(), name="recover-inflight")
        except BaseException:
            await self.stop()
            raise

    @property
    def port(self) -> int:
        assert self.hub is not None
        return self.hub.port

    async def stop(self) -> None:
        await self._tasks.cancel_all()
        if self.hub is not None:
            await self.hub.stop()
        if self.sessions is not None:
            await self.sessions.close()
        for close in reversed(self._closers):
            await close()
        self._closers.clear()
        if self.momohub is not None:
            await self.momohub.close()
            self.momohub = None
        if self.sandbox is not None:
            await self.sandbox.stop()
            self.sandbox = None
        if self.storage is not None:
            await self.storage.close()
            self.storage = None
        log.info("app.stopped")
