"""Conversations with models, from a hub client, against a real OpenAI-compatible server on
loopback: a `model:<model>` contact whose history the bridge keeps, and `openai/completions`
whose client sends the history. Commands never reach the model in either; `/reset` and
`/persona` shape what the model is sent."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.models import ConversationKey
from tests.conftest import Bridge
from tests.e2e.test_momohub import reply_text, send, text
from tests.e2e.test_plugins import command
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient

ECHO = "model:fake/echo"


def providers(upstream: FakeOpenAI) -> dict[str, Any]:
    return {
        "default_model": "fake/echo",
        "providers": [
            {"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test", "timeout": 5.0}
        ],
    }


@pytest.fixture
async def hub(bridge_factory, upstream: FakeOpenAI) -> Bridge:
    return await bridge_factory(openai={**providers(upstream), "history_turns": 3})


async def talk(c: HubClient, t: str, contact: str = ECHO) -> str:
    """A message to the model contact; the streamed reply's text, once its push is in."""
    ack, frames = await send(c, contact, t)
    assert frames[-1]["message"] == "completed", frames[-1]
    rid = ack["request_id"]
    await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == rid)
    return reply_text(frames)


def sent(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    """The messages of the model's newest request."""
    return upstream.requests[-1]["messages"]


def said(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


async def completion(c: HubClient, messages: list[dict[str, Any]], **data: Any) -> list[dict]:
    rid = await c.send(
        "openai", "completions", {"model": "fake/echo", "messages": messages, **data}
    )
    return await c.stream(rid)


def completed_text(frames: list[dict]) -> str:
    assert frames[0]["message"] == "pending", frames
    assert frames[-1]["message"] == "completed", frames[-1]
    return reply_text(frames)


async def test_a_model_contact_keeps_the_history(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("ann")
    assert await talk(c, "one") == "You said: one"
    assert await talk(c, "two") == "You said: two"
    assert sent(upstream) == [
        said("user", "one"),
        said("assistant", "You said: one"),
        said("user", "two"),
    ]
    assert upstream.requests[-1]["model"] == "echo"
    # history_turns = 3: the oldest turns fall out of the context, not out of /history.
    for t in ("three", "four", "five"):
        await talk(c, t)
    assert sent(upstream)[0] == said("user", "three")
    assert len(sent(upstream)) == 5
    assert (await command(c, "/history 5", contact=ECHO)).startswith("you: one\n")


async def test_commands_reset_and_persona_in_a_model_contact(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("ben")
    await talk(c, "hello")
    calls = len(upstream.requests)
    assert (await command(c, "/help", contact=ECHO)).startswith("Commands:")
    assert (await command(c, "/persona set Answer like a cat.", contact=ECHO)).startswith(
        "Persona set."
    )
    assert len(upstream.requests) == calls  # no command reached the model
    await talk(c, "again")
    assert sent(upstream) == [
        said("system", "Answer like a cat."),
        said("user", "hello"),
        said("assistant", "You said: hello"),
        said("user", "again"),
    ]
    assert (await command(c, "/reset", contact=ECHO)).startswith("Done:")
    await talk(c, "fresh")
    assert sent(upstream) == [said("system", "Answer like a cat."), said("user", "fresh")]
    # Both survive a restart.
    await hub.restart()
    c = await hub.client("ben")
    await talk(c, "after restart")
    assert sent(upstream) == [
        said("system", "Answer like a cat."),
        said("user", "fresh"),
        said("assistant", "You said: fresh"),
        said("user", "after restart"),
    ]
    assert (await command(c, "/persona clear", contact=ECHO)) == "Persona cleared."
    await talk(c, "plain")
    assert sent(upstream)[0] == said("user", "fresh")
    # Another user's conversation with the same model is their own.
    d = await hub.client("cat")
    await talk(d, "mine")
    assert sent(upstream) == [said("user", "mine")]


async def test_a_model_contact_refuses_what_it_cannot_serve(hub: Bridge) -> None:
    c = await hub.client("dan")
    for contact, why in (
        ("model:character:0b7c5d4e", "is a character"),
        ("model:nope/x", "unknown model"),
    ):
        rid = await c.send(
            "onebot", "message", {"message": [{"type": "text", "data": {"text": "hi"}}]}, id=contact
        )
        frame = await c.reply(rid)
        assert frame["code"] == 1 and frame["data"]["error"] == "NOT_FOUND", frame
        assert why in frame["data"]["reason"]


async def test_a_command_as_a_completion_never_reaches_the_model(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("eve")
    calls = len(upstream.requests)
    frames = await completion(c, [said("user", "/help")])
    assert completed_text(frames).startswith("Commands:")
    frames = await completion(c, [said("user", "/nosuch")])
    assert completed_text(frames) == "Unknown command /nosuch. /help lists the commands."
    assert len(upstream.requests) == calls
    # Nothing of it was pushed as a message: the completion was the answer.
    assert c.pushes("message") == []


async def test_completions_leave_out_commands_and_what_came_before_a_reset(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("fay")
    system = said("system", "You are helpful.")
    history = [
        system,
        said("user", "a"),
        said("assistant", "You said: a"),
        said("user", "/help"),
        said("assistant", "Commands: ..."),
        said("user", "b"),
    ]
    assert completed_text(await completion(c, history)) == "You said: b"
    assert sent(upstream) == [
        system,
        said("user", "a"),
        said("assistant", "You said: a"),
        said("user", "b"),
    ]
    frames = await completion(
        c, [*history, said("assistant", "You said: b"), said("user", "/reset")]
    )
    assert completed_text(frames).startswith("Done:")
    after = [
        *history,
        said("assistant", "You said: b"),
        said("user", "/reset"),
        said("assistant", "Done: ..."),
        said("user", "c"),
    ]
    assert completed_text(await completion(c, after)) == "You said: c"
    assert sent(upstream) == [system, said("user", "c")]


async def test_a_completion_persona_goes_as_a_system_message(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("gus")
    frames = await completion(c, [said("user", "/persona set Be terse.")])
    assert completed_text(frames).startswith("Persona set.")
    own = said("system", "You are helpful.")
    await completion(c, [own, said("user", "hi")])
    assert sent(upstream) == [own, said("system", "Be terse."), said("user", "hi")]
    # A conversation of its own (conversation_id) has no persona.
    await completion(c, [said("user", "hi")], conversation_id="side")
    assert sent(upstream) == [said("user", "hi")]
    # The same conversation as the `model:` contact: one persona for both.
    frames = await completion(c, [said("user", "/persona")])
    assert completed_text(frames) == "This conversation's persona:\nBe terse."
    assert (await command(c, "/persona", contact=ECHO)) == "This conversation's persona:\nBe terse."


@pytest.mark.parametrize("action", ["mask", "block"])
async def test_the_filter_applies_to_completions(
    bridge_factory, upstream: FakeOpenAI, action: str
) -> None:
    hub = await bridge_factory(
        openai=providers(upstream),
        plugins={"filter": {"words": ["secret"], "action": action}},
    )
    c = await hub.client("hal")
    calls = len(upstream.requests)
    text = completed_text(await completion(c, [said("user", "tell the secret now")]))
    if action == "mask":
        assert sent(upstream)[-1] == said("user", "tell the ****** now")
        assert text == "You said: tell the ****** now"
    else:
        assert len(upstream.requests) == calls
        assert "secret" not in text and text
    # The model's own words are filtered too (the echo repeats what it was given).
    hub.app.sessions.plugins.input_filters.clear()  # let the word reach the model
    text = completed_text(await completion(c, [said("user", "a secret")]))
    assert "secret" not in text
    if action == "mask":
        assert text == "You said: a ******"


async def test_history_shows_a_scheduled_reply_but_no_command_answers(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("ivy")
    await talk(c, "hi")
    turn = await hub.app.sessions.prompt(ConversationKey("ivy", ECHO), "say good morning")
    await turn.wait(10)
    push = await c.wait_push(lambda f: "good morning" in str(f["data"]["content"]["message"]))
    assert push["data"]["id"] == ECHO
    # The prompt went after the history, as the user's turn; it is not in /history itself.
    assert sent(upstream) == [
        said("user", "hi"),
        said("assistant", "You said: hi"),
        said("user", "say good morning"),
    ]
    assert await command(c, "/history", contact=ECHO) == (
        "you: hi\nmodel:fake/echo: You said: hi\nmodel:fake/echo: You said: say good morning"
    )


async def test_a_failing_model_ends_the_reply_and_the_history_holds_no_half_answer(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    c = await hub.client("jo")
    for model in ("fail-500", "drop"):
        _, frames = await send(c, f"model:fake/{model}", "hello")
        assert frames[-1]["message"] == "failed", frames[-1]
        assert frames[-1]["data"]["error"].startswith("UPSTREAM"), frames[-1]
        # The user's message stays (they said it); nothing of the broken reply is stored.
        rows = await hub.app.storage.messages.recent("jo", f"model:fake/{model}", "default", 9)
        assert [(r.direction, r.kind) for r in rows] == [("in", "message")]


async def test_a_recalled_message_leaves_the_context(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("kim")
    ack, _ = await send(c, ECHO, "forget me")
    await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == ack["request_id"])
    frame = await c.request(
        "onebot",
        "del_message",
        {"id": ECHO, "type": "message", "content": {"message_id": ack["data"]["message_id"]}},
    )
    assert frame["code"] == 0, frame
    await talk(c, "keep me")
    assert sent(upstream) == [said("user", "keep me")]


async def test_a_message_sent_after_reset_while_a_reply_runs_starts_the_fresh_context(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    """`/reset` runs as a turn after the running reply; what was typed after it (and so stored
    before that turn ran) is the fresh context's first message, not lost before it."""
    c = await hub.client("lou")
    slow = "model:fake/slow"
    running = await c.send("onebot", "message", text("one"), id=slow)
    one = (await c.reply(running))["data"]["message_id"]
    await c.wait_for(lambda f: f.get("request_id") == running and f.get("message") == "update")
    reset = await c.send("onebot", "message", text("/reset"), id=slow)
    fresh = await c.send("onebot", "message", text("fresh"), id=slow)
    for rid in (reset, fresh):
        assert (await c.reply(rid))["code"] == 0
    # Stop the endless reply: the reset and the next message go on.
    frame = await c.request(
        "onebot", "del_message", {"id": slow, "type": "message", "content": {"message_id": one}}
    )
    assert frame["code"] == 0, frame
    await c.wait_for(
        lambda f: f.get("request_id") == fresh and f.get("message") == "update", timeout=30
    )
    fresh_request = next(r for r in upstream.requests if r["messages"][-1]["content"] == "fresh")
    assert fresh_request["messages"] == [said("user", "fresh")]
    messages = await hub.app.storage.messages.recent("lou", slow, "default", 10)
    fresh_id = next(m.id for m in messages if m.content[0]["data"]["text"] == "fresh")
    await c.request(
        "onebot",
        "del_message",
        {"id": slow, "type": "message", "content": {"message_id": fresh_id}},
    )


async def test_completions_history_goes_through_the_filter_as_it_was_when_new(
    bridge_factory, upstream: FakeOpenAI
) -> None:
    for action in ("block", "mask"):
        hub = await bridge_factory(
            openai=providers(upstream), plugins={"filter": {"words": ["secret"], "action": action}}
        )
        c = await hub.client("max")
        first = said("user", "tell the secret")
        notice = completed_text(await completion(c, [first]))
        history = [first, said("assistant", notice), said("user", "ok then")]
        assert completed_text(await completion(c, history)) == "You said: ok then"
        if action == "block":
            assert sent(upstream) == [said("user", "ok then")]
        else:
            assert sent(upstream) == [
                said("user", "tell the ******"),
                said("assistant", notice),
                said("user", "ok then"),
            ]


async def test_a_persona_set_just_before_applies_to_the_next_completion(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    """Completions are planned as turns of their conversation, in order."""
    c = await hub.client("ned")
    running = await c.send(
        "openai", "completions", {"model": "fake/slow", "messages": [said("user", "long")]}
    )
    await c.wait_for(lambda f: f.get("request_id") == running and f.get("message") == "update")
    persona = await c.send(
        "openai",
        "completions",
        {"model": "fake/slow", "messages": [said("user", "/persona set Be terse.")]},
    )
    hi = await c.send(
        "openai", "completions", {"model": "fake/slow", "messages": [said("user", "hi")]}
    )
    assert (await c.request("openai", "abort", {"request_id": running}))["code"] == 0
    assert completed_text(await c.stream(persona)).startswith("Persona set.")
    await c.wait_for(lambda f: f.get("request_id") == hi and f.get("message") == "update")
    assert upstream.requests[-1]["messages"] == [said("system", "Be terse."), said("user", "hi")]
    assert (await c.request("openai", "abort", {"request_id": hi}))["code"] == 0


async def test_odd_model_contacts_are_refused_before_anything_is_stored(hub: Bridge) -> None:
    c = await hub.client("oz")
    for contact, code in (
        ("model:" + "x" * 200, "INVALID_DATA"),
        ("model:a\nb", "INVALID_DATA"),
        ("model:ECHO", "NOT_FOUND"),
        ("model:fake/nope", "NOT_FOUND"),
    ):
        rid = await c.send("onebot", "message", text("hi"), id=contact)
        frame = await c.reply(rid)
        assert frame["code"] == 1 and frame["data"]["error"] == code, (contact, frame)
    assert await hub.app.storage.messages.newest_id("oz", "model:ECHO", "default") == 0


async def test_an_empty_completion_is_refused(hub: Bridge) -> None:
    c = await hub.client("pam")
    frame = await c.request("openai", "completions", {"model": "fake/echo", "messages": []})
    assert frame["code"] == 1 and frame["data"]["error"] == "INVALID_DATA", frame
