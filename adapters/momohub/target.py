"""MomoHub characters as contacts (onebot/message) and as `character:<id>` models (openai/*).

Each (user, character, thread) conversation has one MomoHub chat, created on first use and stored.
A MomoHub chat takes one message at a time, so sends to one chat are serialized here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import structlog

from adapters.momohub.chats import ChatBook, message_ref, split_ref
from adapters.momohub.client import MomoHubClient
from adapters.momohub.content import parts_text, to_content_parts
from adapters.momohub.types import (
    Character,
    Message,
    StreamDelta,
    StreamDone,
    StreamError,
    StreamToolResult,
    StreamToolStart,
)
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.locks import KeyedLocks
from bridge.models import (
    ChatMessage,
    CompletionRequest,
    Contact,
    ConversationKey,
    Delta,
    Done,
    Failed,
    ModelGroup,
    RecallRequest,
    ReplyEvent,
    Segment,
    ToolCall,
    UserRef,
)
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

SYSTEM = "momohub"
PREFIX = "character:"
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _bare(contact: str) -> str:
    return contact[len(PREFIX) :] if contact.startswith(PREFIX) else contact


class CharacterTarget:
    # The `target` label of its replies in /metrics.
    metrics_kind = "momohub"
    # The reply is built from the message's content alone, so Sessions may start it before the
    # message is stored and has an id.
    replies_need_message_id = False

    def __init__(
        self,
        config: MomoHubConfig,
        client: MomoHubClient,
        storage: Storage,
        *,
        max_chats_per_user: int = 50,
    ) -> None:
        self._config = config
        self._client = client
        self._storage = storage
        self._characters: dict[str, Character] = {}
        self._book = ChatBook(config, client, storage, max_chats_per_user=max_chats_per_user)
        # Conversations whose last turn ended before its place in the chat was recorded.
        # Bounded: an entry goes with the next turn of that conversation, and at most one per
        # conversation of a user who is active.
        self._unsettled: set[ConversationKey] = set()
        self._tasks = TaskSet("momohub-target")
        self._loaded = asyncio.Event()

    # ----- lifecycle and cache ------------------------------------------------------------------

    async def start(self) -> None:
        # The first load is awaited briefly so a login right after start sees the characters;
        # if MomoHub is slow or down, the bridge still starts and the refresher keeps trying.
        self._tasks.spawn(self._refresher(), name="momohub-characters")
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                await self._loaded.wait()
        except TimeoutError:
            log.warning("momohub.characters_not_loaded_yet")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self._book.close()

    @property
    def _create_locks(self) -> KeyedLocks:
        """Held per conversation (and per user) while its chat is found or created."""
        return self._book.locks

    async def _refresher(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.refresh()
                delay = self._config.cache_ttl
            except BridgeError as e:
                log.warning("momohub.characters_refresh_failed", reason=e.reason)
                delay = min(delay * 2, self._config.cache_ttl)
            await asyncio.sleep(delay)

    async def refresh(self) -> None:
        found: dict[str, Character] = {}
        for c in await self._client.list_my_characters():
            found[c.id] = c
        if self._config.list_public:
            page = 1
            while page <= 10:  # bounded: a contact list of 1,000 characters is plenty
                result = await self._client.list_public_characters(page=page, limit=100)
                for c in result.items:
                    found.setdefault(c.id, c)
                if not result.hasNext:
                    break
                page += 1
        # Characters used before (e.g. the default) stay known even if no longer listed.
        for cid, c in self._characters.items():
            found.setdefault(cid, c)
        self._characters = found
        self._loaded.set()

    def _default_id(self) -> str | None:
        want = self._config.default_character.strip()
        if not want:
            return None
        if _bare(want) in self._characters:
            return _bare(want)
        for c in self._characters.values():
            if c.name == want:
                return c.id
        return None

    # ----- ContactTarget --------------------------------------------------------------------------

    def _named(self, name: str) -> list[Character]:
        want = name.casefold()
        return [c for c in self._characters.values() if c.name.casefold() == want]

    def owns(self, contact: str) -> bool:
        bare = _bare(contact)
        return bare in self._characters or bool(UUID_RE.match(bare)) or bool(self._named(bare))

    def canonical(self, contact: str) -> str:
        """A character's id, from its id or its name (case-insensitive, one match only)."""
        bare = _bare(contact)
        if bare in self._characters or UUID_RE.match(bare):
            return bare
        named = self._named(bare)
        if len(named) > 1:
            candidates = ", ".join(f"{c.name} ({c.id})" for c in named)
            raise BridgeError(
                ErrorCode.NOT_FOUND, f"{bare!r} names several characters: {candidates}; use an id"
            )
        return named[0].id if named else bare

    def contacts(self, user: UserRef) -> list[Contact]:
        default = self._default_id()
        return [
            Contact(
                id=c.id,
                kind="character",
                name=c.name,
                avatar=c.avatar,
                bio=c.bio,
                default=c.id == default,
            )
            for c in sorted(self._characters.values(), key=lambda c: (c.id != default, c.name))
        ]

    async def search_contacts(self, user: UserRef, query: str, limit: int = 20) -> list[Contact]:
        """MomoHub's character search (public ones and this account's), as contacts."""
        page = await self._client.search_characters(query, limit=limit)
        return [
            Contact(id=c.id, kind="character", name=c.name, avatar=c.avatar, bio=c.bio)
            for c in page.items
        ]

    async def check_available(self, contact: str) -> None:
        if contact in self._characters:
            return
        # Not listed (e.g. someone else's public character): ask MomoHub once, then remember it.
        character = await self._client.get_character(contact)
        self._characters[character.id] = character

    async def deliver(self, message: ChatMessage) -> AsyncIterator[ReplyEvent]:
        key = message.conversation
        return self._converse(key.user_id, key.contact, key.thread, message.segments)

    async def recall(self, request: RecallRequest) -> None:
        key = request.conversation
        chat_id = await self._storage.conversations.get(key.user_id, key.contact, key.thread)
        refs = [split_ref(ref) for ref in request.refs]
        unresolved = not refs and request.unresolved and not request.outgoing
        if unresolved and chat_id is not None:
            refs = [(chat_id, m) for m in await self.turn_ids(key, chat_id)]
        for in_chat, message_id in refs:
            # A ref from before refs named their chat was in the conversation's chat of then:
            # the current one, unless a reset forgot it (and deleted it with the message).
            in_chat = in_chat or chat_id
            if in_chat is None:
                continue
            try:
                await self._client.delete_message(in_chat, message_id)
            except BridgeError as e:
                if e.code != ErrorCode.NOT_FOUND:
                    raise
                # Already gone upstream, e.g. with its chat, deleted by a reset: recalled.
                log.info("momohub.recall_already_gone", chat=in_chat, message=message_id)
        if unresolved and chat_id is not None:
            await self._settle(key, chat_id)

    # ----- conversation context (bridge.router.ContextTarget) ---------------------------------

    async def reset_context(self, key: ConversationKey, *, at: int = 0) -> None:
        """The conversation's next message goes to a new MomoHub chat (with its persona); the
        old chat is deleted on MomoHub in the background, so a reset never waits on MomoHub.
        (Messages typed after the reset queue behind it: they reach the new chat, ``at`` or not.)

        The engine runs a reset as a turn of its conversation, after a reply still streaming
        in the old chat has ended, so no send is cut off by the deletion."""
        await self._book.forget(key)
        # Where the old chat's last turn ended no longer matters.
        self._unsettled.discard(key)

    async def get_instructions(self, key: ConversationKey) -> str | None:
        return await self._book.instructions(key)

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        """The chat's ``systemPrompt``: MomoHub appends it to the character's own prompt."""
        await self._book.set_instructions(key, text)

    async def turn_ids(self, key: ConversationKey, chat_id: str) -> list[str]:
        """The ids of a turn that ended before they were learned (recalled while running, or
        cut short by a crash): the chat's messages after the conversation's anchor (the newest
        message of a settled turn, recorded as each turn ends), from the newest user message
        on. The engine runs one turn at a time per conversation, so those are this turn's."""
        return [
            m.id for m in self._after_anchor(await self._anchor(key), await self._latest(chat_id))
        ]

    async def _latest(self, chat_id: str) -> list[Message]:
        return await self._client.list_latest_messages(chat_id, limit=20)

    async def _anchor(self, key: ConversationKey) -> tuple[str, str] | None:
        return await self._storage.conversations.anchor(key.user_id, key.contact, key.thread)

    @staticmethod
    def _after_anchor(anchor: tuple[str, str] | None, latest: list[Message]) -> list[Message]:
        if anchor is None:
            tail = latest  # a fresh chat: everything in it is this turn's
        else:
            anchor_id, anchor_at = anchor
            ids = [m.id for m in latest]
            if anchor_id in ids:
                tail = latest[ids.index(anchor_id) + 1 :]
            else:
                # The anchor itself was deleted since: go by its time instead.
                tail = [m for m in latest if m.createdAt and m.createdAt.isoformat() > anchor_at]
        users = [i for i, m in enumerate(tail) if m.senderType == "USER"]
        # Only the newest user message and what followed it: an earlier turn that was stopped
        # before it was settled may have left its user message in the chat.
        return tail[users[-1] :] if users else []

    def _mark_unsettled(self, key: ConversationKey) -> None:
        if len(self._unsettled) >= 10_000:
            self._unsettled.pop()  # that conversation's next turn just cannot pre-settle
        self._unsettled.add(key)

    async def _settle(
        self, key: ConversationKey, chat_id: str, latest: list[Message] | None = None
    ) -> None:
        """Record the chat's newest message as the conversation's anchor."""
        if latest is None:
            try:
                latest = await self._latest(chat_id)
            except BridgeError as e:
                log.warning("momohub.anchor_unknown", chat=chat_id, reason=e.reason)
                self._mark_unsettled(key)
                return
        self._unsettled.discard(key)
        if latest:
            newest = latest[-1]
            at = newest.createdAt.isoformat() if newest.createdAt else ""
            await self._storage.conversations.set_anchor(
                key.user_id, key.contact, key.thread, newest.id, at
            )

    async def recover(self, key: ConversationKey) -> Done | None:
        """After a crash: the reply MomoHub finished for the turn that was in flight, if any.
        Returns a Done carrying the recovered text as ``sender_name``-free event plus ids."""
        chat_id = await self._storage.conversations.get(key.user_id, key.contact, key.thread)
        if chat_id is None:
            return None
        latest = await self._latest(chat_id)
        turn = self._after_anchor(await self._anchor(key), latest)
        request = next((m.id for m in turn if m.senderType == "USER"), None)
        reply_msg = next((m for m in turn if m.senderType == "CHARACTER"), None)
        await self._settle(key, chat_id, latest)
        if reply_msg is None:
            return None
        text = parts_text([p.model_dump() for p in reply_msg.content])
        return self._done(key, chat_id, request, reply_msg.id, text)

    # ----- ModelTarget ----------------------------------------------------------------------------

    def model_groups(self) -> list[ModelGroup]:
        return [ModelGroup("momohub", [PREFIX + cid for cid in self._characters])]

    def owns_model(self, model: str) -> bool:
        return model.startswith(PREFIX)

    def conversation_key(self, request: CompletionRequest) -> ConversationKey:
        """The same conversation as `onebot/message` to the character in that thread."""
        try:
            character_id = self.canonical(request.model)
        except BridgeError:
            character_id = _bare(request.model)
        return ConversationKey(request.user.id, character_id, request.conversation_id)

    def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        text = ""
        for m in reversed(request.messages):
            if m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, list):  # OpenAI content parts
                    content = "".join(
                        str(p.get("text", "")) for p in content if isinstance(p, dict)
                    )
                text = str(content or "")
                break
        if not text:
            return _single(Failed(ErrorCode.INVALID_DATA, "messages has no user message to send"))
        try:
            character_id = self.canonical(request.model)
        except BridgeError as e:
            return _single(Failed(e.code, e.reason))
        return self._converse(
            request.user.id,
            character_id,
            request.conversation_id,
            [Segment.text(text)],
            check=True,
        )

    # ----- the conversation itself -----------------------------------------------------------------

    async def _converse(
        self,
        user_id: str,
        character_id: str,
        thread: str,
        segments: list[Segment],
        *,
        check: bool = False,
    ) -> AsyncIterator[ReplyEvent]:
        key: ConversationKey | None = None
        settled = False
        try:
            if check:
                await self.check_available(character_id)
            parts = to_content_parts(segments)
            if not parts:
                yield Failed(ErrorCode.INVALID_DATA, "nothing to send: the message has no content")
                return
            chat_id = await self._book.chat_for(user_id, character_id, thread, fresh=False)
            key = ConversationKey(user_id, character_id, thread)
            if key in self._unsettled:
                # A turn before this one was stopped unsettled: mark where this one starts.
                await self._settle(key, chat_id)
            # One turn at a time per conversation is the engine's job; a chat is one conversation.
            try:
                stream = self._client.send_message(chat_id, parts)
                first = await anext(aiter(stream), None)
            except BridgeError as e:
                if e.code != ErrorCode.NOT_FOUND:
                    raise
                # The chat was deleted on MomoHub's side: start a new one for this conversation.
                log.info("momohub.chat_gone", chat=chat_id)
                chat_id = await self._book.chat_for(user_id, character_id, thread, fresh=True)
                stream = self._client.send_message(chat_id, parts)
                first = await anext(aiter(stream), None)
            async for event in self._events(first, stream, chat_id, key):
                if isinstance(event, Done | Failed):
                    settled = True  # _events recorded the anchor before ending the turn
                yield event
        except BridgeError as e:
            yield Failed(e.code, f"MomoHub: {e.reason}")
        finally:
            if not settled and key is not None:
                self._mark_unsettled(key)

    async def _events(
        self, first: Any, stream: AsyncIterator[Any], chat_id: str, key: ConversationKey
    ) -> AsyncIterator[ReplyEvent]:
        tool_params: dict[str, str] = {}
        try:
            ev = first if first is not None else await anext(stream, None)
            while ev is not None:
                # The stream is read here directly, not through a wrapper generator that puts
                # `first` back in front: that would be one more generator step per event.
                if type(ev) is StreamDelta:
                    if ev.text:
                        yield Delta(text=ev.text)
                elif isinstance(ev, StreamToolStart):
                    params = json.dumps(ev.arguments, ensure_ascii=False)
                    tool_params[ev.name] = params
                    yield ToolCall(name=ev.name, action="started", params=params)
                    yield ToolCall(name=ev.name, action="running", params=params)
                elif isinstance(ev, StreamToolResult):
                    yield ToolCall(
                        name=ev.name,
                        action="finished",
                        params=tool_params.get(ev.name, ""),
                        result=ev.result,
                    )
                elif isinstance(ev, StreamError):
                    code = (
                        ErrorCode.BUSY if "busy" in ev.message.lower() else ErrorCode.UPSTREAM_ERROR
                    )
                    await self._settle(key, chat_id)
                    yield Failed(code, f"MomoHub: {ev.message}")
                    return
                elif isinstance(ev, StreamDone):
                    request_ref, reply_ref = await self._newest_ids(key, chat_id)
                    yield self._done(key, chat_id, request_ref, reply_ref)
                    return
                ev = await anext(stream, None)
        finally:
            await _aclose(stream)

    def _done(
        self,
        key: ConversationKey,
        chat_id: str,
        request_id: str | None,
        reply_id: str | None,
        text: str = "",
    ) -> Done:
        """A finished turn, with the MomoHub ids that a later recall deletes by."""
        character = self._characters.get(key.contact)
        return Done(
            finish_reason="stop",
            ref_system=SYSTEM,
            request_ref=message_ref(chat_id, request_id),
            reply_ref=message_ref(chat_id, reply_id),
            sender_name=character.name if character else "",
            text=text,
        )

    async def _newest_ids(
        self, key: ConversationKey, chat_id: str
    ) -> tuple[str | None, str | None]:
        """MomoHub's stream carries no ids: read them back from the chat's newest messages."""
        try:
            messages = await self._client.list_latest_messages(chat_id, limit=10)
        except BridgeError as e:
            log.warning("momohub.ids_unknown", chat=chat_id, reason=e.reason)
            self._mark_unsettled(key)
            return None, None
        await self._settle(key, chat_id, messages)
        reply = next((m.id for m in reversed(messages) if m.senderType == "CHARACTER"), None)
        request = next((m.id for m in reversed(messages) if m.senderType == "USER"), None)
        return request, reply


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _single(event: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    yield event
