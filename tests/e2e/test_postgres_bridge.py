"""A real bridge on a real PostgreSQL (`[storage] url`), with the embedded MomoHub sandbox behind,
over loopback sockets: a hub user's message, its streamed reply and push, the stored history
across a restart, and readiness."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Bridge
from tests.e2e.test_health import get_json
from tests.e2e.test_momohub import MOMO, text
from tests.e2e.test_plugins import command
from tests.e2e.test_plugins_session import said
from tests.support.hub_client import eventually


@pytest.fixture
async def hub(bridge_factory, postgres_dsn: str) -> Bridge:
    return await bridge_factory(storage={"url": postgres_dsn}, momohub={"enabled": True})


async def test_a_bridge_on_postgresql_chats_and_keeps_the_history_across_a_restart(
    hub: Bridge, tmp_path: Path
) -> None:
    assert hub.app.storage.db.dialect == "postgresql"
    c = await hub.client("ann")
    other_tab = await hub.client("ann")
    first, reply = await said(c, "hello from postgres")
    assert reply == "Momo: you said hello from postgres"
    # Every tab of the user gets the finished reply as a push.
    push = await other_tab.wait_push(
        lambda f: f["data"]["content"]["message"] == text("Momo: you said hello from postgres")
    )
    assert push["data"]["id"] == MOMO and push["data"]["content"]["message_id"] > first

    status, body = await get_json(f"{hub.http}/readyz")
    assert status == 200, body
    assert body["components"]["database"]["state"] == "ok"

    stored = await hub.app.storage.messages.recent("ann", MOMO, "default", 10)
    assert [(m.direction, m.content) for m in stored] == [
        ("in", text("hello from postgres")),
        ("out", text("Momo: you said hello from postgres")),
    ]
    chat = await hub.app.storage.conversations.get("ann", MOMO, "default")
    assert chat is not None
    # Nothing went to a SQLite file.
    assert not (tmp_path / "bridge.db").exists()

    # A reply finished while the user is away waits in the outbox, on PostgreSQL too.
    await c.close()
    await other_tab.close()
    away = await hub.client("bob")
    rid = await away.send("onebot", "message", text("while I'm gone"), id=MOMO)
    assert (await away.reply(rid))["code"] == 0
    await away.close()

    async def waiting() -> bool:
        return await hub.app.storage.outbox.count("bob") > 0

    await eventually(waiting, timeout=15, what="bob's reply in the outbox")

    await hub.restart()

    status, body = await get_json(f"{hub.http}/readyz")
    assert status == 200 and body["components"]["database"]["state"] == "ok"
    c = await hub.client("ann")
    assert await command(c, "/history") == (
        "you: hello from postgres\nMomo: Momo: you said hello from postgres"
    )
    # The conversation goes on in the same MomoHub chat, with new ids after the old ones.
    again, reply = await said(c, "after the restart")
    assert reply == "Momo: you said after the restart" and again > first
    assert await hub.app.storage.conversations.get("ann", MOMO, "default") == chat
    bob = await hub.client("bob")
    push = await bob.wait_push()
    assert push["data"]["content"]["message"] == text("Momo: you said while I'm gone")
    assert push["data"]["content"]["stream_request_id"] == rid
