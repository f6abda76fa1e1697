"""Which MomoHub chat backs each (user, character, thread) conversation.

A chat is created on the conversation's first message and stored; a reset forgets it, so the next
message creates a new one, and deletes it on MomoHub in the background. The conversation's own
instructions (a persona) are stored apart from the chat and become the chat's ``systemPrompt``
(which MomoHub appends to the character's prompt): at once when the chat exists, or when the chat
is created — after a reset, or when MomoHub lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

import structlog

from adapters.momohub.client import MomoHubClient
from adapters.momohub.errors import MomoHubAuthError, MomoHubError
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.locks import KeyedLocks
from bridge.models import ConversationKey
from bridge.tasks import TaskSet
from storage import Storage

log = structlog.get_logger(__name__)

# The chat ids kept in memory; the table is the truth, this saves a query a send.
CACHED_CHATS = 10_000
# A forgotten chat's deletion is tried this many times in all, pausing DELETE_BACKOFF seconds
# after the first failure and twice as long after the next: enough to ride out a MomoHub restart
# or a rate limit, and over in a couple of minutes at worst. Not kept across a restart of the
# bridge: an orphan is logged with its id and costs MomoHub one idle chat, no user anything.
DELETE_TRIES = 3
DELETE_BACKOFF = 5.0


class ChatBook:
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
        # Bounded (CACHED_CHATS): threads are named by users.
        self._chats: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._max_chats_per_user = max_chats_per_user
        # user → chats being created now, not yet in the table (counted against the limit).
        self._creating: dict[str, int] = {}
        # Held per conversation while its chat is looked up, created, forgotten or configured,
        # so a persona set during a creation is never lost between the two.
        self.locks = KeyedLocks()
        # Deletions of forgotten chats: nobody waits on them, shutdown cancels them.
        self._tasks = TaskSet("momohub-chats")
        self.delete_backoff = DELETE_BACKOFF  # tests shrink it

    async def close(self) -> None:
        await self._tasks.cancel_all()

    @property
    def _timeout(self) -> float:
        return self._config.connect_timeout * 2

    async def chat_for(self, user_id: str, character_id: str, thread: str, *, fresh: bool) -> str:
        key = (user_id, character_id, thread)
        if not fresh and key in self._chats:
            self._chats.move_to_end(key)
            return self._chats[key]
        async with self.locks.hold(key, timeout=self._timeout):
            conversations = self._storage.conversations
            if not fresh:
                existing = await conversations.get(user_id, character_id, thread)
                if existing is not None:
                    self._remember(key, existing)
                    return existing
            # Distinct threads of one user are created concurrently (one lock per key), so the
            # limit is checked, and a new chat stored, under a per-user lock that is never held
            # across MomoHub; chats still being created count as made.
            user_lock = ("user", user_id)
            reserved = False
            try:
                if not fresh and thread != "default":
                    async with self.locks.hold(user_lock, timeout=self._timeout):
                        count = await conversations.count(user_id)
                        if count + self._creating.get(user_id, 0) >= self._max_chats_per_user:
                            raise BridgeError(
                                ErrorCode.BUSY,
                                f"at most {self._max_chats_per_user} conversations per user "
                                "(limits.conversations_per_user); reuse a conversation_id",
                            )
                        self._creating[user_id] = self._creating.get(user_id, 0) + 1
                        reserved = True
                name = f"MomoBridge {user_id}" + ("" if thread == "default" else f" ({thread})")
                chat = await self._client.create_chat(character_id, name=name)
                await self._configure_new(key, chat.id)
                async with self.locks.hold(user_lock, timeout=self._timeout):
                    await conversations.set(user_id, character_id, thread, chat.id)
                    self._unreserve(user_id, reserved)
                    reserved = False
            finally:
                self._unreserve(user_id, reserved)
            self._remember(key, chat.id)
            log.info("momohub.chat_created", user=user_id, character=character_id, chat=chat.id)
            return chat.id

    async def _configure_new(self, key: tuple[str, str, str], chat_id: str) -> None:
        """Give a new chat the conversation's persona before any message reaches it; if that
        fails the chat is not used (a chat answering without its persona would be wrong)."""
        text = await self._storage.conversations.instructions(*key)
        if text is None:
            return
        try:
            await self._client.put_chat_config(chat_id, {"systemPrompt": text})
        except BridgeError:
            # Not recorded anywhere, so it would never be used: do not leave it on MomoHub.
            with contextlib.suppress(BridgeError):
                await self._client.delete_chat(chat_id)
            raise

    def _unreserve(self, user_id: str, reserved: bool) -> None:
        if not reserved:
            return
        left = self._creating.get(user_id, 0) - 1
        if left > 0:
            self._creating[user_id] = left
        else:
            self._creating.pop(user_id, None)

    def _remember(self, key: tuple[str, str, str], chat_id: str) -> None:
        self._chats[key] = chat_id
        self._chats.move_to_end(key)
        while len(self._chats) > CACHED_CHATS:
            self._chats.popitem(last=False)

    async def forget(self, key: ConversationKey) -> str | None:
        """Stop using the conversation's chat: its next message creates a new one. The old chat
        is deleted on MomoHub in the background (best effort: nothing here waits on MomoHub);
        the bridge keeps the conversation's history itself. Returns the forgotten chat's id."""
        k = (key.user_id, key.contact, key.thread)
        async with self.locks.hold(k, timeout=self._timeout):
            chat_id = await self._storage.conversations.get(*k)
            if chat_id is not None:
                await self._storage.conversations.forget(*k)
            self._chats.pop(k, None)
        if chat_id is not None:
            log.info(
                "momohub.chat_forgotten", user=key.user_id, character=key.contact, chat=chat_id
            )
            self._tasks.spawn(self._delete(chat_id, key.user_id), name="momohub-delete-chat")
        return chat_id

    async def _delete(self, chat_id: str, user_id: str) -> None:
        """Delete a forgotten chat on MomoHub, trying again while the failure may pass.

        Without this every reset would leave a chat behind on the bridge's MomoHub account for
        good. Its messages go with it, so a later recall of one of them finds it gone (404).
        """
        attempt = 0
        reason = ""
        try:
            while attempt < DELETE_TRIES:
                attempt += 1
                failure = await self._try_delete(chat_id, user_id)
                if failure is None:
                    reason = ""  # deleted in the end: no orphan
                    return
                reason, may_pass = failure
                if not may_pass or attempt == DELETE_TRIES:
                    break
                log.info("momohub.chat_delete_retry", chat=chat_id, attempt=attempt, reason=reason)
                await asyncio.sleep(self.delete_backoff * 2 ** (attempt - 1))
        except asyncio.CancelledError:
            reason = "the bridge stopped before it was deleted" + (f" ({reason})" if reason else "")
            raise
        finally:
            # The id is all anyone needs to remove it by hand.
            if reason:
                log.warning(
                    "momohub.chat_orphaned",
                    chat=chat_id,
                    user=user_id,
                    attempts=attempt,
                    reason=reason,
                )

    async def _try_delete(self, chat_id: str, user_id: str) -> tuple[str, bool] | None:
        """None once the chat is gone; else why not and whether that may pass."""
        timeout = self._config.request_timeout + self._config.connect_timeout
        try:
            # The client bounds the request itself; this also bounds waiting for a sign-in.
            async with asyncio.timeout(timeout):
                await self._client.delete_chat(chat_id)
        except TimeoutError:
            return f"no answer in {timeout:g}s", True
        except BridgeError as e:
            if e.code != ErrorCode.NOT_FOUND:
                return e.reason, _may_pass(e)
            log.info("momohub.chat_already_gone", chat=chat_id, user=user_id)
            return None
        log.info("momohub.chat_deleted", chat=chat_id, user=user_id)
        return None

    async def instructions(self, key: ConversationKey) -> str | None:
        return await self._storage.conversations.instructions(key.user_id, key.contact, key.thread)

    async def set_instructions(self, key: ConversationKey, text: str | None) -> None:
        """Store the persona (None clears it) and put it on the conversation's chat if there is
        one. MomoHub is updated first: a failure there leaves both as they were."""
        k = (key.user_id, key.contact, key.thread)
        async with self.locks.hold(k, timeout=self._timeout):
            chat_id = await self._storage.conversations.get(*k)
            if chat_id is not None:
                try:
                    await self._client.put_chat_config(chat_id, {"systemPrompt": text})
                except BridgeError as e:
                    if e.code != ErrorCode.NOT_FOUND:
                        raise
                    # The chat is gone on MomoHub's side; the next message creates one, with
                    # the persona stored below.
                    log.info("momohub.chat_gone", chat=chat_id)
            await self._storage.conversations.set_instructions(*k, text)


def _may_pass(error: BridgeError) -> bool:
    """Whether a failed delete is worth trying again: MomoHub down, busy or rate limiting, not
    a refusal (our credentials, someone else's chat, a bad id) or a client shutting down."""
    if isinstance(error, MomoHubAuthError) or error.code == ErrorCode.UNAVAILABLE:
        return False
    status = error.status if isinstance(error, MomoHubError) else None
    return status is None or status >= 500 or status in (409, 429)


def message_ref(chat_id: str, message_id: str | None) -> str | None:
    """A message's ref (the id a recall deletes it by) names its chat too: after a reset the
    conversation has another chat, and a recall must still reach (or find gone) the one the
    message was in."""
    return f"{chat_id}/{message_id}" if message_id else None


def split_ref(ref: str) -> tuple[str | None, str]:
    """(chat id, message id); refs recorded before they named their chat have no chat."""
    chat_id, _, message_id = ref.rpartition("/")
    return chat_id or None, message_id
