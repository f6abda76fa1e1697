"""`/reset` from a hub client deletes the conversation's old MomoHub chat, over real sockets with
the MomoHub sandbox behind: best effort, in the background (the reset answers at once, even when
MomoHub fails or stalls on the delete), and a recall of a message from before the reset still
succeeds although its upstream copy went with the chat."""

from __future__ import annotations

import time
from typing import Any

import pytest
import structlog

from adapters.momohub.chats import DELETE_TRIES
from tests.conftest import Bridge
from tests.e2e.test_momohub import MOMO, Sandbox, text
from tests.e2e.test_plugins import command
from tests.e2e.test_plugins_session import chat_of, said
from tests.support.hub_client import HubClient, eventually

pytestmark = pytest.mark.timeout(30)

DONE = "Done: your next message starts a fresh conversation"
REQUEST_TIMEOUT = 3.0


@pytest.fixture
async def hub(bridge_factory: Any) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


async def account_chats(bridge: Bridge) -> set[str]:
    """The chats MomoHub holds for the bridge's account."""
    momohub = bridge.app.momohub
    assert momohub is not None
    return {c.id for c in (await momohub.list_chats(limit=100)).items}


async def recall(c: HubClient, tab: HubClient, message_id: int) -> set[int]:
    """Recall a message from ``c``; returns what another tab of the user was told was
    recalled (the message and its reply), once it was told."""
    before = len(tab.pushes("del_msg"))
    f = await c.request(
        "onebot", "del_message", {"id": MOMO, "content": {"message_id": message_id}}
    )
    assert f["code"] == 0, f
    await tab.wait_for(lambda _: len(tab.pushes("del_msg")) >= before + 2)
    return {p["data"]["content"]["message_id"] for p in tab.pushes("del_msg")[before:]}


async def test_reset_deletes_the_old_chat_and_recall_from_before_still_works(hub: Bridge) -> None:
    c, tab = await hub.client("ann"), await hub.client("ann")
    first_id, _ = await said(c, "before the reset")
    first_reply = c.pushes("message")[-1]["data"]["content"]["message_id"]
    old = await chat_of(hub, "ann")
    assert old is not None and await account_chats(hub) == {old}

    assert (await command(c, "/reset")).startswith(DONE)
    await eventually(lambda: _gone(hub, old), what="the old chat to be deleted upstream")
    await said(c, "after the reset")
    new = await chat_of(hub, "ann")
    assert new not in (None, old) and await account_chats(hub) == {new}

    # Its upstream copy went with the old chat (MomoHub answers 404): recalled all the same,
    # with its reply, and the new chat is left alone.
    with structlog.testing.capture_logs() as logs:
        assert await recall(c, tab, first_id) == {first_id, first_reply}
    events = [e["event"] for e in logs]
    assert events.count("momohub.recall_already_gone") == 2, logs
    assert "recall.upstream_failed" not in events, logs
    momohub = hub.app.momohub
    assert momohub is not None and new is not None
    assert [m.text for m in await momohub.list_messages(new)] == [
        "after the reset",
        "Momo: you said after the reset",
    ]
    # Resets in a row never grow the account's chats: one at most, the one in use.
    for _ in range(3):
        await command(c, "/reset")
        await said(c, "again")
    current = await chat_of(hub, "ann")
    await eventually(
        lambda: _only(hub, current), what="every chat but the current one to be deleted"
    )


async def test_reset_waits_for_the_reply_streaming_in_the_old_chat(hub: Bridge) -> None:
    c, tab = await hub.client("bea"), await hub.client("bea")
    rid = await c.send("onebot", "message", text("a slow one /slow"), id=MOMO)
    ack = await c.reply(rid)
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    old = await chat_of(hub, "bea")
    assert old is not None
    # Sent while the reply streams: the reset is a turn queued behind it.
    reset = await c.send("onebot", "message", text("/reset"), id=MOMO)
    assert (await c.reply(reset))["code"] == 0
    frames = await c.stream(rid)
    assert frames[-1]["message"] == "completed", frames[-1]
    assert "".join(f["data"]["chunk"] for f in frames[1:-1]) == "Momo: you said a slow one /slow"
    await c.wait_for(lambda _: len(c.pushes("message")) >= 2)
    pushed = [p["data"]["content"] for p in c.pushes("message")]
    # The reply (whole, stored with its ids) came before the reset's answer.
    assert pushed[0].get("stream_request_id") == rid
    assert pushed[1]["message"][0]["data"]["text"].startswith(DONE)
    await eventually(lambda: _gone(hub, old), what="the old chat to be deleted upstream")
    with structlog.testing.capture_logs() as logs:
        assert len(await recall(c, tab, ack["data"]["message_id"])) == 2
    events = [e["event"] for e in logs]
    assert events.count("momohub.recall_already_gone") == 2, logs
    assert "recall.upstream_failed" not in events, logs


@pytest.mark.parametrize("failure", [{"status": 500}, {"status": 403}])
async def test_reset_answers_at_once_when_momohub_refuses_the_delete(
    bridge_factory: Any, monkeypatch: pytest.MonkeyPatch, failure: dict[str, Any]
) -> None:
    monkeypatch.setattr("adapters.momohub.chats.DELETE_BACKOFF", 0.01)
    hub = await bridge_factory(momohub={"enabled": True})
    c, tab = await hub.client("cid"), await hub.client("cid")
    first_id, _ = await said(c, "hello")
    old = await chat_of(hub, "cid")
    assert old is not None
    sandbox = Sandbox(hub)
    await sandbox.fault(path=f"DELETE /v1/chats/{old}", count=10, **failure)
    with structlog.testing.capture_logs() as logs:
        assert (await command(c, "/reset")).startswith(DONE)
        orphaned = await _logged(logs, "momohub.chat_orphaned")
    # A 500 may pass, so it is tried again; a 403 never will.
    tries = DELETE_TRIES if failure["status"] >= 500 else 1
    assert orphaned["chat"] == old and orphaned["attempts"] == tries, orphaned
    assert (await sandbox.stats())["requests"]["DELETE /v1/chats/{chatId}"] == tries
    # Left behind upstream, but the conversation goes on in a new chat, and a recall from
    # before the reset reaches the old one.
    await said(c, "still here")
    new = await chat_of(hub, "cid")
    assert new not in (None, old) and await account_chats(hub) == {old, new}
    assert len(await recall(c, tab, first_id)) == 2
    momohub = hub.app.momohub
    assert momohub is not None and await momohub.list_messages(old) == []


async def test_reset_answers_at_once_while_the_delete_stalls(
    bridge_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stalled delete runs into the client's request timeout, and the next try deletes.
    monkeypatch.setattr("adapters.momohub.chats.DELETE_BACKOFF", 0.01)
    hub = await bridge_factory(momohub={"enabled": True, "request_timeout": REQUEST_TIMEOUT})
    c = await hub.client("dan")
    await said(c, "hello")
    old = await chat_of(hub, "dan")
    assert old is not None
    sandbox = Sandbox(hub)
    await sandbox.fault(path=f"DELETE /v1/chats/{old}", stall=20)
    started = time.monotonic()
    assert (await command(c, "/reset")).startswith(DONE)
    # Answered before even one stalled try could have ended.
    assert time.monotonic() - started < REQUEST_TIMEOUT
    assert old in await account_chats(hub)
    await eventually(lambda: _gone(hub, old), what="the retried delete")
    assert (await sandbox.stats())["requests"]["DELETE /v1/chats/{chatId}"] == 2


async def _gone(bridge: Bridge, chat: str) -> bool:
    return chat not in await account_chats(bridge)


async def _only(bridge: Bridge, chat: str | None) -> bool:
    return await account_chats(bridge) == {chat}


async def _logged(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The first log entry of ``event``, once it is logged (by a task of the bridge)."""
    await eventually(lambda: any(e["event"] == event for e in logs), what=event)
    return next(e for e in logs if e["event"] == event)
