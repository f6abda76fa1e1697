"""Where a message or a completion goes: contacts and models are served by registered targets.

The core never imports an adapter: targets implement these protocols and the composition root
(bridge/app.py) registers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    ChatMessage,
    CompletionRequest,
    Contact,
    ConversationKey,
    ModelGroup,
    RecallRequest,
    ReplyEvent,
    UserRef,
)


class ContactTarget(Protocol):
    """Serves `onebot/message` to some contacts (a bot framework account, AI characters)."""

    def owns(self, contact: str) -> bool: ...

    def canonical(self, contact: str) -> str:
        """The one spelling of a contact used for storage and pushes (aliases map onto it)."""
        ...

    def contacts(self, user: UserRef) -> list[Contact]:
        """From a cache: login must never wait on an upstream."""
        ...

    async def check_available(self, contact: str) -> None:
        """Raise BridgeError (NOT_FOUND, UNAVAILABLE) when the contact cannot take a message now.
        Called before the message is stored, so a refusal leaves nothing half-delivered."""
        ...

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent] | None:
        """Hand over a stored user message. A streamed reply is returned as events; a target
        whose replies come later on their own (a bot framework) returns None and pushes.
        A forwarded bundle arrives as one message whose only segment is `nodes`."""
        ...

    async def recall(self, request: RecallRequest) -> None:
        """Remove a stored message (the user's, or a reply when ``outgoing``) from the target."""
        ...

    async def forward(
        self, message: ChatMessage, items: list[ChatMessage]
    ) -> AsyncIterator[ReplyEvent] | None: ...


class SearchableTarget(Protocol):
    """Optional for a ContactTarget: finds contacts upstream beyond those already listed (a
    character catalogue's search). Callers test for it with ``getattr``."""

    async def search_contacts(self, user: UserRef, query: str, limit: int = 20) -> list[Contact]:
        """Raise BridgeError when the upstream cannot answer (callers fall back to `contacts`)."""
        ...


class ContextTarget(Protocol):
    """Optional methods of a contact target whose conversations keep an upstream context
    (a MomoHub chat). Callers look them up with ``getattr`` and say "not supported" without
    them; a BridgeError's reason is for the user."""

    async def reset_context(self, key: ConversationKey, *, at: int = 0) -> None:
        """The conversation's next message starts a fresh upstream context; its instructions
        stay. ``at`` is the stored message the reset was asked by (0: none): messages after it
        belong to the fresh context."""
        ...

    async def get_instructions(self, key: ConversationKey) -> str | None:
        """The conversation's own extra instructions (a persona), None if it has none."""
        ...

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        """Set (None: remove) the conversation's instructions: stored, applied to the upstream
        context now and to any context it gets later."""
        ...


class Binder(Protocol):
    """An edge whose conversations choose what they talk to (a QQ chat: `/char use`), where a
    hub user picks a contact instead."""

    def binds(self, key: ConversationKey) -> bool: ...

    async def bind(self, key: ConversationKey, contact: str) -> None:
        """From the conversation's next message on, talk to ``contact`` (canonical id)."""
        ...


class ModelTarget(Protocol):
    """Serves `openai/models` and `openai/completions` for some models."""

    def model_groups(self) -> list[ModelGroup]:
        """From a cache."""
        ...

    def owns_model(self, model: str) -> bool: ...

    def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]: ...


class Router:
    def __init__(self) -> None:
        self._contact_targets: list[ContactTarget] = []
        self._model_targets: list[ModelTarget] = []
        self._binders: list[Binder] = []

    def add_binder(self, binder: Binder) -> None:
        self._binders.append(binder)

    def binder_for(self, key: ConversationKey) -> Binder | None:
        """The edge that lets this conversation choose its contact, if any."""
        return next((b for b in self._binders if b.binds(key)), None)

    def add_contact_target(self, target: ContactTarget) -> None:
        self._contact_targets.append(target)

    def add_model_target(self, target: ModelTarget) -> None:
        self._model_targets.append(target)

    @property
    def has_models(self) -> bool:
        return bool(self._model_targets)

    def contacts(self, user: UserRef) -> list[Contact]:
        out: list[Contact] = []
        for t in self._contact_targets:
            out.extend(t.contacts(user))
        return out

    def contact_name(self, user: UserRef, contact: str) -> str:
        """The contact's display name as ``user`` sees it (its id if unknown)."""
        for c in self.contacts(user):
            if c.id == contact:
                return c.name or contact
        return contact

    def model_groups(self) -> list[ModelGroup]:
        out: list[ModelGroup] = []
        for t in self._model_targets:
            out.extend(t.model_groups())
        return out

    def contact_target(self, contact: str) -> ContactTarget:
        for t in self._contact_targets:
            if t.owns(contact):
                return t
        raise BridgeError(ErrorCode.NOT_FOUND, f"no contact {contact!r} on this bridge")

    def model_target(self, model: str) -> ModelTarget:
        if not self._model_targets:
            raise BridgeError(
                ErrorCode.UNAVAILABLE,
                "no model provider is configured (add [[openai.providers]], [momohub] or [momoai])",
            )
        for t in self._model_targets:
            if t.owns_model(model):
                return t
        raise BridgeError(ErrorCode.NOT_FOUND, f"unknown model {model!r}")
