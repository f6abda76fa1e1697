"""Commands from a hub client, with the MomoHub sandbox behind: answered by the bridge as
ordinary messages in the conversation, never sent upstream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Bridge
from tests.e2e.test_momohub import MOMO, Sandbox, send, text
from tests.support.hub_client import HubClient

FAULTY = """
def setup(ctx):
    raise RuntimeError("this plugin is broken on purpose")
"""
NO_SETUP = "VALUE = 1\n"


def pushed_texts(c: HubClient) -> list[str]:
    return [
        "".join(s["data"].get("text", "") for s in p["data"]["content"]["message"])
        for p in c.pushes("message")
    ]


async def command(c: HubClient, line: str, contact: str = MOMO) -> str:
    """Send a command line; the answer is the next message pushed."""
    before = len(c.pushes("message"))
    rid = await c.send("onebot", "message", text(line), id=contact)
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack
    assert isinstance(ack["data"]["message_id"], int)
    await c.wait_for(lambda f: len(c.pushes("message")) > before)
    return pushed_texts(c)[before]


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, plugins={"enabled": ["example_dice"]})


async def generations(bridge: Bridge) -> int:
    """Messages MomoHub was sent (each asks for a reply)."""
    requests = (await Sandbox(bridge).stats())["requests"]
    return int(requests.get("POST /v1/chats/{chatId}/messages", 0))


async def test_help_lists_commands_and_never_reaches_momohub(hub: Bridge) -> None:
    c = await hub.client("ann")
    before = await generations(hub)
    answer = await command(c, "/help")
    assert answer.startswith("Commands:")
    assert "/help" in answer and "/roll" in answer
    assert "帮助" not in answer  # aliases are for /help <command>
    assert await command(c, "/帮助 roll") == (
        "/roll [dice]\nroll dice, e.g. 2d6+1 (d20 if none given); 'last' shows your previous roll"
        "\nalso: /dice"
    )
    assert await generations(hub) == before
    push = c.pushes("message")[-1]["data"]
    assert push["id"] == MOMO
    assert push["content"]["sender"]["name"] == "Momo"
    # An ordinary message still goes through, after the commands, in order.
    _, frames = await send(c, MOMO, "hello")
    assert frames[-1]["message"] == "completed"
    assert await generations(hub) == before + 1


async def test_wrong_arguments_unknown_command_and_plain_slashes(hub: Bridge) -> None:
    c = await hub.client("bob")
    assert await command(c, "/roll 2d6 extra") == "unexpected 'extra'. Usage: /roll [dice]"
    assert await command(c, "/roll banana") == (
        "'banana' is not dice such as 2d6 or d20+3. Usage: /roll [dice]"
    )
    assert await command(c, "/nope") == "Unknown command /nope. /help lists the commands."
    before = await generations(hub)
    # Not command lines: a lone slash, a slash and a space, a path.
    for line in ("/", "/ hello", "/usr/bin/env python"):
        _, frames = await send(c, MOMO, line)
        assert frames[-1]["message"] == "completed"
    assert await generations(hub) == before + 3


async def test_dice_rolls_and_remembers_per_user_across_restart(hub: Bridge) -> None:
    c = await hub.client("cat")
    answer = await command(c, "/roll 3d6+2")
    head, total = answer.rsplit(" = ", 1)
    rolls = [int(x) for x in head.split(": ", 1)[1].split(" + ")[:3]]
    assert all(1 <= r <= 6 for r in rolls) and int(total) == sum(rolls) + 2
    assert await command(c, "/roll last") == f"Your last roll: {answer}"
    await hub.restart()
    c2 = await hub.client("cat")
    assert await command(c2, "/roll last") == f"Your last roll: {answer}"
    other = await hub.client("dan")
    assert await command(other, "/dice last") == "You have not rolled yet."


async def test_command_answers_reach_an_offline_user_later(hub: Bridge) -> None:
    c = await hub.client("eve")
    other_tab = await hub.client("eve")
    await command(c, "/help")
    # Every tab of the user gets the answer, as any message.
    await other_tab.wait_for(lambda f: bool(other_tab.pushes("message")))
    assert pushed_texts(other_tab)[-1].startswith("Commands:")


def _write_plugin(root: Path, name: str, source: str) -> None:
    pkg = root / "extra_plugins"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / f"{name}.py").write_text(source)


async def test_broken_plugins_are_skipped_and_the_bridge_serves(
    bridge_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_plugin(tmp_path, "faulty", FAULTY)
    _write_plugin(tmp_path, "nosetup", NO_SETUP)
    monkeypatch.syspath_prepend(str(tmp_path))
    b = await bridge_factory(
        momohub={"enabled": True},
        plugins={
            "enabled": ["extra_plugins.faulty", "extra_plugins.nosetup", "extra_plugins.missing"]
        },
    )
    host = b.app.plugins
    assert host is not None
    assert "this plugin is broken on purpose" in host.failed["faulty"]
    assert "no setup(ctx)" in host.failed["nosetup"]
    assert "ModuleNotFoundError" in host.failed["missing"]
    loaded = [p.name for p in host.loaded]
    assert "help" in loaded and not {"faulty", "nosetup", "missing"} & set(loaded)
    c = await b.client("fay")
    assert (await command(c, "/help")).startswith("Commands:")
    for name in ("extra_plugins.faulty", "extra_plugins.nosetup"):
        sys.modules.pop(name, None)


async def test_disabled_builtin_and_other_prefixes(bridge_factory) -> None:
    b = await bridge_factory(
        momohub={"enabled": True},
        plugins={"disabled": ["help"], "enabled": ["example_dice"], "prefixes": ["!", "#"]},
    )
    c = await b.client("gus")
    assert await command(c, "#roll 1d1") == "a die has 2 to 1000 sides. Usage: #roll [dice]"
    assert await command(c, "!help") == "Unknown command !help. !help lists the commands."
    before = await generations(b)
    _, frames = await send(c, MOMO, "/roll 2d6")  # "/" is not a prefix here: plain text
    assert frames[-1]["message"] == "completed"
    assert await generations(b) == before + 1
