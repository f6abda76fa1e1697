"""The `momobridge` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import structlog

from bridge.config import Config, ConfigError
from bridge.config_load import load_config
from bridge.logging import configure_logging

DEFAULT_CONFIG = "config.toml"
# Exit status for a config that cannot be used (argparse uses 2 for usage errors too).
EXIT_BAD_CONFIG = 2


def _load(path: str, *, must_exist: bool = False) -> tuple[Config, bool] | None:
    """The one way every command loads its config: the same validation everywhere. On a bad
    config prints one paragraph naming the key to stderr and returns None."""
    try:
        return load_config(path, must_exist=must_exist)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None


def raise_fd_limit() -> int:
    """Raise the open-file soft limit to the hard limit; every connection costs a descriptor and
    the common default of 1024 would cap the hub near a thousand clients. Returns the limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Fewer glibc malloc arenas for the server (glibc's M_ARENA_MAX; the MALLOC_ARENA_MAX
    variable does the same when set). Each thread that allocates (the database's, the
    executor's) would otherwise get an arena of its own that keeps its freed pages, and the
    bridge spends most of its time on one thread anyway. A no-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, arenas)  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        pass


async def _serve(config_path: str) -> int:
    log = structlog.get_logger("momobridge")
    loaded = _load(config_path)
    if loaded is None:
        return EXIT_BAD_CONFIG
    config, found = loaded
    # The hub and the core only: each upstream adapter is imported by App once the hub listens,
    # and only when the configuration uses it.
    from bridge.app import App
    from bridge.errors import StartupRefused
    from storage.lock import StorageRefused

    configure_logging(config.log.level, config.log.format)
    if found:
        log.info("config.loaded", path=config_path)
    else:
        log.info("config.missing_using_defaults", path=config_path)
    log.info("limits.open_files", soft=raise_fd_limit())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = App(config)
    try:
        await app.start()
    except (StorageRefused, StartupRefused) as e:
        # Another server on the file, a schema from a newer build, a cluster's Redis out of
        # reach: one line, no traceback.
        print(f"momobridge: {e}", file=sys.stderr)
        await app.stop()
        return 1
    except OSError as e:
        log.error("startup.failed", error=str(e))
        await app.stop()
        return 1
    log.info("momobridge.ready", url=f"ws://{config.server.host}:{app.port}/api/gateway")
    await stop.wait()
    log.info("momobridge.stopping")
    await app.stop()
    return 0


async def _sandbox(config_path: str, host: str | None, port: int | None) -> int:
    from bridge.app import run_sandbox_command

    loaded = _load(config_path)
    if loaded is None:
        return EXIT_BAD_CONFIG
    config, _ = loaded
    configure_logging(config.log.level, config.log.format)
    sandbox = config.sandbox.model_copy()
    sandbox.host = host or sandbox.host
    # A standalone sandbox wants a predictable port; 0 (any) only suits the embedded one.
    sandbox.port = port if port is not None else (sandbox.port or 8080)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_sandbox_command(sandbox, config.openai.providers, stop)
    except OSError as e:
        structlog.get_logger("momobridge").error("sandbox.failed", error=str(e))
        return 1
    return 0


async def _momoai_sandbox(args: argparse.Namespace) -> int:
    from adapters.momoai.sandbox import run_standalone

    configure_logging("info", "auto")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_standalone(
            args.host, args.port, {args.key: args.tier}, stop, token_delay=args.token_delay
        )
    except OSError as e:
        structlog.get_logger("momobridge").error("momoai_sandbox.failed", error=str(e))
        return 1
    return 0


def _check_config(path: str | None) -> int:
    """Exactly what `serve` runs. A named file must exist; without one, ./config.toml is
    checked and, like `serve`, its absence means built-in defaults (plus the environment)."""
    loaded = _load(path or DEFAULT_CONFIG, must_exist=path is not None)
    if loaded is None:
        return EXIT_BAD_CONFIG
    config, found = loaded
    where = path or DEFAULT_CONFIG
    if not found:
        where = f"{where} not found, built-in defaults"
    print(
        f"{where}: ok ({len(config.openai.providers)} OpenAI providers, "
        f"{len(config.onebot.frameworks)} framework links, "
        f"momohub: {config.momohub.base_url or 'embedded sandbox'})"
    )
    return 0


def _list_plugins(config_path: str) -> int:
    """What `serve` would load with this configuration: each plugin and its commands, each one
    left out and why. Exit 1 if a plugin failed, 2 if the configuration is bad."""
    loaded = _load(config_path)
    if loaded is None:
        return EXIT_BAD_CONFIG
    config, _ = loaded
    configure_logging("critical", "console")  # the listing below says it all
    from bridge.plugins import PluginHost

    host = PluginHost(config.plugins)
    host.load()
    prefix = host.prefixes[0]
    for p in host.loaded:
        commands = ", ".join(prefix + c for c in p.commands) or "(no commands)"
        print(f"loaded   {p.name:<16} {commands}")
    for name, why in sorted(host.skipped.items()):
        print(f"skipped  {name:<16} {why}")
    for name, why in sorted(host.failed.items()):
        print(f"FAILED   {name:<16} {why}")
    return 1 if host.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="momobridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the bridge")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default ./config.toml)")
    p = sub.add_parser("check-config", help="validate a config file exactly as serve does")
    p.add_argument(
        "path", nargs="?", default=None, help="TOML config (default ./config.toml, may be absent)"
    )
    p = sub.add_parser("sandbox", help="run the MomoHub-compatible sandbox server on its own")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config ([sandbox] section)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None, help="default 8080")
    p = sub.add_parser("momoai-sandbox", help="run a MOMO AI agents API sandbox (offline demos)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090, help="default 8090")
    p.add_argument("--key", default="sandbox-key", help="the API key it accepts")
    p.add_argument("--tier", default="pro", choices=("free", "basic", "pro", "enterprise"))
    p.add_argument("--token-delay", type=float, default=0.02, help="seconds between pieces")
    p = sub.add_parser("plugins", help="list the plugins the configuration loads, and why not")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default ./config.toml)")
    p = sub.add_parser("healthcheck", help="exit 0 if the configured server answers /healthz")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config ([server] host, port)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    p = sub.add_parser("backup", help="copy the database while the server runs")
    p.add_argument("path", help="where the copy goes (refused if it exists, unless --force)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config ([storage] path)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file at PATH")
    p = sub.add_parser("restore", help="put a backup in place of the database (server stopped)")
    p.add_argument("path", help="a file written by momobridge backup")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config ([storage] path)")
    p.add_argument("--force", action="store_true", help="replace an existing database (kept aside)")
    p = sub.add_parser("chat", help="a terminal client for the hub")
    p.add_argument("--url", default="ws://127.0.0.1:3080/api/gateway")
    p.add_argument("--id", default="10086", help="your mio-chat-id")
    p.add_argument("--token", default="", help="admin_code or user_code")
    args = parser.parse_args(argv)
    if args.command == "serve":
        limit_malloc_arenas()
        return asyncio.run(_serve(args.config))
    if args.command == "sandbox":
        return asyncio.run(_sandbox(args.config, args.host, args.port))
    if args.command == "momoai-sandbox":
        return asyncio.run(_momoai_sandbox(args))
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "plugins":
        return _list_plugins(args.config)
    if args.command == "healthcheck":
        from bridge.healthcheck import run as run_healthcheck

        return run_healthcheck(args.config, args.timeout)
    if args.command in ("backup", "restore"):
        from bridge.backup import backup_command, restore_command

        loaded = _load(args.config)
        if loaded is None:
            return EXIT_BAD_CONFIG
        run = backup_command if args.command == "backup" else restore_command
        return run(loaded[0], args.path, force=args.force)
    if args.command == "chat":
        from bridge.chat_client import run_chat

        try:
            return asyncio.run(run_chat(args.url, args.id, args.token))
        except KeyboardInterrupt:
            return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
