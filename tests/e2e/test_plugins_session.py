"""`/reset`, `/history` and `/persona` from a hub client, with the MomoHub sandbox behind over
real sockets: a reset starts a new MomoHub chat (and deletes the old one there), a persona is the
chat's systemPrompt (and reaches the generation), both are stored by the bridge, and none of these
commands is sent to the model."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Bridge
from tests.e2e.test_momohub import KURO, MOMO, reply_text, send
from tests.e2e.test_plugins import command, generations
from tests.support.hub_client import HubClient, eventually

PIRATE = "Speak like a pirate, matey."


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


async def chat_of(bridge: Bridge, user: str, contact: str = MOMO) -> str | None:
    return await bridge.app.storage.conversations.get(user, contact, "default")


async def say(c: HubClient, t: str, contact: str = MOMO) -> str:
    """A plain message; its streamed reply's text."""
    return (await said(c, t, contact))[1]


async def said(c: HubClient, t: str, contact: str = MOMO) -> tuple[int, str]:
    """A plain message: its id and its streamed reply's text, once the reply's push is in (so
    the next message pushed is whatever comes after it)."""
    ack, frames = await send(c, contact, t)
    assert frames[-1]["message"] == "completed", frames[-1]
    rid = ack["request_id"]
    await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == rid)
    return ack["data"]["message_id"], reply_text(frames)


def system_prompt(reply: str) -> str:
    """What the sandbox's echo model was given as its system prompt (the `/prompt` trigger)."""
    return json.loads(reply.split(" [system: ", 1)[1].removesuffix("]"))


async def test_reset_starts_a_new_momohub_chat_and_replies_go_on(hub: Bridge) -> None:
    c = await hub.client("ann")
    assert await say(c, "hello") == "Momo: you said hello"
    first = await chat_of(hub, "ann")
    assert first is not None
    before = await generations(hub)
    assert (await command(c, "/reset")).startswith("Done: your next message starts a fresh")
    assert await generations(hub) == before
    assert await chat_of(hub, "ann") is None
    assert await say(c, "again") == "Momo: you said again"
    second = await chat_of(hub, "ann")
    assert second is not None and second != first
    momohub = hub.app.momohub
    assert [m.text for m in await momohub.list_messages(second)] == [
        "again",
        "Momo: you said again",
    ]
    # The old chat is deleted upstream (in the background: the reset did not wait for it).

    async def old_chat_gone() -> bool:
        return first not in {chat.id for chat in (await momohub.list_chats()).items}

    await eventually(old_chat_gone, what="the old chat deleted on MomoHub")
    # The alias, and a reset with no chat yet is fine too.
    assert (await command(c, "/重置")).startswith("Done:")
    assert (await command(c, "/reset", contact=KURO)).startswith("Done:")
    assert await say(c, "third") == "Momo: you said third"
    assert await chat_of(hub, "ann") not in (None, first, second)
    assert await generations(hub) == before + 2


async def test_history_shows_the_last_turns_without_commands_or_deleted(hub: Bridge) -> None:
    c = await hub.client("bob")
    assert await command(c, "/history") == "Nothing has been said in this conversation yet."
    ids = {}
    for word in ("one", "two", "three", "four"):
        ids[word], _ = await said(c, word)
        if word == "two":
            assert (await command(c, "/help")).startswith("Commands:")
    before = await generations(hub)
    assert await command(c, "/history 3") == (
        "you: two\nMomo: Momo: you said two\n"
        "you: three\nMomo: Momo: you said three\n"
        "you: four\nMomo: Momo: you said four"
    )
    await hub.app.storage.messages.mark_deleted(ids["three"])
    assert await command(c, "/history 2") == (
        "you: two\nMomo: Momo: you said two\n"
        "Momo: Momo: you said three\n"
        "you: four\nMomo: Momo: you said four"
    )
    everything = await command(c, "/history")
    assert everything.startswith("you: one\n") and everything.endswith("you said four")
    assert "/help" not in everything and "Commands:" not in everything
    # Per conversation: nothing with Kuro yet.
    assert await command(c, "/history 5", contact=KURO) == (
        "Nothing has been said in this conversation yet."
    )
    assert await generations(hub) == before
    # History is local: it still shows what was said before a reset.
    await command(c, "/reset")
    assert (await command(c, "/history 1")) == "you: four\nMomo: Momo: you said four"


async def test_history_wrong_arguments_give_the_usage(hub: Bridge) -> None:
    c = await hub.client("cat")
    assert await command(c, "/history 0") == "n must be 1 to 50. Usage: /history [n]"
    assert await command(c, "/history 51") == "n must be 1 to 50. Usage: /history [n]"
    assert await command(c, "/history lots") == (
        "n must be a whole number, not 'lots'. Usage: /history [n]"
    )
    assert await command(c, "/history 2 3") == "unexpected '3'. Usage: /history [n]"
    assert await command(c, "/reset now") == "unexpected 'now'. Usage: /reset"


async def test_persona_reaches_the_chat_survives_restart_and_reset(hub: Bridge) -> None:
    c = await hub.client("dan")
    own = system_prompt(await say(c, "who are you /prompt"))
    assert own.startswith("You are Momo")
    first = await chat_of(hub, "dan")
    assert first is not None
    before = await generations(hub)
    assert (await command(c, "/persona")).startswith("No persona here.")
    assert await command(c, f"/persona set {PIRATE}") == (
        "Persona set. It applies from your next message and stays after /reset."
    )
    assert await generations(hub) == before
    momohub = hub.app.momohub
    assert (await momohub.get_chat_config(first)).systemPrompt == PIRATE
    # MomoHub appends it to the character's prompt for the next reply.
    assert system_prompt(await say(c, "and now /prompt")) == f"{own}\n\n{PIRATE}"
    assert await generations(hub) == before + 1

    await hub.restart()
    c = await hub.client("dan")
    before = await generations(hub)  # the embedded sandbox restarted with the bridge
    assert await command(c, "/persona") == f"This conversation's persona:\n{PIRATE}"
    await command(c, "/reset")
    assert system_prompt(await say(c, "after the reset /prompt")) == f"{own}\n\n{PIRATE}"
    second = await chat_of(hub, "dan")
    assert second is not None and second != first
    momohub = hub.app.momohub
    assert (await momohub.get_chat_config(second)).systemPrompt == PIRATE

    assert await command(c, "/persona clear") == "Persona cleared."
    assert (await momohub.get_chat_config(second)).systemPrompt is None
    assert system_prompt(await say(c, "plain again /prompt")) == own
    assert await command(c, "/persona clear") == "There is no persona to clear."
    assert (await command(c, "/persona")).startswith("No persona here.")
    await command(c, "/reset")
    await say(c, "fresh")
    third = await chat_of(hub, "dan")
    assert third is not None and (await momohub.get_chat_config(third)).systemPrompt is None
    # Only the plain messages reached MomoHub.
    assert await generations(hub) == before + 3


async def test_persona_set_before_the_first_message_and_per_conversation(hub: Bridge) -> None:
    c = await hub.client("eve")
    other = await hub.client("fay")
    # A persona with quotes and apostrophes, as typed.
    persona = 'You\'re terse. Say "aye" a lot.'
    assert (await command(c, f"/persona set   {persona}  ", contact=KURO)).startswith(
        "Persona set."
    )
    assert await chat_of(hub, "eve", KURO) is None  # no chat yet: it waits for one
    assert system_prompt(await say(c, "hi /prompt", contact=KURO)).endswith(f"\n\n{persona}")
    chat = await chat_of(hub, "eve", KURO)
    assert chat is not None
    assert (await hub.app.momohub.get_chat_config(chat)).systemPrompt == persona
    # Another user's conversation with Kuro, and eve's with Momo, have none.
    assert (await command(other, "/persona", contact=KURO)).startswith("No persona here.")
    assert (await command(c, "/persona")).startswith("No persona here.")
    assert "\n\n" not in system_prompt(await say(other, "hi /prompt", contact=KURO))


async def test_persona_wrong_arguments_give_the_usage(hub: Bridge) -> None:
    c = await hub.client("gus")
    before = await generations(hub)
    assert await command(c, "/persona set") == "text is missing. Usage: /persona set <text...>"
    assert await command(c, "/persona bogus") == (
        "unexpected 'bogus'. Usage: /persona [set <text...>|clear]"
    )
    assert await command(c, "/persona clear now") == "unexpected 'now'. Usage: /persona clear"
    assert await command(c, "/persona set " + "x" * 4001) == (
        "a persona is at most 4000 characters. Usage: /persona set <text...>"
    )
    assert (await command(c, "/persona")).startswith("No persona here.")
    assert await generations(hub) == before
