"""Conversations with a model (contact ``model:<model>``) whose history the bridge keeps.

A model remembers nothing between requests, so each turn sends the conversation's own
instructions (its persona, as a system message) and what was said since its last reset, taken
from storage and trimmed to the newest ``[openai] history_turns`` turns and
``history_chars`` characters. A reset stores where the fresh context starts; the history stays
in storage (``/history`` still shows it). Command lines, the bridge's answers and held messages
never reach the model: only messages of kind 'message' are context.

The same contact spelling names the hub's ``openai/completions`` conversations (the client sends
the history there), so ``/persona`` set in one applies to the other (see bridge.completions).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from bridge.errors import BridgeError, ErrorCode
from bridge.models import (
    JSON,
    ChatMessage,
    CompletionRequest,
    Contact,
    ConversationKey,
    RecallRequest,
    ReplyEvent,
    UserRef,
)
from bridge.pending_target import STARTING_REASON
from bridge.router import Router
from storage import Storage

PREFIX = "model:"
MODEL_RE = re.compile(r"[A-Za-z0-9._:/@+-]{1,128}")
# Where a reset stores the fresh context's start (in `conversations`, as a MomoHub chat id is).
RESET_MARK = "after:"


def _k(key: ConversationKey) -> tuple[str, str, str]:
    return key.user_id, key.contact, key.thread


def model_of(contact: str) -> str:
    """The model a ``model:<model>`` contact talks to."""
    return contact[len(PREFIX) :]


def message_text(content: list[dict[str, Any]]) -> str:
    """A stored message as the text a model reads: images and the like as placeholders."""
    parts = []
    for seg in content:
        data = seg.get("data") or {}
        kind = seg.get("type")
        if kind == "text":
            parts.append(str(data.get("text", "")))
        elif kind == "image":
            url = data.get("url") or data.get("file") or ""
            parts.append(
                f"[image: {url}]" if isinstance(url, str) and url.startswith("http") else "[image]"
            )
        elif kind == "nodes":
            for node in data.get("messages") or []:
                if isinstance(node, dict):
                    inner = node.get("message") or node.get("content") or []
                    if isinstance(inner, list):
                        parts.append("> " + message_text(inner).replace("\n", "\n> ") + "\n")
        else:
            parts.append(f"[{kind}]")
    return "".join(parts)


def trimmed(messages: list[JSON], max_chars: int) -> list[JSON]:
    """The newest messages whose text fits in ``max_chars`` (the newest always kept)."""
    total = 0
    keep = len(messages)
    for i in range(len(messages) - 1, -1, -1):
        total += len(str(messages[i].get("content", "")))
        if total > max_chars and i < len(messages) - 1:
            break
        keep = i
    return messages[keep:]


class ModelChats:
    """A contact target (and a context target: reset, instructions) for ``model:<model>``."""

    # The `target` label of its replies in /metrics.
    metrics_kind = "model_chat"

    replies_stream = True
    replies_need_message_id = True  # the history is read up to the turn's own message

    def __init__(
        self,
        router: Router,
        storage: Storage,
        *,
        history_turns: int,
        history_chars: int,
        turns_by_owner: dict[str, int] | None = None,
    ) -> None:
        self._router = router
        self._storage = storage
        self._turns = history_turns
        self._chars = history_chars
        # Conversations whose owner id starts with a key keep that many turns (QQ sessions).
        self._turns_by_owner = turns_by_owner or {}

    def _turns_for(self, key: ConversationKey) -> int:
        for prefix, turns in self._turns_by_owner.items():
            if key.user_id.startswith(prefix):
                return turns
        return self._turns

    def model_for(self, contact: str) -> str:
        """The model a contact of this target talks to."""
        return model_of(contact)

    # ----- ContactTarget ----------------------------------------------------------------------

    def owns(self, contact: str) -> bool:
        return contact.startswith(PREFIX) and len(contact) > len(PREFIX)

    def canonical(self, contact: str) -> str:
        return contact

    def contacts(self, user: UserRef) -> list[Contact]:
        # Models are listed by `openai/models`; as contacts they are reached by name only.
        return []

    async def check_available(self, contact: str) -> None:
        model = model_of(contact)
        if not MODEL_RE.fullmatch(model):
            raise BridgeError(
                ErrorCode.INVALID_DATA,
                "a model contact is model:<model>, the model 1-128 characters of "
                "A-Z a-z 0-9 . _ - : / @ +",
            )
        if model.startswith("character:"):
            raise BridgeError(
                ErrorCode.NOT_FOUND,
                f"{model!r} is a character: message the character ({model[10:]!r}) itself",
            )
        target = self._router.model_target(model)  # UNAVAILABLE when none is configured
        if getattr(target, "pending", False):
            # A provider still loading has listed nothing yet: "starting", not "unknown".
            raise BridgeError(ErrorCode.UNAVAILABLE, STARTING_REASON)
        contact_of = getattr(target, "completion_contact", None)
        if contact_of is not None:
            # Its conversations are the contact's own (a MOMO AI agent): one place for them.
            raise BridgeError(
                ErrorCode.NOT_FOUND, f"{model!r} is a contact itself: message {contact_of(model)!r}"
            )
        if not self._known(model):
            raise BridgeError(ErrorCode.NOT_FOUND, f"unknown model {model!r}")

    def _known(self, model: str) -> bool:
        """Listed by a provider (``<provider>/<model>`` or a bare listed name); a provider that
        lists nothing is taken at its word for ``<provider>/<anything>``. A conversation is
        stored per model, so a name nobody serves must not make one."""
        groups = self._router.model_groups()
        provider, sep, name = model.partition("/")
        for group in groups:
            if sep and group.owner == provider:
                return not group.models or name in group.models
            if not sep and model in group.models:
                return True
        return False

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent]:
        key = message.conversation
        model = self.model_for(key.contact)
        target = self._router.model_target(model)
        messages = await self.context(key, upto=message.message_id)
        request = CompletionRequest(
            user=message.sender, model=model, messages=messages, conversation_id=key.thread
        )
        return target.complete(request)

    async def forward(
        self, message: ChatMessage, items: list[ChatMessage]
    ) -> AsyncIterator[ReplyEvent]:
        # The bundle is stored as the message itself (one `nodes` segment): its text is context.
        return await self.deliver(message)

    async def recall(self, request: RecallRequest) -> None:
        # Nothing upstream: the history is ours, and a recalled message leaves it as it is marked.
        return None

    # ----- ContextTarget ----------------------------------------------------------------------

    async def reset_context(self, key: ConversationKey, *, at: int = 0) -> None:
        mark = at or await self._storage.messages.newest_id(*_k(key))
        if mark:  # nothing stored (an `openai/completions` conversation): nothing to mark
            await self._storage.conversations.set(*_k(key), f"{RESET_MARK}{mark}")

    async def get_instructions(self, key: ConversationKey) -> str | None:
        return await self._storage.conversations.instructions(*_k(key))

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        await self._storage.conversations.set_instructions(*_k(key), text)

    # ----- the context a turn sends -----------------------------------------------------------

    async def context(self, key: ConversationKey, *, upto: int) -> list[JSON]:
        """The instructions and the history up to (and including) message ``upto``."""
        mark = await self._storage.conversations.get(*_k(key))
        after = 0
        if mark is not None and mark.startswith(RESET_MARK):
            after = int(mark[len(RESET_MARK) :] or 0)
        rows = await self._storage.messages.context(
            *_k(key), after=after, upto=upto, turns=self._turns_for(key)
        )
        history: list[JSON] = [
            {
                "role": "user" if row.direction == "in" else "assistant",
                "content": message_text(row.content),
            }
            for row in rows
        ]
        return await self.with_instructions(key, trimmed(history, self._chars))

    async def with_instructions(self, key: ConversationKey, messages: list[JSON]) -> list[JSON]:
        """``messages`` with the conversation's instructions as a system message, after any
        system messages they start with (a client's own come first; the persona adds to them)."""
        text = await self._storage.conversations.instructions(*_k(key))
        if not text:
            return messages
        at = 0
        while at < len(messages) and messages[at].get("role") == "system":
            at += 1
        return [*messages[:at], {"role": "system", "content": text}, *messages[at:]]
