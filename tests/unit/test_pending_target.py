"""`PendingTarget`: an upstream's place in the router while its adapter loads after the hub
listens: empty lists, sends refused as starting, recalls and recoveries held until it is in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    CompletionRequest,
    Contact,
    ConversationKey,
    Done,
    Failed,
    ModelGroup,
    RecallRequest,
    ReplyEvent,
    UserRef,
)
from bridge.pending_target import PendingTarget
from bridge.router import Router

USER = UserRef("u1")
WAIT = 5.0


class FakeTarget:
    """Owns the contacts and models it is given; records recalls and recoveries."""

    replies_need_message_id = False

    def __init__(
        self, name: str, contacts: set[str], models: frozenset[str] | set[str] = frozenset()
    ) -> None:
        self.name = name
        self._contacts = contacts
        self._models = models
        self.recalled: list[int] = []
        self.recovered: list[ConversationKey] = []

    def owns(self, contact: str) -> bool:
        return contact in self._contacts

    def canonical(self, contact: str) -> str:
        return contact.lower()

    def contacts(self, user: UserRef) -> list[Contact]:
        return [Contact(c, "character", c) for c in sorted(self._contacts)]

    async def check_available(self, contact: str) -> None:
        return None

    async def recall(self, request: RecallRequest) -> None:
        self.recalled.append(request.message_id)

    async def recover(self, key: ConversationKey) -> str:
        self.recovered.append(key)
        return self.name

    def model_groups(self) -> list[ModelGroup]:
        return [ModelGroup(self.name, sorted(self._models))]

    def owns_model(self, model: str) -> bool:
        return model in self._models

    async def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        yield Done(text=f"{self.name} answers")


def recall(contact: str, message_id: int = 7) -> RecallRequest:
    return RecallRequest(
        user=USER,
        conversation=ConversationKey(USER.id, contact, "default"),
        message_id=message_id,
        segments=[],
        outgoing=False,
        refs=[],
    )


def completion(model: str) -> CompletionRequest:
    return CompletionRequest(user=USER, model=model, messages=[])


async def events(stream: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    return [e async for e in stream]


def places(n: int) -> tuple[Router, list[PendingTarget]]:
    router = Router()
    held = [PendingTarget(router) for _ in range(n)]
    for p in held:
        router.add_contact_target(p)
        router.add_model_target(p)
    return router, held


async def test_pending_lists_nothing_and_refuses_as_starting() -> None:
    router, (place,) = places(1)
    assert place.pending
    assert router.contacts(USER) == [] and router.model_groups() == []
    # It claims what it is asked about (the real owner is not known yet)...
    assert router.contact_target("Momo") is place and router.model_target("gpt") is place
    assert place.canonical("Momo") == "Momo"
    # ...and refuses it as starting.
    with pytest.raises(BridgeError) as e:
        await place.check_available("Momo")
    assert e.value.code == ErrorCode.UNAVAILABLE and "starting" in e.value.reason
    [failed] = await events(place.complete(completion("gpt")))
    assert isinstance(failed, Failed) and failed.error == ErrorCode.UNAVAILABLE
    # Optional attributes are the target's: none yet.
    assert getattr(place, "replies_need_message_id", True) is True
    assert getattr(place, "conversation_key", None) is None


async def test_installed_target_takes_every_call() -> None:
    router, (place,) = places(1)
    target = FakeTarget("momohub", {"Momo"}, {"character:1"})
    place.install(target)
    assert not place.pending
    assert [c.id for c in router.contacts(USER)] == ["Momo"]
    assert router.model_groups() == [ModelGroup("momohub", ["character:1"])]
    assert place.owns("Momo") and not place.owns("Kuro")
    assert place.canonical("Momo") == "momo"
    await place.check_available("Momo")
    assert place.replies_need_message_id is False
    [done] = await events(place.complete(completion("character:1")))
    assert done == Done(text="momohub answers")
    await place.recall(recall("Momo"))
    assert target.recalled == [7]
    with pytest.raises(BridgeError) as e:
        router.contact_target("Kuro")
    assert e.value.code == ErrorCode.NOT_FOUND


async def test_recall_and_recovery_wait_for_the_target_then_reach_the_real_owner() -> None:
    router, (first, second) = places(2)
    momohub = FakeTarget("momohub", {"Momo"})
    frameworks = FakeTarget("frameworks", {"10001"})
    # Both asked while nothing is in: the first place claims them and holds the calls.
    recalled = asyncio.create_task(router.contact_target("10001").recall(recall("10001")))
    recovered = asyncio.create_task(
        router.contact_target("Momo").recover(ConversationKey("u1", "Momo", "default"))
    )
    await asyncio.sleep(0)
    assert not recalled.done() and not recovered.done()
    first.install(momohub)
    async with asyncio.timeout(WAIT):
        assert await recovered == "momohub"
    # The framework contact belongs to the second place: held until that one is in too.
    await asyncio.sleep(0)
    assert not recalled.done()
    second.install(frameworks)
    async with asyncio.timeout(WAIT):
        await recalled
    assert frameworks.recalled == [7] and momohub.recalled == []
    assert momohub.recovered == [ConversationKey("u1", "Momo", "default")]


async def test_a_place_whose_start_failed_claims_nothing() -> None:
    router, (first, second) = places(2)
    second.install(FakeTarget("openai", set(), {"gpt"}))
    first.settle()
    assert not first.owns("Momo") and not first.owns_model("gpt")
    assert router.model_target("gpt") is second
    # A completion it claimed while pending goes to the real owner, or fails as unknown.
    [done] = await events(first.complete(completion("gpt")))
    assert done == Done(text="openai answers")
    [failed] = await events(first.complete(completion("nope")))
    assert isinstance(failed, Failed) and failed.error == ErrorCode.NOT_FOUND
    assert await first.recover(ConversationKey("u1", "Momo", "default")) is None
    await first.recall(recall("Momo"))  # nobody to tell: nothing happens


async def test_a_model_contact_is_starting_while_its_provider_loads() -> None:
    from bridge.model_chats import ModelChats

    router, (place,) = places(1)
    router.add_model_target(place)
    chats = ModelChats(router, None, history_turns=5, history_chars=1000)  # type: ignore[arg-type]
    with pytest.raises(BridgeError) as e:
        await chats.check_available("model:fake/echo")
    # Not "unknown model": the provider's list is simply not in yet.
    assert e.value.code == ErrorCode.UNAVAILABLE and "starting" in e.value.reason
