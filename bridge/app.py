"""The composition root: the only place that wires adapters, storage and plugins together."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

# The hub and what it needs to answer a login: nothing else is imported before it listens.
from adapters.miochat import handlers as _hub_handlers  # noqa: F401 - loaded before the 1st frame
from adapters.miochat.server import HubServer
from bridge.admin_code import load_or_create_admin_code
from bridge.config import Config, OpenAIProvider, SandboxConfig
from bridge.engine import Engine
from bridge.health import AUTH_FAILED, ERROR, OK, UNREACHABLE, Health
from bridge.metrics import Metrics
from bridge.model_chats import ModelChats
from bridge.outbox import Outbox
from bridge.pending_target import PendingTarget
from bridge.router import Router
from bridge.scheduler import Scheduler, housekeeping
from bridge.sessions import Sessions
from bridge.storage_dir import check_storage_dir
from bridge.tasks import TaskSet
from storage import Storage

if TYPE_CHECKING:
    # Imported when the configuration uses them, after the hub listens (see App._start_upstreams).
    from adapters.miochat.socketio_server import SocketIOEdge
    from adapters.momoai.target import MomoAITarget
    from adapters.momohub.client import MomoHubClient
    from adapters.momohub.sandbox import SandboxServer
    from adapters.momohub.target import CharacterTarget
    from adapters.onebot.qq_edge import QQEdge
    from bridge.cluster.node import ClusterNode
    from bridge.plugins import PluginHost

log = structlog.get_logger(__name__)

# Start-up gives upstreams this long to get ready (so a login right after start sees MomoHub's
# characters and the providers' models) and no longer: an upstream that is slow, down or
# refusing our credentials never holds up the server. It serves at once, the upstream keeps
# being retried in the background, and /readyz tells what is missing.
STARTUP_GRACE = 0.5
# Shown in /readyz while the bot-framework adapter loads (each link reports itself after).
FRAMEWORKS_LOADING = "frameworks"
QQ_LOADING = "qq"
QQ_PURGE = "housekeeping-qq-links"


def _path_matcher(path: str) -> Callable[[str], bool]:
    """The QQ link's path, with or without a trailing slash."""
    path = path.rstrip("/")
    return lambda requested: requested.rstrip("/") == path


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


def _import_all(modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.storage: Storage | None = None
        self.router = Router()
        self.outbox: Outbox | None = None
        self.sessions: Sessions | None = None
        self.hub: HubServer | None = None
        self.socketio: SocketIOEdge | None = None
        self.sandbox: SandboxServer | None = None
        self.momohub: MomoHubClient | None = None
        self.momoai: MomoAITarget | None = None
        self.cluster: ClusterNode | None = None
        self._closers: list[Any] = []
        self._tasks = TaskSet("app")
        self.frameworks: Any = None
        self.plugins: PluginHost | None = None
        self.qq: QQEdge | None = None
        self.health = Health()
        # This bridge's own counts for /metrics (never shared with another App in the process).
        self.metrics = Metrics()
        # The one scheduler: housekeeping and the plugins' jobs; runs from start() to stop().
        self.scheduler = Scheduler()
        # Upstream start-ups still running; start() waits on them for STARTUP_GRACE at most.
        self._warming: list[asyncio.Task[Any]] = []
        # The embedded sandbox's first character load: start() waits for it (connect_timeout).
        self._first_load: asyncio.Task[Any] | None = None
        # Set by the console when it is on: ends its live streams (a stop would wait on them).
        self.console_stop: Callable[[], None] = lambda: None

    # ----- upstreams ------------------------------------------------------------------------------

    def _hold_places(self) -> dict[str, PendingTarget]:
        """Each configured upstream's place in the router and in /readyz, taken before the hub
        listens; its adapter is loaded and started after (see `_start_upstreams`)."""
        cfg = self.config
        places: dict[str, PendingTarget] = {}
        if cfg.momoai.enabled:
            # First: it owns only `momoai:` names, which a bare-model provider would claim.
            self.health.register("momoai")
            places["momoai"] = PendingTarget(self.router)
            self.router.add_model_target(places["momoai"])
            # Also without as_contacts: the agents' completions keep their persona there.
            places["momoai_contacts"] = PendingTarget(self.router)
            self.router.add_contact_target(places["momoai_contacts"])
        if cfg.momohub.enabled:
            self.health.register("momohub")
            places["momohub"] = PendingTarget(self.router)
            self.router.add_contact_target(places["momohub"])
            self.router.add_model_target(places["momohub"])
        if cfg.openai.providers:
            for provider in cfg.openai.providers:
                self.health.register(f"openai:{provider.name}")
            places["openai"] = PendingTarget(self.router)
            self.router.add_model_target(places["openai"])
            assert self.storage is not None
            self.router.add_contact_target(
                ModelChats(
                    self.router,
                    self.storage,
                    history_turns=cfg.openai.history_turns,
                    history_chars=cfg.openai.history_chars,
                    turns_by_owner=(
                        {"qq:": cfg.onebot.qq.history_turns} if cfg.onebot.qq.history_turns else {}
                    ),
                )
            )
        if cfg.onebot.frameworks:
            # Each link reports itself as `framework:<url>` once the adapter is in.
            self.health.register(FRAMEWORKS_LOADING, "loading the bot-framework adapter")
            places["onebot"] = PendingTarget(self.router)
            self.router.add_contact_target(places["onebot"])
        return places

    async def _start_upstreams(self, places: dict[str, PendingTarget], admin_code: str) -> None:
        """Load each upstream's adapter in a worker thread (the loop goes on serving the hub
        meanwhile), then start it and install it in its place."""
        cfg = self.config
        try:
            if "momoai" in places:
                await asyncio.to_thread(_import_all, ["adapters.momoai.contacts"])
                self._start_momoai(places)
            if "momohub" in places:
                modules = ["adapters.momohub.client", "adapters.momohub.target"]
                if not cfg.momohub.base_url:
                    modules.append("adapters.momohub.sandbox")
                await asyncio.to_thread(_import_all, modules)
                await self._start_momohub(admin_code, places["momohub"])
            if "openai" in places:
                # The OpenAI SDK is slow to import and most setups need none.
                await asyncio.to_thread(_import_all, ["adapters.openai.target"])
                await self._start_openai(places["openai"])
            if "onebot" in places:
                await asyncio.to_thread(_import_all, ["adapters.onebot.framework_target"])
                await self._start_onebot(places["onebot"])
        finally:
            for place in places.values():
                place.settle()
            self.health.remove(FRAMEWORKS_LOADING)
        if self._first_load is not None:
            # The embedded sandbox runs in this process, it is no upstream to guard against:
            # let a login right after start see its characters.
            await asyncio.wait([self._first_load], timeout=cfg.momohub.connect_timeout)
        if self._warming:
            await asyncio.wait(self._warming, timeout=STARTUP_GRACE)
            self._warming.clear()

    async def _start_momohub(self, admin_code: str, place: PendingTarget) -> None:
        from adapters.momohub.client import MomoHubClient
        from adapters.momohub.target import CharacterTarget

        assert self.storage is not None
        cfg = self.config.momohub
        if not cfg.base_url:
            from adapters.momohub.sandbox import SandboxServer

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
        shared_tokens = None
        if self.cluster is not None and self.sandbox is None:
            # The nodes share one token pair, kept in Redis: MomoHub rotates refresh tokens,
            # so nodes renewing on their own would log each other out. (An embedded sandbox is
            # each node's own MomoHub, with its own account.)
            from adapters.momohub.shared_tokens import SharedTokens, account_of

            account = account_of(cfg)
            if account is not None:  # none: anonymous requests, nothing to share
                shared_tokens = SharedTokens(
                    self.cluster.redis,
                    self.cluster.node_id,
                    base_url=cfg.base_url,
                    account=account,
                    prefix=self.cluster.config.prefix,
                )
        # Signs in in the background: wrong credentials or an unreachable MomoHub are logged,
        # retried with backoff and reported (auth_failed / unreachable), never raised here.
        self.momohub = MomoHubClient(
            cfg,
            on_state=self.health.reporter("momohub"),
            scheduler=self.scheduler,
            shared_tokens=shared_tokens,
        )
        await self.momohub.start(wait=False)
        target = CharacterTarget(
            cfg,
            self.momohub,
            self.storage,
            max_chats_per_user=self.config.limits.conversations_per_user,
        )
        self._closers.append(target.close)
        place.install(target)
        first_load = self._tasks.spawn(self._load_characters(target), name="momohub-first-load")
        if self.sandbox is not None:
            self._first_load = first_load
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

    async def _start_onebot(self, place: PendingTarget) -> None:
        from adapters.onebot.framework_target import FrameworkTarget

        assert self.storage is not None and self.outbox is not None
        # With a cluster (joined before the upstreams start) each link runs on one node at a time.
        target = FrameworkTarget(self.config, self.storage, self.outbox, cluster=self.cluster)
        self._closers.append(target.close)
        target.health = self.health.set
        target.report_links()
        self.health.remove(FRAMEWORKS_LOADING)
        # Also read at each /readyz: a link that keeps failing to connect has a fresh reason.
        self.health.add_probe(target.report_links)
        await target.start()
        self.frameworks = target
        place.install(target)

    async def _start_openai(self, place: PendingTarget) -> None:
        from adapters.openai.target import OpenAITarget

        target = OpenAITarget(
            self.config.openai,
            report=lambda name, state, detail: self.health.set(f"openai:{name}", state, detail),
        )
        self._closers.append(target.close)
        place.install(target)
        # Loads the model lists (waiting up to 5 s itself): only STARTUP_GRACE of it holds start.
        self._warming.append(self._tasks.spawn(target.start(), name="openai-target-start"))

    def _start_momoai(self, places: dict[str, PendingTarget]) -> None:
        from adapters.momoai.contacts import AgentChats
        from adapters.momoai.target import MomoAITarget

        assert self.storage is not None
        cfg = self.config
        target = MomoAITarget(
            cfg.momoai, report=lambda state, detail: self.health.set("momoai", state, detail)
        )
        self._closers.append(target.close)
        self.momoai = target
        places["momoai"].install(target)
        turns = cfg.onebot.qq.history_turns
        places["momoai_contacts"].install(
            AgentChats(
                self.router,
                self.storage,
                cfg.momoai,
                target,
                turns_by_owner={"qq:": turns} if turns else {},
            )
        )
        # The first agent list (up to 5 s): only STARTUP_GRACE of it holds start.
        self._warming.append(self._tasks.spawn(target.start(), name="momoai-target-start"))

    def _start_qq(self) -> None:
        from adapters.onebot.qq_edge import QQEdge

        assert self.storage is not None and self.sessions is not None and self.outbox is not None
        cfg = self.config
        edge = QQEdge(
            cfg.onebot.qq,
            self.sessions,
            self.router,
            self.storage,
            self.outbox,
            self.health,
        )
        self.router.add_binder(edge)
        if self.cluster is not None:
            edge.join_cluster(self.cluster)
        self.health.add_probe(edge.link.refresh_health)
        self.scheduler.every(QQ_PURGE, edge.purge_links, 86400.0)
        self.qq = edge
        self.health.remove(QQ_LOADING)

    async def _qq_entry(self, request: web.Request) -> web.StreamResponse:
        if self.qq is None:
            return web.Response(status=503, text="starting; connect again in a moment")
        return await self.qq.link.handle(request)

    async def _probe_database(self) -> None:
        storage = self.storage
        if storage is None:
            self.health.set("database", ERROR, "closed")
            return
        try:
            async with asyncio.timeout(2.0):
                await storage.db.ping()
                claim = getattr(storage.db, "claim_problem", None)
                problem = await claim() if claim is not None else None
        except Exception as e:
            self.health.set("database", ERROR, f"{type(e).__name__}: {e}")
            return
        if problem is not None:
            self.health.set("database", ERROR, problem)
            return
        self.health.set("database", OK)

    async def start(self) -> None:
        """The hub listens as soon as the database is open; the upstreams (MomoHub, OpenAI
        providers, bot frameworks) are loaded and started after, while it serves. Returns once
        they had their chance to get ready (see STARTUP_GRACE)."""
        cfg = self.config
        # A directory the bridge may not write (a bind mount owned by another uid) is reported
        # with its fix here, before SQLite fails on it with a bare "unable to open".
        uses_sandbox = cfg.momohub.enabled and not cfg.momohub.base_url
        await asyncio.to_thread(check_storage_dir, cfg.storage.path, sandbox=uses_sandbox)
        # Exclusive: a second server on the same database is refused, and `momobridge restore`
        # sees this one running. Only a cluster's nodes share one (PostgreSQL).
        self.storage = await Storage.open(cfg.storage.database, exclusive=not cfg.cluster.redis_url)
        self.health.set("database", OK)
        self.health.add_probe(self._probe_database)
        try:
            admin_code = await asyncio.to_thread(load_or_create_admin_code, cfg)
            self.outbox = Outbox(self.storage.outbox, cfg.limits.outbox_per_user)
            self.sessions = Sessions(self.storage, self.router, self.outbox, Engine())
            places = self._hold_places()
            self.hub = HubServer(
                cfg, self.storage, self.router, self.outbox, self.sessions, admin_code=admin_code
            )
            self.hub.http.health = self.health
            self.hub.metrics = self.outbox.metrics = self.sessions.metrics = self.metrics
            self.metrics.attach(self.hub)
            self._mount_pages()
            if cfg.miochat.socketio:
                from adapters.miochat import socketio_server

                self.socketio = socketio_server.SocketIOEdge(self.hub)
                await self.socketio.start()
                self.hub.mount(socketio_server.serves, self.socketio.handle)
            if cfg.onebot.qq.enabled:
                self.health.register(QQ_LOADING, "loading the QQ link")
                self.hub.mount(_path_matcher(cfg.onebot.qq.path), self._qq_entry)
            if cfg.cluster.redis_url:
                # Before the hub takes connections: a login must find this node already
                # hearing the other nodes' pushes, and a turn its place in the cluster's order.
                await self._join_cluster()
            else:
                # Replies a previous run left in flight: queued before the hub takes
                # connections, so each conversation settles them before its new turns (the
                # work itself, which may wait on the upstream, runs in the background).
                await self.sessions.schedule_recovery()
            await self.hub.start()
            if self.cluster is not None:
                await self.cluster.announce(self.node_info(self.port))
            housekeeping(self.scheduler, lambda: self.storage, cfg.share.ttl_days * 86400.0)
            self.scheduler.start()
            await self._load_plugins()
            if cfg.onebot.qq.enabled:
                # Accounts linked before are the bridge's identities even while they are away.
                self.storage.users.reserve(*await self.storage.qq.accounts())
                self._start_qq()
            await self._start_upstreams(places, admin_code)
            assert self.plugins is not None
            # After the upstreams had their chance: a plugin's start may send a turn upstream.
            await self.plugins.start()
        except BaseException:
            await self.stop()
            raise

    def node_info(self, port: int = 0) -> dict[str, Any]:
        """This node as the others see it: its port once the hub listens (0 before)."""
        return {"host": self.config.server.host, "port": port}

    async def _join_cluster(self) -> None:
        from bridge.app_cluster import join_cluster

        await join_cluster(self)  # sets self.cluster as soon as there is one to close

    async def _load_plugins(self) -> None:
        """Commands and filters, imported off the loop; until they are in, messages to the
        upstreams are refused as "starting" (their places are still pending), so no command
        line can slip through to an upstream."""
        from bridge.plugins import PluginHost

        assert self.storage is not None and self.sessions is not None
        host = PluginHost(self.config.plugins, services=self)
        host.kv = self.storage.plugin_kv
        await asyncio.to_thread(host.load)
        self.plugins = host
        self.sessions.plugins = host

    def _mount_pages(self) -> None:
        """The browser side on the hub's port: /metrics, /chat, the console."""
        from adapters.console import console_pages
        from adapters.webchat import chat_pages
        from bridge.metrics import metrics_pages

        assert self.hub is not None
        for make in (metrics_pages, chat_pages, console_pages):
            pages = make(self)
            if pages is not None:
                self.hub.http.add_pages(pages)

    @property
    def port(self) -> int:
        assert self.hub is not None
        return self.hub.port

    async def stop(self) -> None:
        self.console_stop()
        # First: nothing scheduled may start a turn while the rest shuts down.
        await self.scheduler.shutdown()
        if self.plugins is not None:
            await self.plugins.close()  # what plugins left running (a broadcast going out)
        await self._tasks.cancel_all()
        if self.qq is not None:
            # The QQ accounts' connections first: the hub's stop waits for every handler.
            await self.qq.link.close()
        if self.socketio is not None:
            await self.socketio.stop()
            self.socketio = None
        if self.hub is not None:
            await self.hub.stop()
        if self.qq is not None:
            # Before the conversations close: the QQ sessions wait on their replies.
            await self.qq.close()
            self.qq = None
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
        if self.cluster is not None:
            # After everything that might still publish; before the database.
            await self.cluster.close()
            self.cluster = None
        if self.storage is not None:
            await self.storage.close()
            self.storage = None
        log.info("app.stopped")
