"""Plugins: modules that add chat commands, input and reply filters to every conversation.

A plugin is a module exposing ``setup(ctx: PluginContext)``: the built-ins in the `plugins`
package (each on unless listed in ``[plugins] disabled``, or declaring
``ENABLED_BY_DEFAULT = False``), and any dotted module path listed in ``[plugins] enabled``.
``setup`` only registers things; it does no I/O. A plugin that fails to import or to set up is
logged and skipped, with nothing it registered left behind: the bridge still starts.
`momobridge plugins` lists what loaded and why the rest did not.

Commands are edge-neutral: `Sessions` asks `PluginHost.intercept` about every message to a
character or model; a command line is answered by its handler, through ``reply``, as ordinary
messages in that conversation, and never reaches the upstream. See plugins/README.md for the
contract as plugin authors see it.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from bridge.commands import (
    Arg,
    Command,
    CommandRegistry,
    Handler,
    Invocation,
    UsageError,
    bind,
    named_sub,
    parse_line,
)
from bridge.config import PluginsConfig
from bridge.config_load import validation_problems
from bridge.models import ConversationKey, UserRef
from bridge.stream_filters import (
    Consume,
    Silent,
    StreamFilter,
    StreamFilterFactory,
    StreamGuard,
)
from bridge.tasks import TaskSet

if TYPE_CHECKING:
    from storage.plugin_kv import PluginKVRepo

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# A command's handler gets this long; then it is cancelled and the caller told so.
COMMAND_TIMEOUT = 30.0
# Built-in plugins live in this package.
BUILTIN_PACKAGE = "plugins"


@dataclass(slots=True)
class FilterInput:
    key: ConversationKey
    caller: UserRef
    text: str
    reply: Callable[[str], Awaitable[None]]


# An input filter returns the (possibly rewritten) text, or Consume.
InputFilter = Callable[[FilterInput], Awaitable["str | Consume"]]
# A reply filter gets a finished reply's text and returns what is delivered.
ReplyFilter = Callable[[ConversationKey, str], Awaitable[str]]


# Runs once the bridge serves (its upstreams had their chance to start): I/O allowed.
StartHook = Callable[[], Awaitable[None]]


class PluginStore:
    """A plugin's persistent key-value store (JSON values), bounded per plugin."""

    def __init__(self, plugin: str, repo: Callable[[], PluginKVRepo | None]) -> None:
        self._plugin = plugin
        self._repo = repo

    def _kv(self) -> PluginKVRepo:
        repo = self._repo()
        if repo is None:
            raise RuntimeError("the plugin store is not open (setup must not do I/O)")
        return repo

    async def get(self, key: str, default: Any = None) -> Any:
        return await self._kv().get(self._plugin, key, default)

    async def set(self, key: str, value: Any) -> None:
        await self._kv().set(self._plugin, key, value)

    async def delete(self, key: str) -> bool:
        return await self._kv().delete(self._plugin, key)

    async def keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        return await self._kv().keys(self._plugin, prefix, limit)


@dataclass(slots=True)
class _Registered:
    commands: list[Command] = field(default_factory=list)
    input_filters: list[InputFilter] = field(default_factory=list)
    reply_filters: list[ReplyFilter] = field(default_factory=list)
    stream_filters: list[StreamFilterFactory] = field(default_factory=list)
    start_hooks: list[StartHook] = field(default_factory=list)
    api: Any = None


class PluginContext:
    """What ``setup(ctx)`` gets: registration, the plugin's settings and store, the bridge."""

    def __init__(self, host: PluginHost, name: str) -> None:
        self._host = host
        self.name = name
        self.log = structlog.get_logger(f"plugins.{name}")
        self.store = PluginStore(name, lambda: host.kv)
        self._done = _Registered()

    @property
    def bridge(self) -> Any:
        """The running bridge's services (status, storage, sessions...); None outside `serve`."""
        return self._host.services

    @property
    def prefix(self) -> str:
        return self._host.prefixes[0]

    @property
    def commands(self) -> CommandRegistry:
        """Every plugin's commands (what `/help` lists)."""
        return self._host.commands

    def settings(self, model: type[M]) -> M:
        """This plugin's ``[plugins.<name>]`` table, validated by ``model`` (defaults if absent).

        Raises ValueError naming the bad key, which fails the plugin's setup."""
        raw = self._host.config.tables().get(self.name, {})
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            where = f"plugins.{self.name}"
            raise ValueError("; ".join(validation_problems(e, where))) from None

    def command(
        self,
        name: str,
        *,
        help: str = "",
        aliases: tuple[str, ...] = (),
        args: tuple[Arg, ...] = (),
        usage: str = "",
        admin_only: bool = False,
    ) -> Callable[[Handler | None], Command]:
        """Register ``/name``; the decorated coroutine gets an `Invocation`. Returns the
        Command, whose ``.sub(...)`` registers sub-commands."""

        def register(fn: Handler | None) -> Command:
            cmd = Command(
                name,
                fn,
                help=help,
                aliases=aliases,
                args=args,
                usage_text=usage,
                admin_only=admin_only,
                plugin=self.name,
            )
            self._done.commands.append(cmd)
            return cmd

        return register

    def group(
        self,
        name: str,
        *,
        help: str = "",
        aliases: tuple[str, ...] = (),
        admin_only: bool = False,
    ) -> Command:
        """A command made only of sub-commands (``/char list``, ``/char use <name>``)."""
        return self.command(name, help=help, aliases=aliases, admin_only=admin_only)(None)

    def input_filter(self, fn: InputFilter) -> InputFilter:
        self._done.input_filters.append(fn)
        return fn

    def reply_filter(self, fn: ReplyFilter) -> ReplyFilter:
        self._done.reply_filters.append(fn)
        return fn

    def stream_filter(self, factory: StreamFilterFactory) -> StreamFilterFactory:
        """``factory(key)`` makes a `StreamFilter` for each reply: what the user sees while the
        reply streams (the reply filters then decide what is stored and pushed)."""
        self._done.stream_filters.append(factory)
        return factory

    def on_start(self, fn: StartHook) -> StartHook:
        """``async fn()`` runs once the bridge serves (setup must not do I/O; this may: load
        what the plugin stored, arm its jobs on ``ctx.bridge.scheduler``). A hook that fails or
        takes longer than COMMAND_TIMEOUT is logged; the bridge still starts."""
        self._done.start_hooks.append(fn)
        return fn

    def provide(self, api: object) -> None:
        """Offer ``api`` to the rest of the bridge (the console) as `PluginHost.api(name)`: an
        object of the plugin's own choosing, so nothing outside reaches into its state."""
        self._done.api = api

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str = "") -> asyncio.Task[T]:
        """Run ``coro`` in the background, owned by the bridge: for work that outlasts
        COMMAND_TIMEOUT (a command answers at once and reports later through ``inv.reply``).
        A failure is logged; shutdown cancels what is still running, so the coroutine must
        bound its own waits and keep what it has done consistent when cancelled."""
        return self._host.spawn(coro, name=f"plugin-{self.name}:{name or 'task'}")


@dataclass(frozen=True, slots=True)
class Loaded:
    name: str
    module: str
    commands: tuple[str, ...]


Say = Callable[[ConversationKey, str], Awaitable[None]]


class PluginHost:
    def __init__(self, config: PluginsConfig, services: Any = None) -> None:
        self.config = config
        self.services = services
        self.prefixes: tuple[str, ...] = tuple(config.prefixes) or ("/",)
        self.commands = CommandRegistry()
        self.input_filters: list[tuple[str, InputFilter]] = []
        self.reply_filters: list[tuple[str, ReplyFilter]] = []
        self.stream_filters: list[tuple[str, StreamFilterFactory]] = []
        self.start_hooks: list[tuple[str, StartHook]] = []
        self.loaded: list[Loaded] = []
        # What loaded plugins offered with `ctx.provide`, by plugin name.
        self._apis: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.kv: PluginKVRepo | None = None
        self.started = time.time()
        # The plugins' background work (`PluginContext.spawn`), cancelled by `close`.
        self._tasks = TaskSet("plugins")
        self._closed = False

    # ----- loading ----------------------------------------------------------------------------

    def load(self) -> None:
        disabled = set(self.config.disabled)
        names: list[tuple[str, str]] = []
        for name in _builtin_names():
            if name in disabled:
                self.skipped[name] = "disabled in [plugins] disabled"
                continue
            names.append((name, f"{BUILTIN_PACKAGE}.{name}"))
        known = {n for n, _ in names}
        for path in self.config.enabled:
            name = path.rsplit(".", 1)[-1]
            if name in disabled:
                self.skipped[name] = "disabled in [plugins] disabled"
                continue
            if name in known:
                continue
            module = path if "." in path else f"{BUILTIN_PACKAGE}.{path}"
            names.append((name, module))
            known.add(name)
        explicit = {p.rsplit(".", 1)[-1] for p in self.config.enabled}
        for name, module in names:
            self._load_one(name, module, explicit=name in explicit)

    def _load_one(self, name: str, module_path: str, *, explicit: bool) -> None:
        try:
            module = importlib.import_module(module_path)
        except Exception as e:
            self._fail(name, f"import failed: {type(e).__name__}: {e}")
            return
        setup = getattr(module, "setup", None)
        if not callable(setup):
            self._fail(name, f"{module_path} has no setup(ctx) function")
            return
        if not explicit and getattr(module, "ENABLED_BY_DEFAULT", True) is False:
            self.skipped[name] = 'off by default (add it to [plugins] enabled = ["..."])'
            return
        ctx = PluginContext(self, name)
        try:
            result = setup(ctx)
            if asyncio.iscoroutine(result):
                result.close()
                raise TypeError("setup must be a plain function (it registers; no I/O)")
            for cmd in ctx._done.commands:
                self.commands.add(cmd)
        except Exception as e:
            self.commands.remove_plugin(name)
            self._fail(name, f"setup failed: {type(e).__name__}: {e}")
            return
        self.input_filters += [(name, f) for f in ctx._done.input_filters]
        self.reply_filters += [(name, f) for f in ctx._done.reply_filters]
        self.stream_filters += [(name, f) for f in ctx._done.stream_filters]
        self.start_hooks += [(name, f) for f in ctx._done.start_hooks]
        if ctx._done.api is not None:
            self._apis[name] = ctx._done.api
        self.loaded.append(Loaded(name, module_path, tuple(c.name for c in ctx._done.commands)))
        log.info("plugin.loaded", plugin=name, commands=[c.name for c in ctx._done.commands])

    def api(self, name: str) -> Any:
        """What plugin ``name`` offered with `ctx.provide`; None if it is not loaded or offered
        nothing."""
        return self._apis.get(name)

    def _fail(self, name: str, reason: str) -> None:
        self.failed[name] = reason
        log.error("plugin.failed", plugin=name, reason=reason)

    async def start(self) -> None:
        """Run the plugins' start hooks in load order; one failing does not stop the rest."""
        for name, fn in self.start_hooks:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await fn()
            except Exception:
                log.exception("plugin.start_failed", plugin=name)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()  # never awaited otherwise, and Python would warn about it
            raise RuntimeError("the plugin host is closed")
        return self._tasks.spawn(coro, name=name)

    @property
    def background(self) -> int:
        """Spawned tasks still running."""
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel the plugins' background tasks and wait up to ``timeout`` for them to unwind;
        nothing can be spawned after. For the app's shutdown, before the storage closes."""
        self._closed = True
        await self._tasks.cancel_all(timeout)

    # ----- messages ---------------------------------------------------------------------------

    def is_command(self, text: str) -> bool:
        return parse_line(text, self.prefixes) is not None

    async def filter_input(
        self, key: ConversationKey, caller: UserRef, text: str, say: Say
    ) -> str | Consume:
        """Run the input filters in load order; a crashing filter is logged and skipped."""

        async def reply(answer: str) -> None:
            await say(key, answer)

        for name, fn in self.input_filters:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    out = await fn(FilterInput(key, caller, text, reply))
            except Exception:
                log.exception("plugin.filter_crashed", plugin=name)
                continue
            if isinstance(out, Consume):
                log.info("plugin.input_consumed", plugin=name, reason=out.reason)
                return out
            if isinstance(out, str):
                text = out
        return text

    def stream_guard(self, key: ConversationKey) -> StreamGuard | None:
        """The live-text filters for one reply of ``key``; None when there are none."""
        if not self.stream_filters:
            return None
        made: list[tuple[str, StreamFilter]] = []
        for name, factory in self.stream_filters:
            try:
                made.append((name, factory(key)))
            except Exception:
                log.exception("plugin.stream_filter_crashed", plugin=name)
                # Without it the reply's live text could show what it hides: show none.
                made.append((name, Silent()))
        return StreamGuard(made)

    async def filter_reply(self, key: ConversationKey, text: str) -> str:
        for name, fn in self.reply_filters:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    out = await fn(key, text)
            except Exception:
                log.exception("plugin.filter_crashed", plugin=name)
                continue
            if isinstance(out, str):
                text = out
        return text

    async def run_command(
        self, key: ConversationKey, caller: UserRef, text: str, say: Say, message_id: int = 0
    ) -> None:
        """Answer a command line (see `parse_line`): its handler's replies, its usage when the
        arguments do not fit, or a short hint; never raises for the user's mistakes."""
        parsed = parse_line(text, self.prefixes)
        assert parsed is not None
        prefix, word, rest = parsed

        async def reply(answer: str) -> None:
            await say(key, answer)

        command = self.commands.find(word)
        if command is None:
            await reply(
                f"Unknown command {prefix}{word[:MAX_ECHO]}. {prefix}help lists the commands."
            )
            return
        if command.admin_only and not caller.is_admin:
            # Before the arguments: a non-admin learns nothing of an admin command's usage.
            await reply(f"Only an admin may use {prefix}{command.name}.")
            return
        try:
            target, args = bind(command, rest)
        except UsageError as e:
            await reply(f"{e}. Usage: {named_sub(command, rest).usage(prefix)}")
            return
        if target.admin_only and not caller.is_admin:
            await reply(f"Only an admin may use {prefix}{target.path}.")
            return
        assert target.handler is not None
        inv = Invocation(key, caller, args, text, target, prefix, reply, message_id)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await target.handler(inv)
        except TimeoutError:
            await reply(f"{prefix}{target.path} took too long and was stopped.")
        except UsageError as e:
            await reply(f"{e}. Usage: {target.usage(prefix)}")
        except Exception as e:
            log.exception("plugin.command_crashed", plugin=target.plugin, command=target.path)
            await reply(f"{prefix}{target.path} failed: {type(e).__name__}.")


MAX_ECHO = 32


def _builtin_names() -> list[str]:
    try:
        package = importlib.import_module(BUILTIN_PACKAGE)
    except ImportError:
        return []
    return sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and not m.ispkg
    )
