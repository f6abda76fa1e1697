"""A reply left in flight by a crash: recovered from MomoHub when it finished there, otherwise
answered with an explicit interrupted notice (never silence)."""

from __future__ import annotations

from typing import Any

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.models import ConversationKey
from tests.conftest import Bridge
from tests.support.hub_client import HubClient

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


async def _first_turn(hub: Bridge, user: str) -> str:
    c = await hub.client(user)
    rid = await c.send("onebot", "message", text("first"), id=MOMO)
    frames = await c.stream(rid)
    assert frames[-1]["message"] == "completed"
    await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == rid)
    await c.close()
    chat = await hub.app.storage.conversations.get(user, MOMO, "default")
    assert chat is not None
    return chat


async def _crashed_turn(hub: Bridge, user: str, content: str) -> int:
    """What a crash leaves behind: the user's message stored and marked in flight."""
    row = await hub.app.storage.messages.add(
        user, MOMO, "in", text(content), inflight=True, stream_request_id="r-crash"
    )
    return row.id


async def test_a_reply_momohub_finished_is_recovered_and_pushed(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    chat = await _first_turn(hub, "rex")
    mid = await _crashed_turn(hub, "rex", "second")
    # MomoHub got the message and finished the reply before the bridge died.
    assert hub.app.momohub is not None
    async for _ in hub.app.momohub.send_message(chat, [{"type": "text", "content": "second"}]):
        pass
    assert await hub.app.sessions.recover() == 1

    c: HubClient = await hub.client("rex")
    push = await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == "r-crash")
    assert push["data"]["content"]["message"] == text("Momo: you said second")
    assert not push["data"]["content"].get("interrupted")
    assert await hub.app.storage.inflight.all() == []
    # Its ids were recorded, so recalling it deletes exactly those upstream messages.
    before = await hub.app.momohub.list_messages(chat, limit=50)
    ack = await c.request("onebot", "del_message", {"message_id": mid})
    assert ack["code"] == 0, ack
    after = await hub.app.momohub.list_messages(chat, limit=50)
    assert len(before) - len(after) == 2
    assert [m.id for m in after] == [m.id for m in before[:2]]


async def test_a_reply_momohub_never_finished_becomes_an_interrupted_notice(
    bridge_factory,
) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    await _first_turn(hub, "sam")
    mid = await _crashed_turn(hub, "sam", "lost")
    assert await hub.app.sessions.recover() == 1
    c = await hub.client("sam")
    push = await c.wait_push(lambda f: f["data"]["content"].get("interrupted") is True)
    assert push["data"]["content"]["reply_to"] == mid
    assert isinstance(push["seq"], int)
    assert "interrupted" in push["data"]["content"]["message"][0]["data"]["text"]
    assert await hub.app.storage.inflight.all() == []


async def test_recovery_waits_out_an_unreachable_upstream_then_reports(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    await _first_turn(hub, "tia")
    mid = await _crashed_turn(hub, "tia", "meanwhile")
    assert hub.app.sandbox is not None
    await hub.app.sandbox.stop()  # MomoHub is gone for good
    assert await hub.app.sessions.recover(attempts=2, backoff=0.01) == 1
    c = await hub.client("tia")
    push = await c.wait_push(lambda f: f["data"]["content"].get("interrupted") is True)
    assert push["data"]["content"]["reply_to"] == mid


async def test_a_turn_that_never_reached_momohub_is_not_given_an_earlier_reply(
    bridge_factory,
) -> None:
    """A completion on the same conversation is not recorded as a hub message; a crashed turn
    after it must not take that completion's reply (or delete it) as its own."""
    hub = await bridge_factory(momohub={"enabled": True})
    await _first_turn(hub, "uma")
    c = await hub.client("uma")
    rid = await c.send(
        "openai",
        "completions",
        {"model": f"character:{MOMO}", "messages": [{"role": "user", "content": "completion"}]},
    )
    assert (await c.stream(rid))[-1]["message"] == "completed"
    chat = await hub.app.storage.conversations.get("uma", MOMO, "default")
    assert chat is not None and hub.app.momohub is not None
    before = await hub.app.momohub.list_messages(chat, limit=50)
    mid = await _crashed_turn(hub, "uma", "never sent upstream")
    assert await hub.app.sessions.recover(attempts=1, backoff=0) == 1
    push = await c.wait_push(lambda f: f["data"]["content"].get("interrupted") is True)
    assert push["data"]["content"]["reply_to"] == mid
    assert not [p for p in c.pushes("message") if _about(p) == "r-crash"]
    # Recalling it deletes nothing upstream: it never got there.
    ack = await c.request("onebot", "del_message", {"message_id": mid})
    assert ack["code"] == 0, ack
    assert [m.id for m in await hub.app.momohub.list_messages(chat, limit=50)] == [
        m.id for m in before
    ]


def _about(push: dict[str, Any]) -> Any:
    return push["data"]["content"].get("stream_request_id")


async def test_a_command_a_crash_left_unanswered_gets_a_notice_not_a_reply(
    bridge_factory,
) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    chat = await _first_turn(hub, "tim")
    row = await hub.app.storage.messages.add(
        "tim", MOMO, "in", text("/persona set be brief"), inflight=True, inflight_kind="command"
    )
    assert hub.app.momohub is not None
    before = await hub.app.momohub.list_messages(chat, limit=50)
    assert await hub.app.sessions.recover() == 1
    c = await hub.client("tim")
    push = await c.wait_push(lambda f: f["data"]["content"].get("interrupted") is True)
    assert push["data"]["content"]["reply_to"] == row.id
    assert (
        "command may not have been carried out"
        in push["data"]["content"]["message"][0]["data"]["text"]
    )
    assert await hub.app.storage.inflight.all() == []
    # Nothing was asked of MomoHub for it.
    assert await hub.app.momohub.list_messages(chat, limit=50) == before


async def test_an_answered_command_leaves_nothing_in_flight(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    c = await hub.client("uma")
    rid = await c.send("onebot", "message", text("/help"), id=MOMO)
    ack = await c.reply(rid)
    assert ack["code"] == 0
    await c.wait_push(lambda f: True)
    key = ConversationKey("uma", MOMO, "default")
    turn = hub.app.sessions.engine.find(key, ack["data"]["message_id"])
    if turn is not None:  # the record goes when the command's turn ends
        await turn.wait(10)
    assert await hub.app.storage.inflight.all() == []
