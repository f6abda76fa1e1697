"""An upstream's place in the router, held while its adapter loads (see `PendingTarget`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    ChatMessage,
    CompletionRequest,
    Contact,
    ConversationKey,
    Failed,
    ModelGroup,
    RecallRequest,
    ReplyEvent,
    UserRef,
)
from bridge.router import Router

# How long a recall or a recovery waits for a target still loading.
PENDING_WAIT = 30.0
STARTING_REASON = "the bridge is starting; try again in a moment"


async def _failing(event: Failed) -> AsyncIterator[ReplyEvent]:
    yield event


class PendingTarget:
    """Holds an upstream target's place in the router while its adapter loads.

    The hub listens before the upstream adapters are imported and started (that takes a while
    and must never keep a login waiting), but the router's order decides which target owns a
    contact or a model, so each upstream's place is taken at once by one of these. Until its
    target is installed it lists no contacts and no models, claims whatever it is asked about,
    and refuses sends and completions as starting (UNAVAILABLE): nothing is queued for an
    upstream that is not there yet. A recall or a crash recovery, which must reach the upstream,
    waits for it instead. Once installed, every call goes to the target.
    """

    def __init__(self, router: Router) -> None:
        self._router = router
        self._target: Any = None
        self._settled = asyncio.Event()

    @property
    def target(self) -> Any:
        return self._target

    @property
    def pending(self) -> bool:
        return not self._settled.is_set()

    def install(self, target: Any) -> None:
        self._target = target
        self._settled.set()

    def settle(self) -> None:
        """No target will come (its start-up failed): stop claiming anything."""
        self._settled.set()

    def __getattr__(self, name: str) -> Any:
        # The target's optional attributes (replies_stream, conversation_key, ...), once it is in.
        target = self.__dict__.get("_target")
        if target is None:
            raise AttributeError(name)
        return getattr(target, name)

    async def _owner(self, contact: str) -> Any:
        """The target that owns ``contact`` once this place is settled (None: nobody)."""
        if self.pending:
            try:
                async with asyncio.timeout(PENDING_WAIT):
                    await self._settled.wait()
            except TimeoutError:
                raise BridgeError(ErrorCode.UNAVAILABLE, STARTING_REASON) from None
        if self._target is not None and self._target.owns(contact):
            return self._target
        # Claimed while pending: whoever really owns it comes later in the router.
        try:
            owner = self._router.contact_target(contact)
        except BridgeError:
            return None
        return None if owner is self else owner

    # ----- ContactTarget --------------------------------------------------------------------------

    def owns(self, contact: str) -> bool:
        if self._target is not None:
            return bool(self._target.owns(contact))
        return self.pending

    def canonical(self, contact: str) -> str:
        return contact if self._target is None else str(self._target.canonical(contact))

    def contacts(self, user: UserRef) -> list[Contact]:
        return [] if self._target is None else self._target.contacts(user)

    async def check_available(self, contact: str) -> None:
        if self._target is None:
            raise BridgeError(ErrorCode.UNAVAILABLE, STARTING_REASON)
        await self._target.check_available(contact)

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent] | None:
        # Only reached once check_available passed, so the target is in.
        result: AsyncIterator[ReplyEvent] | None = await self._target.deliver(message)
        return result

    async def forward(
        self, message: ChatMessage, items: list[ChatMessage]
    ) -> AsyncIterator[ReplyEvent] | None:
        result: AsyncIterator[ReplyEvent] | None = await self._target.forward(message, items)
        return result

    async def recall(self, request: RecallRequest) -> None:
        owner = await self._owner(request.conversation.contact)
        if owner is not None:
            await owner.recall(request)

    async def recover(self, key: ConversationKey) -> Any:
        owner = await self._owner(key.contact)
        recover = getattr(owner, "recover", None)
        return await recover(key) if recover is not None else None

    # ----- ContextTarget (optional; commands such as /reset wait for the target like a recall) --

    async def _context_method(self, key: ConversationKey, name: str) -> Any:
        method = getattr(await self._owner(key.contact), name, None)
        if method is None:
            raise BridgeError(ErrorCode.NOT_FOUND, "not supported in this conversation")
        return method

    async def reset_context(self, key: ConversationKey, *, at: int = 0) -> None:
        await (await self._context_method(key, "reset_context"))(key, at=at)

    async def get_instructions(self, key: ConversationKey) -> str | None:
        text: str | None = await (await self._context_method(key, "get_instructions"))(key)
        return text

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        await (await self._context_method(key, "set_instructions"))(key, text)

    # ----- ModelTarget ----------------------------------------------------------------------------

    def model_groups(self) -> list[ModelGroup]:
        return [] if self._target is None else self._target.model_groups()

    def owns_model(self, model: str) -> bool:
        if self._target is not None:
            return bool(self._target.owns_model(model))
        return self.pending

    def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        target = self._target
        if target is None or not target.owns_model(request.model):
            if self.pending:
                return _failing(Failed(ErrorCode.UNAVAILABLE, STARTING_REASON))
            try:
                target = self._router.model_target(request.model)
            except BridgeError as e:
                return _failing(Failed(e.code, e.reason))
            if target is self:
                return _failing(Failed(ErrorCode.NOT_FOUND, f"unknown model {request.model!r}"))
        result: AsyncIterator[ReplyEvent] = target.complete(request)
        return result
