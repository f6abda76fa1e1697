"""What an `openai/completions` request sends on: plain data through `bridge.completions` and
the text a stored message gives a model (`bridge.model_chats`)."""

from __future__ import annotations

from bridge.commands import Command
from bridge.completions import content_text, without_commands
from bridge.config import PluginsConfig
from bridge.model_chats import message_text, trimmed
from bridge.plugins import PluginHost


def host() -> PluginHost:
    h = PluginHost(PluginsConfig(prefixes=["/", "!"]))

    async def nothing(inv: object) -> None:
        return None

    h.commands.add(Command("help", nothing))
    h.commands.add(Command("reset", nothing, clears_context=True))
    return h


def m(role: str, content: object) -> dict:
    return {"role": role, "content": content}


def test_content_text_reads_strings_and_text_parts() -> None:
    assert content_text("hi") == "hi"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert content_text(parts) == "ab"
    assert content_text(None) == "" and content_text(42) == ""


def test_without_commands_drops_command_exchanges_and_cuts_at_a_reset() -> None:
    h = host()
    sys = m("system", "be nice")
    history = [
        sys,
        m("user", "a"),
        m("assistant", "A"),
        m("user", "!help"),
        m("assistant", "Commands"),
        m("user", "/unknown"),
        m("assistant", "Unknown command"),
        m("user", "b"),
        m("assistant", "B"),
    ]
    assert without_commands(history, h) == [
        sys,
        m("user", "a"),
        m("assistant", "A"),
        m("user", "b"),
        m("assistant", "B"),
    ]
    reset = [*history, m("user", "/RESET"), m("assistant", "Done"), m("user", "c")]
    assert without_commands(reset, h) == [sys, m("user", "c")]
    # Text that only looks like a prefix is a message.
    assert without_commands([m("user", "/ hello"), m("assistant", "x")], h) == [
        m("user", "/ hello"),
        m("assistant", "x"),
    ]


def test_a_stored_message_as_model_text() -> None:
    assert (
        message_text([{"type": "text", "data": {"text": "hi "}}, {"type": "face", "data": {}}])
        == "hi [face]"
    )
    assert (
        message_text([{"type": "image", "data": {"url": "https://x/y.png"}}])
        == "[image: https://x/y.png]"
    )
    assert message_text([{"type": "image", "data": {"file": "base64://AAAA"}}]) == "[image]"
    nodes = [
        {
            "type": "nodes",
            "data": {"messages": [{"message": [{"type": "text", "data": {"text": "q1\nq2"}}]}]},
        }
    ]
    assert message_text(nodes) == "> q1\n> q2\n"


def test_trimmed_keeps_the_newest_that_fit_and_always_the_last() -> None:
    msgs = [m("user", "x" * 10), m("assistant", "y" * 10), m("user", "z" * 10)]
    assert trimmed(msgs, 25) == msgs[1:]
    assert trimmed(msgs, 30) == msgs
    assert trimmed(msgs, 5) == msgs[2:]
