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
from bridge.health import AUTH_FAILED, ERROR, OK, UNREACHABLE, Health
from bridge.outbox import Outbox
from bridge.router import Router
from bridge.sessions import Sessions
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

# Start-up gives upstreams this long to get ready (so a login right after start sees MomoHub's
# characters and the providers' models) and no longer: an upstream that is slow, down or
# refusing our credentials never holds up the server. It serves at once, the upstream keeps
# being retried in the background, and /readyz tells what is missing.
STARTUP_GRACE = 0.5


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
        self.health = Health()
        # Upstream start-ups still running; start() waits on them for STARTUP_GRACE at most.
        self._warming: list[asyncio.Task[Any]] = []

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
        # Signs in in the background: wrong credentials or an unreachable MomoHub are logged,
        # retried with backoff and reported (auth_failed / unreachable), never raised here.
        self.momohub = MomoHubClient(cfg, on_state=self.health.reporter("momohub"))
        await self.momohub.start(wait=False)
        target = CharacterTarget(
            cfg,
            self.momohub,
            self.storage,
            max_chats_per_user=self.config.limits.conversations_per_user,
        )
        self._closers.append(target.close)
        self.router.add_contact_target(target)
        self.router.add_model_target(target)
        first_load = self._tasks.spawn(self._load_characters(target), name="momohub-first-load")
        if self.sandbox is not None:
            # The embedded sandbox runs in this process, it is no upstream to guard against:
            # let a login right after start see its characters.
            await asyncio.wait([first_load], timeout=cfg.connect_timeout)
        else:
            self._warming.append(first_load)

    async def _load_characters(self, target: CharacterTarget) -> None:
        """Until the first character list is in, or MomoHub is known to be down or refusing us.

        (``target.start`` itself waits up to connect_timeout; it goes on in the background.)
        """
        loading = self._tasks.spawn(target.start(), name="momohub-target-start")
        failed = self._tasks.spawn(
            self.health.wait_for("momohub", lambda s: s in (AUTH_FAILED, UNREACHABLE)),
            name="momohub-failed",
        )
        try:
            await asyncio.wait([loading, failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()

    async def _start_onebot(self) -> None:
        if not self.config.onebot.frameworks:
            return
        from adapters.onebot.framework_target import FrameworkTarget

        assert self.storage is not None and self.outbox is not None
        target = FrameworkTarget(self.config, self.storage, self.outbox)
        self._closers.append(target.close)
        target.health = self.health.set
        target.report_links()
        # Also read at each /readyz: a link that keeps failing to connect has a fresh reason.
        self.health.add_probe(target.report_links)
        await target.start()
        self.frameworks = target
        self.router.add_contact_target(target)

    async def _start_openai(self) -> None:
        if not self.config.openai.providers:
            return
        # Imported only when used: the OpenAI SDK is slow to import and most setups need none.
        from adapters.openai.target import OpenAITarget

        for provider in self.config.openai.providers:
            self.health.register(f"openai:{provider.name}")
        target = OpenAITarget(
            self.config.openai,
            report=lambda name, state, detail: self.health.set(f"openai:{name}", state, detail),
        )
        self._closers.append(target.close)
        self.router.add_model_target(target)
        # Loads the model lists (waiting up to 5 s itself): only STARTUP_GRACE of it holds start.
        self._warming.append(self._tasks.spawn(target.start(), name="openai-target-start"))

    async def _probe_database(self) -> None:
        storage = self.storage
        if storage is None:
            self.health.set("database", ERROR, "closed")
            return
        try:
            async with asyncio.timeout(2.0):
                async with storage.db.conn.execute("SELECT 1") as cur:
                    await cur.fetchone()
        except Exception as e:
            self.health.set("database", ERROR, f"{type(e).__name__}: {e}")
            return
        self.health.set("database", OK)

    async def start(self) -> None:
        cfg = self.config
        self.storage = await Storage.open(cfg.storage.path)
        self.health.set("database", OK)
        self.health.add_probe(self._probe_database)
        try:
            admin_code = await asyncio.to_thread(_load_or_create_admin_code, cfg)
            self.outbox = Outbox(self.storage.outbox, cfg.limits.outbox_per_user)
            self.sessions = Sessions(self.storage, self.router, self.outbox, Engine())
            if cfg.momohub.enabled:
                await self._start_momohub(admin_code)
            await self._start_openai()
            await self._start_onebot()
            if self._warming:
                await asyncio.wait(self._warming, timeout=STARTUP_GRACE)
                self._warming.clear()
            self.hub = HubServer(
                cfg, self.storage, self.router, self.outbox, self.sessions, admin_code=admin_code
            )
            self.hub.http.health = self.health
            # Replies a previous run left in flight: queued before the hub takes connections, so
            # each conversation settles them before its new turns (the work itself, which may
            # wait on the upstream, runs in the background).
            await self.sessions.schedule_recovery()
            await self.hub.start()
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
