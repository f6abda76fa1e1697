"""Command lines: split, bound to typed arguments, found by name or alias. Plain data only."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.commands import (
    Arg,
    Command,
    CommandRegistry,
    Invocation,
    UsageError,
    bind,
    next_word,
    parse_line,
)


async def _noop(inv: Invocation) -> None:
    return None


def cmd(name: str, *args: Arg, **kw: Any) -> Command:
    return Command(name, _noop, args=args, **kw)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/help", ("/", "help", "")),
        ("  /roll 2d6", ("/", "roll", " 2d6")),
        ("/帮助", ("/", "帮助", "")),
        ("/", None),
        ("/ hello", None),
        ("hello /help", None),
        ("/usr/bin/env python", None),
        ("/" + "x" * 33, None),
        ("!ping now", ("!", "ping", " now")),
        ("!!x", ("!!", "x", "")),
    ],
)
def test_parse_line(line: str, expected: tuple[str, str, str] | None) -> None:
    assert parse_line(line, ("/", "!", "!!")) == expected


def test_words_quotes_and_apostrophes() -> None:
    text = ' add cron "*/5 * * * *" say "hi" I\'m here'
    words = []
    at = 0
    while (w := next_word(text, at)) is not None:
        words.append(w[0])
        at = w[1]
    assert words == ["add", "cron", "*/5 * * * *", "say", "hi", "I'm", "here"]
    assert next_word(' "a \\" quote"')[0] == 'a " quote'
    with pytest.raises(UsageError, match="not closed"):
        next_word(' "open')


def test_typed_optional_and_rest_arguments() -> None:
    c = cmd(
        "t",
        Arg("n", int),
        Arg("x", float, optional=True, default=1.5),
        Arg("rest", rest=True, optional=True),
    )
    assert bind(c, " 3")[1] == {"n": 3, "x": 1.5, "rest": None}
    assert bind(c, ' 3 2.5 and   the "rest" ')[1] == {
        "n": 3,
        "x": 2.5,
        "rest": 'and   the "rest"',
    }
    with pytest.raises(UsageError, match="n is missing"):
        bind(c, "")
    with pytest.raises(UsageError, match="whole number"):
        bind(c, " three")
    with pytest.raises(UsageError, match="finite"):
        bind(c, " 1 nan")


def test_rest_keeps_an_unbalanced_quote_as_text() -> None:
    c = cmd("say", Arg("text", rest=True))
    assert bind(c, ' He said "hi')[1] == {"text": 'He said "hi'}
    with pytest.raises(UsageError, match="text is missing"):
        bind(c, "   ")


def test_choices_and_extra_words() -> None:
    c = cmd("mode", Arg("m", choices=("mask", "block")))
    assert bind(c, " MASK")[1] == {"m": "mask"}
    with pytest.raises(UsageError, match="one of mask, block"):
        bind(c, " drop")
    with pytest.raises(UsageError, match="unexpected 'more'"):
        bind(c, " mask more")


def test_sub_commands_and_usage() -> None:
    group = Command("schedule", None, help="timed prompts")
    group.sub("list")(_noop)
    group.sub("del", args=(Arg("id", int),), aliases=("rm",))(_noop)
    group.sub("add", usage='cron "<cron>" <prompt> | every <N>s|m|h <prompt>')(_noop)
    target, args = bind(group, " rm 7")
    assert target.path == "schedule del" and args == {"id": 7}
    assert target.usage("/") == "/schedule del <id>"
    assert group.subcommands["add"].usage("/") == (
        '/schedule add cron "<cron>" <prompt> | every <N>s|m|h <prompt>'
    )
    assert group.usage("/") == "/schedule <add|del|list|rm> ..."
    with pytest.raises(UsageError, match="sub-command is needed"):
        bind(group, "")
    with pytest.raises(UsageError, match="unknown sub-command 'nope'"):
        bind(group, " nope")
    with pytest.raises(ValueError, match="twice"):
        group.sub("list")(_noop)


def test_argument_order_is_checked_at_registration() -> None:
    with pytest.raises(ValueError, match="only the last"):
        cmd("x", Arg("a", rest=True), Arg("b"))
    with pytest.raises(ValueError, match="required argument after an optional"):
        cmd("x", Arg("a", optional=True), Arg("b"))


def test_registry_names_aliases_and_conflicts() -> None:
    reg = CommandRegistry()
    reg.add(cmd("help", aliases=("帮助",), plugin="help"))
    reg.add(cmd("status", admin_only=True, plugin="admin"))
    assert reg.find("HELP") is reg.find("帮助") is not None
    assert [c.name for c in reg.visible_to(False)] == ["help"]
    assert [c.name for c in reg.visible_to(True)] == ["help", "status"]
    with pytest.raises(ValueError, match="already registered by plugin help"):
        reg.add(cmd("帮助", plugin="other"))
    with pytest.raises(ValueError, match="bad command name"):
        reg.add(cmd("two words", plugin="other"))
    reg.remove_plugin("admin")
    assert reg.find("status") is None and [c.name for c in reg.all()] == ["help"]
