"""A reply left in flight by a crash: recovered from MomoHub when it finished there, otherwise
answered with an explicit interrupted notice (never silence)."""

from __future__ import annotations

from typing import Any

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
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
