"""`DELETE /chats/{id}` in the sandbox, as MomoHub's docs have it: 204 for the chat's owner, 403
for anyone else, 404 for a chat that is not there; the chat goes with all its messages and its
config, for good (also across a restart of a persistent sandbox)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.momohub.conftest import SandboxFactory, SandboxHub

pytestmark = pytest.mark.timeout(20)

NO_SUCH_CHAT = "00000000-0000-4000-8000-000000000000"


async def test_only_the_owner_deletes_and_everything_of_the_chat_goes(sandbox: SandboxHub) -> None:
    alice, bob = await sandbox.account(), await sandbox.account()
    chat, kept = await sandbox.chat(alice), await sandbox.chat(alice)
    path = f"/chats/{chat}"
    await sandbox.call("PUT", f"{path}/config", token=alice, json={"systemPrompt": "Be kind."})
    for c in (chat, kept):
        assert (await sandbox.send(alice, c, "hello"))[0] == 200
    message = (await sandbox.messages(alice, chat))[0]["id"]

    status, body, _ = await sandbox.call("DELETE", path)
    assert status == 401 and body == "Unauthorized"
    status, body, _ = await sandbox.call("DELETE", path, token=bob)
    assert status == 403 and body["code"] == "AUTHORIZATION_FAILED"
    assert len(await sandbox.messages(alice, chat)) == 2  # refused: nothing was touched
    status, body, _ = await sandbox.call("DELETE", "/chats/not-a-uuid", token=alice)
    assert status == 400 and body["errors"] == {"chatId": "must be a UUID"}
    status, body, _ = await sandbox.call("DELETE", f"/chats/{NO_SUCH_CHAT}", token=alice)
    assert status == 404 and body["code"] == "NOT_FOUND"

    status, body, resp = await sandbox.call("DELETE", path, token=alice)
    assert status == 204 and body is None and resp.content_length in (0, None)
    # Gone with its messages and config: every route under it is a 404 now.
    for method, sub in (
        ("GET", ""),
        ("GET", "/messages"),
        ("DELETE", f"/messages/{message}"),
        ("DELETE", "/messages"),
        ("GET", "/config"),
        ("DELETE", ""),
    ):
        status, body, _ = await sandbox.call(method, path + sub, token=alice)
        assert (status, body["code"]) == (404, "NOT_FOUND"), (method, sub)
    status, raw = await sandbox.send(alice, chat, "still there?")
    assert status == 200 and SandboxHub.events(raw) == [("error", "chat not found")]
    _, body, _ = await sandbox.call("GET", "/chats", token=alice)
    assert [c["id"] for c in body["data"]["items"]] == [kept]
    assert len(await sandbox.messages(alice, kept)) == 2


async def test_a_chat_deleted_mid_reply_keeps_no_reply(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    async with sandbox.open_stream(token, chat, "take your time /slow") as resp:
        seen = b""
        while b"event: delta" not in seen:
            seen += await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert (await sandbox.call("DELETE", f"/chats/{chat}", token=token))[0] == 204
        rest = await asyncio.wait_for(resp.read(), 10)
    # The stream ends as a failure, never `done`: there is no chat to store the reply in.
    events = SandboxHub.events(seen + rest)
    assert events[-1] == ("error", "chat not found (deleted while replying)")
    assert "done" not in [name for name, _ in events]
    assert (await sandbox.call("GET", f"/chats/{chat}/messages", token=token))[0] == 404
    assert not sandbox.server.state.busy


async def test_a_deleted_chat_stays_deleted_after_a_restart(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    db = str(tmp_path / "sandbox.db")
    hub = await sandbox_factory(database=db)
    token = await hub.account()
    gone, kept = await hub.chat(token), await hub.chat(token)
    for chat in (gone, kept):
        await hub.send(token, chat, "remember me")
    assert (await hub.call("DELETE", f"/chats/{gone}", token=token))[0] == 204
    await hub.server.stop()

    again = await sandbox_factory(database=db)
    assert (await again.call("GET", f"/chats/{gone}", token=token))[0] == 404
    assert gone not in again.server.state.store.messages
    assert len(await again.messages(token, kept)) == 2
