"""Sandbox state: in memory, optionally persisted to SQLite behind the scenes.

Memory is the source of truth and every mutation is a plain synchronous method, so a handler can
never be interrupted (client disconnect, shutdown) halfway through changing state, and check-then-set
sequences (busy chats, refresh rotation) need no locks. When a database path is configured, each
mutation also queues a row write that one owned task applies through aiosqlite; `close()` drains the
queue, so a clean restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import structlog

from adapters.momohub.sandbox.entities import (
    DEMO_CHARACTERS,
    JSON,
    Character,
    Chat,
    Clock,
    Message,
    SenderType,
    Token,
    User,
    new_id,
)

log = structlog.get_logger(__name__)

Kind = Literal["user", "token", "character", "chat", "message"]
_TYPES: dict[str, type[Any]] = {
    "user": User,
    "token": Token,
    "character": Character,
    "chat": Chat,
    "message": Message,
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS records_parent ON records (kind, parent);
"""
_CLOSE_TIMEOUT = 10.0


def _hash_password(salt: str, password: str) -> str:
    # A single salted SHA-256 keeps sign-in instant on the event loop; this is a sandbox whose
    # accounts guard nothing, not a place for a slow KDF.
    return hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class TokenPair:
    access: Token
    refresh: Token

    def to_api(self) -> JSON:
        return {
            "accessToken": self.access.value,
            "refreshToken": self.refresh.value,
            # Absolute epoch milliseconds, like the real server (its docs claim seconds).
            "accessTokenExpiredIn": self.access.expires_ms,
            "refreshTokenExpiredIn": self.refresh.expires_ms,
            "tokenType": "Bearer",
        }


class _Writer:
    """Applies queued row writes to SQLite from one owned task, in order."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._queue: asyncio.Queue[tuple[str, tuple[Any, ...]] | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sandbox-db-writer")

    def put(self, sql: str, params: tuple[Any, ...]) -> None:
        self._queue.put_nowait((sql, params))

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for entry in batch:
                if entry is None:
                    await self._db.commit()
                    return
                try:
                    await self._db.execute(*entry)
                except aiosqlite.Error:
                    log.exception("sandbox.db_write_failed", sql=entry[0])
            await self._db.commit()

    async def close(self) -> None:
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("sandbox.db_flush_timeout")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            log.exception("sandbox.db_writer_failed")


class Store:
    def __init__(self, database: str = "") -> None:
        self._path = database
        self._db: aiosqlite.Connection | None = None
        self._writer: _Writer | None = None
        self.clock = Clock()
        self.users: dict[str, User] = {}
        self._by_email: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self.characters: dict[str, Character] = {}
        self.chats: dict[str, Chat] = {}
        # chat id -> messages, oldest first.
        self.messages: dict[str, list[Message]] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._path:
            await asyncio.to_thread(Path(self._path).parent.mkdir, parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self._path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
            async with self._db.execute("SELECT kind, data FROM records") as cur:
                async for kind, data in cur:
                    self._load(kind, json.loads(data))
            self._writer = _Writer(self._db)
        for messages in self.messages.values():
            messages.sort(key=lambda m: m.created_ms)
        for demo in DEMO_CHARACTERS:
            if demo.id not in self.characters:
                self.put_character(dataclasses.replace(demo))

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _load(self, kind: str, data: JSON) -> None:
        cls = _TYPES.get(kind)
        if cls is None:
            return
        record = cls(**data)
        for stamp in ("created_ms", "updated_ms"):
            if hasattr(record, stamp):
                self.clock.observe(getattr(record, stamp))
        if isinstance(record, User):
            self.users[record.id] = record
            self._by_email[record.email] = record.id
        elif isinstance(record, Token):
            self.tokens[record.value] = record
        elif isinstance(record, Character):
            self.characters[record.id] = record
        elif isinstance(record, Chat):
            self.chats[record.id] = record
            self.messages.setdefault(record.id, [])
        elif isinstance(record, Message):
            self.messages.setdefault(record.chat_id, []).append(record)

    # ---- persistence helpers ---------------------------------------------------------------

    def _save(self, kind: Kind, key: str, record: Any, parent: str = "") -> None:
        if self._writer is not None:
            self._writer.put(
                "INSERT OR REPLACE INTO records (kind, id, parent, data) VALUES (?, ?, ?, ?)",
                (kind, key, parent, json.dumps(dataclasses.asdict(record), ensure_ascii=False)),
            )

    def _drop(self, kind: Kind, key: str) -> None:
        if self._writer is not None:
            self._writer.put("DELETE FROM records WHERE kind = ? AND id = ?", (kind, key))

    def _drop_children(self, kind: Kind, parent: str) -> None:
        if self._writer is not None:
            self._writer.put("DELETE FROM records WHERE kind = ? AND parent = ?", (kind, parent))

    # ---- users and tokens ------------------------------------------------------------------

    def user_by_email(self, email: str) -> User | None:
        uid = self._by_email.get(email.strip().lower())
        return self.users.get(uid) if uid else None

    def create_user(self, email: str, password: str, name: str) -> User:
        email = email.strip().lower()
        if email in self._by_email:
            raise KeyError(email)
        now = self.clock.now_ms()
        salt = secrets.token_hex(8)
        user = User(new_id(), email, name, salt, _hash_password(salt, password), now, now)
        self.users[user.id] = user
        self._by_email[email] = user.id
        self._save("user", user.id, user)
        return user

    def check_password(self, user: User, password: str) -> bool:
        return hmac.compare_digest(user.password_hash, _hash_password(user.salt, password))

    def set_password(self, user: User, password: str) -> None:
        user.salt = secrets.token_hex(8)
        user.password_hash = _hash_password(user.salt, password)
        user.updated_ms = self.clock.now_ms()
        self._save("user", user.id, user)

    def issue_tokens(self, user: User, access_ttl: float, refresh_ttl: float) -> TokenPair:
        now = self.clock.now_ms()
        self._prune_tokens(now)
        access = Token(secrets.token_urlsafe(32), "access", user.id, now + int(access_ttl * 1000))
        refresh = Token(
            secrets.token_urlsafe(32), "refresh", user.id, now + int(refresh_ttl * 1000)
        )
        access.partner, refresh.partner = refresh.value, access.value
        for token in (access, refresh):
            self.tokens[token.value] = token
            self._save("token", token.value, token, token.user_id)
        return TokenPair(access, refresh)

    def valid_token(self, value: str, kind: Literal["access", "refresh"]) -> Token | None:
        token = self.tokens.get(value)
        if token is None or token.kind != kind or token.expires_ms <= self.clock.now_ms():
            return None
        return token

    def revoke(self, value: str) -> None:
        if self.tokens.pop(value, None) is not None:
            self._drop("token", value)

    def expire_access_tokens(self) -> int:
        now = self.clock.now_ms()
        count = 0
        for token in self.tokens.values():
            if token.kind == "access" and token.expires_ms > now:
                token.expires_ms = now
                self._save("token", token.value, token, token.user_id)
                count += 1
        return count

    def _prune_tokens(self, now: int) -> None:
        for value in [v for v, t in self.tokens.items() if t.expires_ms <= now]:
            self.revoke(value)

    # ---- characters ------------------------------------------------------------------------

    def put_character(self, character: Character) -> None:
        self.characters[character.id] = character
        self._save("character", character.id, character, character.author_id or "")

    def create_character(self, author: User, fields: JSON) -> Character:
        now = self.clock.now_ms()
        character = Character(
            id=new_id(),
            author_id=author.id,
            name=fields["name"],
            avatar=fields.get("avatar"),
            bio=fields.get("bio"),
            origin_prompt=fields.get("originPrompt"),
            is_public=bool(fields.get("isPublic", False)),
            created_ms=now,
            updated_ms=now,
        )
        self.put_character(character)
        return character

    def update_character(self, character: Character, fields: JSON) -> None:
        character.name = fields["name"]
        for api_key, attr in (
            ("avatar", "avatar"),
            ("bio", "bio"),
            ("originPrompt", "origin_prompt"),
        ):
            if api_key in fields:
                setattr(character, attr, fields[api_key])
        if "isPublic" in fields:
            character.is_public = bool(fields["isPublic"])
        character.updated_ms = self.clock.now_ms()
        self.put_character(character)

    def delete_character(self, character: Character) -> None:
        self.characters.pop(character.id, None)
        self._drop("character", character.id)
        for chat in self.chats.values():
            if chat.character_id == character.id:
                chat.character_id = None
                self._save("chat", chat.id, chat, chat.user_id)

    # ---- chats -----------------------------------------------------------------------------

    def create_chat(
        self, user: User, character: Character, name: str | None, temporary: bool
    ) -> Chat:
        now = self.clock.now_ms()
        chat = Chat(new_id(), user.id, character.id, name, temporary, now, now)
        self.chats[chat.id] = chat
        self.messages[chat.id] = []
        self._save("chat", chat.id, chat, user.id)
        return chat

    def chats_of(self, user_id: str) -> list[Chat]:
        mine = [c for c in self.chats.values() if c.user_id == user_id]
        return sorted(mine, key=lambda c: c.updated_ms, reverse=True)

    def rename_chat(self, chat: Chat, name: str | None) -> None:
        chat.name = name
        chat.updated_ms = self.clock.now_ms()
        self._save("chat", chat.id, chat, chat.user_id)

    def set_chat_config(self, chat: Chat, config: JSON) -> None:
        chat.config = config
        chat.updated_ms = self.clock.now_ms()
        self._save("chat", chat.id, chat, chat.user_id)

    def delete_chat(self, chat: Chat) -> None:
        self.chats.pop(chat.id, None)
        self.messages.pop(chat.id, None)
        self._drop("chat", chat.id)
        self._drop_children("message", chat.id)

    # ---- messages --------------------------------------------------------------------------

    def add_message(self, chat: Chat, sender: SenderType, content: list[JSON]) -> Message:
        message = Message(new_id(), chat.id, sender, content, self.clock.now_ms())
        self.messages.setdefault(chat.id, []).append(message)
        self._save("message", message.id, message, chat.id)
        self._touch(chat)
        return message

    def delete_message(self, chat: Chat, message_id: str) -> bool:
        messages = self.messages.get(chat.id, [])
        for i, message in enumerate(messages):
            if message.id == message_id:
                del messages[i]
                self._drop("message", message_id)
                self._touch(chat)
                return True
        return False

    def clear_messages(self, chat: Chat) -> None:
        self.messages[chat.id] = []
        self._drop_children("message", chat.id)
        self._touch(chat)

    def _touch(self, chat: Chat) -> None:
        messages = self.messages.get(chat.id) or []
        chat.last_message = messages[-1].text() if messages else None
        chat.updated_ms = self.clock.now_ms()
        self._save("chat", chat.id, chat, chat.user_id)
