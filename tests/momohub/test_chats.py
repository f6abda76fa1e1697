"""ChatBook against the sandbox: a conversation's persona on the chats it gets, what happens
when MomoHub refuses or has lost a chat, and a forgotten chat's deletion upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from adapters.momohub.chats import DELETE_TRIES, ChatBook, message_ref, split_ref
from adapters.momohub.client import MomoHubClient
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError
from bridge.models import ConversationKey
from storage import Storage
from tests.momohub.conftest import MOMO_ID
from tests.momohub.sandbox_client import EMAIL, PASSWORD, Sandbox
from tests.support.hub_client import eventually

pytestmark = pytest.mark.timeout(20)

KEY = ConversationKey("ann", MOMO_ID, "default")
CONFIG_PUT = r"PUT /v1/chats/[^/]+/config"
CHAT_DELETE = r"DELETE /v1/chats/[^/]+"


@pytest.fixture
async def book(
    momo_sandbox: Sandbox, client: MomoHubClient, tmp_path: Path
) -> AsyncIterator[ChatBook]:
    storage = await Storage.open(str(tmp_path / "bridge.db"))
    book = ChatBook(MomoHubConfig(email=EMAIL, password=PASSWORD), client, storage)
    book.delete_backoff = 0.01
    try:
        yield book
    finally:
        await book.close()
        await storage.close()


async def chat_for(book: ChatBook, *, fresh: bool = False) -> str:
    return await book.chat_for(KEY.user_id, KEY.contact, KEY.thread, fresh=fresh)


async def test_a_new_chat_gets_the_persona_or_is_not_used(
    book: ChatBook, client: MomoHubClient, momo_sandbox: Sandbox
) -> None:
    await book.set_instructions(KEY, "Be a cat.")  # no chat yet: stored for the next one
    await momo_sandbox.control("POST", "faults", {"path": CONFIG_PUT, "status": 400, "count": 5})
    with pytest.raises(BridgeError):
        await chat_for(book)
    # The chat MomoHub made is not left behind, nor recorded.
    assert (await client.list_chats()).items == []
    assert await book.forget(KEY) is None
    await momo_sandbox.control("DELETE", "faults")
    chat = await chat_for(book)
    assert (await client.get_chat_config(chat)).systemPrompt == "Be a cat."
    assert await chat_for(book) == chat  # found again, not created again


async def test_setting_the_persona_when_momohub_refuses_or_lost_the_chat(
    book: ChatBook, client: MomoHubClient, momo_sandbox: Sandbox
) -> None:
    chat = await chat_for(book)
    await book.set_instructions(KEY, "Be a dog.")
    assert (await client.get_chat_config(chat)).systemPrompt == "Be a dog."
    # Refused: nothing changes, here or there.
    await momo_sandbox.control("POST", "faults", {"path": CONFIG_PUT, "status": 400, "count": 5})
    with pytest.raises(BridgeError):
        await book.set_instructions(KEY, "Be a bird.")
    await momo_sandbox.control("DELETE", "faults")
    assert await book.instructions(KEY) == "Be a dog."
    # Lost on MomoHub's side: stored, and the chat that replaces it gets it.
    await client.delete_chat(chat)
    await book.set_instructions(KEY, "Be a fish.")
    assert await book.instructions(KEY) == "Be a fish."
    new = await chat_for(book, fresh=True)
    assert new != chat
    assert (await client.get_chat_config(new)).systemPrompt == "Be a fish."
    # Forgotten (a reset): the next chat is new, and gets it too.
    assert await book.forget(KEY) == new
    newer = await chat_for(book)
    assert newer != new
    assert (await client.get_chat_config(newer)).systemPrompt == "Be a fish."
    await book.set_instructions(KEY, None)
    assert await book.instructions(KEY) is None
    assert (await client.get_chat_config(newer)).systemPrompt is None


async def chats(client: MomoHubClient) -> set[str]:
    return {c.id for c in (await client.list_chats(limit=100)).items}


def logged(logs: list[dict[str, object]], event: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == event]


async def test_a_forgotten_chat_is_deleted_upstream_in_the_background(
    book: ChatBook, client: MomoHubClient, momo_sandbox: Sandbox
) -> None:
    chat = await chat_for(book)
    # Failures that may pass are tried again.
    await momo_sandbox.control("POST", "faults", {"path": CHAT_DELETE, "status": 503})
    with structlog.testing.capture_logs() as logs:
        assert await book.forget(KEY) == chat
        await eventually(lambda: _without(client, chat), what="the chat to be deleted")
    assert [e["attempt"] for e in logged(logs, "momohub.chat_delete_retry")] == [1]
    assert logged(logs, "momohub.chat_deleted") and not logged(logs, "momohub.chat_orphaned")
    # One already gone (deleted on MomoHub's side) is fine as it is.
    again = await chat_for(book)
    await client.delete_chat(again)
    with structlog.testing.capture_logs() as logs:
        assert await book.forget(KEY) == again
        await eventually(lambda: logged(logs, "momohub.chat_already_gone"), what="the 404")
    assert not logged(logs, "momohub.chat_orphaned")
    assert await book.forget(KEY) is None  # nothing left to forget, nothing to delete


@pytest.mark.parametrize(("status", "tries"), [(500, DELETE_TRIES), (403, 1)])
async def test_a_chat_that_cannot_be_deleted_is_logged_by_id(
    book: ChatBook, client: MomoHubClient, momo_sandbox: Sandbox, status: int, tries: int
) -> None:
    chat = await chat_for(book)
    fault = {"path": CHAT_DELETE, "status": status, "count": DELETE_TRIES}
    await momo_sandbox.control("POST", "faults", fault)
    with structlog.testing.capture_logs() as logs:
        await book.forget(KEY)
        await eventually(lambda: logged(logs, "momohub.chat_orphaned"), what="the orphan")
    [orphan] = logged(logs, "momohub.chat_orphaned")
    assert orphan["chat"] == chat and orphan["attempts"] == tries
    assert f"HTTP {status}" in str(orphan["reason"])
    assert chat in await chats(client)


async def test_close_stops_a_stalled_delete_and_logs_the_orphan(
    book: ChatBook, client: MomoHubClient, momo_sandbox: Sandbox
) -> None:
    chat = await chat_for(book)
    await momo_sandbox.control("POST", "faults", {"path": CHAT_DELETE, "stall": 30})
    with structlog.testing.capture_logs() as logs:
        await book.forget(KEY)
        await eventually(lambda: _delete_asked(momo_sandbox), what="the delete to reach MomoHub")
        await book.close()
    [orphan] = logged(logs, "momohub.chat_orphaned")
    assert orphan["chat"] == chat and "stopped" in str(orphan["reason"])


def test_refs_name_their_chat() -> None:
    assert message_ref("c1", "m1") == "c1/m1"
    assert message_ref("c1", None) is None
    assert split_ref("c1/m1") == ("c1", "m1")
    assert split_ref("m1") == (None, "m1")  # recorded before refs named their chat


async def _without(client: MomoHubClient, chat: str) -> bool:
    return chat not in await chats(client)


async def _delete_asked(sandbox: Sandbox) -> bool:
    stats = await sandbox.control("GET", "stats")
    return bool(stats["requests"].get("DELETE /v1/chats/{chatId}"))
