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
    plain_text,
)
from bridge.router import Router
from storage import Storage

PREFIX = "model:"
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

    replies_stream = True
    replies_need_message_id = True  # the history is read up to the turn's own message

    def __init__(
        self, router: Router, storage: Storage, *, history_turns: int, history_chars: int
    ) -> None:
        self._router = router
        self._storage = storage
        self._turns = history_turns
        self._chars = history_chars

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
        if model.startswith("character:"):
            raise BridgeError(
                ErrorCode.NOT_FOUND,
                f"{model!r} is a character: message the character ({model[10:]!r}) itself",
            )
        self._router.model_target(model)  # NOT_FOUND / UNAVAILABLE

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent]:
        key = message.conversation
        model = model_of(key.contact)
        target = self._router.model_target(model)
        if message.message_id:
            messages = await self.context(key, upto=message.message_id)
        else:
            # A turn the bridge started (a scheduled prompt): not stored, so it is added here,
            # after everything said so far.
            newest = await self._storage.messages.newest_id(*_k(key))
            messages = await self.context(
                key, upto=newest, then={"role": "user", "content": plain_text(message.segments)}
            )
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

    async def reset_context(self, key: ConversationKey) -> None:
        newest = await self._storage.messages.newest_id(*_k(key))
        await self._storage.conversations.set(*_k(key), f"{RESET_MARK}{newest}")

    async def get_instructions(self, key: ConversationKey) -> str | None:
        return await self._storage.conversations.instructions(*_k(key))

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        await self._storage.conversations.set_instructions(*_k(key), text)

    # ----- the context a turn sends -----------------------------------------------------------

    async def context(
        self, key: ConversationKey, *, upto: int, then: JSON | None = None
    ) -> list[JSON]:
        """The instructions and the history up to (and including) message ``upto``, and
        ``then`` after it."""
        mark = await self._storage.conversations.get(*_k(key))
        after = 0
        if mark is not None and mark.startswith(RESET_MARK):
            after = int(mark[len(RESET_MARK) :] or 0)
        rows = await self._storage.messages.context(
            *_k(key), after=after, upto=upto, limit=self._turns * 2
        )
        if len(rows) >= 2 * self._turns:
            rows = rows[1:]  # the new message's turn is one of the turns
        while rows and rows[0].direction == "out" and rows[0].reply_to is not None:
            rows = rows[1:]  # a reply whose message fell out of the window
        history: list[JSON] = [
            {
                "role": "user" if row.direction == "in" else "assistant",
                "content": message_text(row.content),
            }
            for row in rows
        ]
        if then is not None:
            history.append(then)
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
