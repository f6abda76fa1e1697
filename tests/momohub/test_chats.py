"""ChatBook against the sandbox: a conversation's persona on the chats it gets, and what happens
when MomoHub refuses or has lost a chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.momohub.chats import ChatBook
from adapters.momohub.client import MomoHubClient
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError
from bridge.models import ConversationKey
from storage import Storage
from tests.momohub.conftest import MOMO_ID
from tests.momohub.sandbox_client import EMAIL, PASSWORD, Sandbox

pytestmark = pytest.mark.timeout(20)

KEY = ConversationKey("ann", MOMO_ID, "default")
CONFIG_PUT = r"PUT /v1/chats/[^/]+/config"


@pytest.fixture
async def book(
    momo_sandbox: Sandbox, client: MomoHubClient, tmp_path: Path
) -> AsyncIterator[ChatBook]:
    storage = await Storage.open(str(tmp_path / "bridge.db"))
    try:
        yield ChatBook(MomoHubConfig(email=EMAIL, password=PASSWORD), client, storage)
    finally:
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
