"""Loading plugins and running their commands and filters, without a server: the host is given
plain data and a `say` that records what would be delivered."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bridge.plugins as plugins_mod
from bridge.config import ConfigError, PluginsConfig
from bridge.config_load import load_config
from bridge.models import ConversationKey, UserRef
from bridge.plugins import Consume, PluginHost

ROOT = Path(__file__).resolve().parents[2]
KEY = ConversationKey("u1", "momo", "default")
USER = UserRef("u1")
ADMIN = UserRef("root", is_admin=True)
_pkg = itertools.count()


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh importable package; write(name, source) adds a plugin module to it."""
    name = f"test_plugins_{next(_pkg)}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, source: str) -> str:
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{name}.{module}"

    yield write
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, key: ConversationKey, text: str) -> None:
        assert key == KEY
        self.lines.append(text)


def host_with(**config: object) -> PluginHost:
    host = PluginHost(PluginsConfig.model_validate(config))
    host.load()
    return host


def test_failures_are_reported_and_leave_nothing_behind(pkg) -> None:
    good = pkg(
        "good",
        """
        from bridge.commands import Arg
        def setup(ctx):
            @ctx.command("ping", aliases=("p",))
            async def ping(inv):
                await inv.reply("pong")
    """,
    )
    clash = pkg(
        "clash",
        """
        def setup(ctx):
            @ctx.command("fine")
            async def fine(inv): ...
            @ctx.command("ping")
            async def ping(inv): ...
    """,
    )
    asynchronous = pkg("asynchronous", "async def setup(ctx):\n    pass\n")
    strict = pkg(
        "strict",
        """
        from pydantic import BaseModel, ConfigDict
        class S(BaseModel):
            model_config = ConfigDict(extra="forbid")
            limit: int = 3
        def setup(ctx):
            ctx.settings(S)
    """,
    )
    host = host_with(
        enabled=[good, clash, asynchronous, strict],
        strict={"limit": "many", "colour": "red"},
    )
    loaded = [p.name for p in host.loaded]
    assert "help" in loaded and loaded[-1] == "good"  # built-ins first, then `enabled`
    assert not {"clash", "asynchronous", "strict"} & set(loaded)
    assert "already registered by plugin good" in host.failed["clash"]
    assert host.commands.find("fine") is None  # the failed plugin's first command is gone
    assert "plain function" in host.failed["asynchronous"]
    assert "plugins.strict.limit" in host.failed["strict"]
    assert "plugins.strict.colour: unknown key" in host.failed["strict"]


def test_defaults_disabled_and_off_by_default() -> None:
    host = host_with()
    assert "example_dice" in host.skipped and host.commands.find("roll") is None
    host = host_with(enabled=["example_dice"], disabled=["help"])
    loaded = [p.name for p in host.loaded]
    assert "example_dice" in loaded and "help" not in loaded
    assert host.skipped["help"].startswith("disabled")


async def test_commands_usage_admin_crash_and_timeout(pkg, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = pkg(
        "misc",
        """
        import asyncio
        from bridge.commands import Arg
        def setup(ctx):
            @ctx.command("secret", admin_only=True)
            async def secret(inv):
                await inv.reply("for admins")
            @ctx.command("boom")
            async def boom(inv):
                raise RuntimeError("inside")
            @ctx.command("hang")
            async def hang(inv):
                await asyncio.Event().wait()
            @ctx.command("add", args=(Arg("a", int), Arg("b", int)))
            async def add(inv):
                await inv.reply(str(inv.args["a"] + inv.args["b"]))
    """,
    )
    host = host_with(enabled=[mod])
    monkeypatch.setattr(plugins_mod, "COMMAND_TIMEOUT", 0.2)
    said = Said()
    for caller, line in [
        (USER, "/secret"),
        (USER, "/secret with arguments it does not take"),
        (ADMIN, "/secret"),
        (USER, "/boom"),
        (USER, "/hang"),
        (USER, "/add 2 40"),
        (USER, "/add 2"),
        (USER, "/ADD 1 1"),
    ]:
        await host.run_command(KEY, caller, line, said)
    assert said.lines == [
        "Only an admin may use /secret.",
        "Only an admin may use /secret.",  # not its usage
        "for admins",
        "/boom failed: RuntimeError.",
        "/hang took too long and was stopped.",
        "42",
        "b is missing. Usage: /add <a> <b>",
        "2",
    ]


async def test_filters_chain_consume_and_survive_a_crash(pkg) -> None:
    mod = pkg(
        "filters",
        """
        from bridge.plugins import Consume
        def setup(ctx):
            @ctx.input_filter
            async def crash(inp):
                raise ValueError("a broken filter is skipped")
            @ctx.input_filter
            async def shout(inp):
                return inp.text.upper()
            @ctx.input_filter
            async def stop(inp):
                if "STOP" in inp.text:
                    await inp.reply("stopped")
                    return Consume("asked to")
                return inp.text + "!"
            @ctx.reply_filter
            async def polite(key, text):
                return text.replace("bad", "***")
    """,
    )
    host = host_with(enabled=[mod])
    said = Said()
    assert await host.filter_input(KEY, USER, "hello", said) == "HELLO!"
    out = await host.filter_input(KEY, USER, "please stop", said)
    assert isinstance(out, Consume) and out.reason == "asked to"
    assert said.lines == ["stopped"]
    assert await host.filter_reply(KEY, "a bad reply") == "a *** reply"


async def test_store_needs_the_running_bridge(pkg) -> None:
    mod = pkg(
        "stored",
        """
        def setup(ctx):
            @ctx.command("count")
            async def count(inv):
                n = await ctx.store.get("n", 0) + 1
                await ctx.store.set("n", n)
                await inv.reply(str(n))
    """,
    )
    host = host_with(enabled=[mod])
    said = Said()
    await host.run_command(KEY, USER, "/count", said)
    assert said.lines == ["/count failed: RuntimeError."]  # no store outside `serve`


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"prefixes": ["go"]}, "cannot be a command prefix"),
        ({"prefixes": []}, "at least 1"),
        ({"enabled": ["not a path"]}, "not a module path"),
        ({"stray": 1}, "plugins.stray: unknown key"),
    ],
)
def test_plugins_section_is_validated(tmp_path: Path, table: dict, message: str) -> None:
    lines = ["[plugins]"]
    for k, v in table.items():
        value = repr(v).replace("'", '"')
        lines.append(f"{k} = {value}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_cli_lists_what_loads(tmp_path: Path) -> None:
    pkg_dir = tmp_path / "cli_plugins"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    (pkg_dir / "broken.py").write_text("raise ImportError('missing dependency')\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[plugins]\nenabled = ["example_dice", "cli_plugins.broken"]\n')
    env_path = f"{tmp_path}:{ROOT}"
    r = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "plugins", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.split()[:3] == ["loaded", "example_dice", "/roll"] for line in lines)
    assert any(line.split()[:2] == ["loaded", "help"] for line in lines)
    broken = next(line for line in lines if line.startswith("FAILED"))
    assert "broken" in broken and "missing dependency" in broken


def test_stream_filters_chain_and_a_broken_one_withholds_the_rest(pkg) -> None:
    mod = pkg(
        "streams",
        """
        class Upper:
            def feed(self, text):
                return text.upper()
            def end(self):
                return ""

        class Fragile:
            def __init__(self):
                self.held = ""
            def feed(self, text):
                if "!" in text:
                    raise ValueError("cannot cope")
                out, self.held = self.held, text  # shows each piece one piece late
                return out
            def end(self):
                return self.held

        def setup(ctx):
            ctx.stream_filter(lambda key: Upper())
            ctx.stream_filter(lambda key: Fragile())
    """,
    )
    host = host_with(enabled=[mod])
    guard = host.stream_guard(KEY)
    assert guard is not None
    assert [guard.feed(t) for t in ("ab", "cd")] == ["", "AB"]
    assert guard.end() == "CD"
    broken = host.stream_guard(KEY)
    assert broken is not None
    assert broken.feed("ok") == ""
    assert broken.feed("boom!") == ""  # the filter broke: nothing more is shown
    assert broken.feed("more") == "" and broken.end() == ""
    assert host_with().stream_guard(KEY) is None


BACKGROUND = """
import asyncio

state = {"tasks": [], "cancelled": 0}
gate = asyncio.Event()
entered = asyncio.Event()

def setup(ctx):
    @ctx.command("later")
    async def later(inv):
        async def work():
            entered.set()
            try:
                async with asyncio.timeout(30):
                    await gate.wait()
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise
            await inv.reply("done")

        state["tasks"].append(ctx.spawn(work(), name="work"))
        await inv.reply("started")
"""


async def test_spawned_work_answers_after_the_command_and_is_cancelled_on_close(pkg) -> None:
    mod = pkg("background", BACKGROUND)
    host = host_with(enabled=[mod])
    plugin = sys.modules[mod]
    said = Said()
    await host.run_command(KEY, USER, "/later", said)
    # The handler has returned; its work goes on, owned by the host, and answers when done.
    assert said.lines == ["started"] and host.background == 1
    first = plugin.state["tasks"][0]
    assert first.get_name() == "plugin-background:work"
    plugin.gate.set()
    async with asyncio.timeout(5):
        await first
    assert said.lines == ["started", "done"] and host.background == 0
    # Work still going at close is cancelled (and waited for); nothing is spawned after.
    plugin.gate.clear()
    plugin.entered.clear()
    await host.run_command(KEY, USER, "/later", said)
    async with asyncio.timeout(5):
        await plugin.entered.wait()
    assert host.background == 1
    await host.close()
    assert host.background == 0 and plugin.state["cancelled"] == 1
    assert plugin.state["tasks"][1].cancelled()
    await host.run_command(KEY, USER, "/later", said)
    assert said.lines[-1] == "/later failed: RuntimeError."
