"""The sandbox's records and how each one looks on the wire (MomoHub's JSON shapes)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

JSON = dict[str, Any]
SenderType = Literal["USER", "CHARACTER"]

CONTENT_TYPES = frozenset({"text", "image", "file", "code", "audio", "video", "pdf"})
# Which fields each part type carries; anything else a client sends is dropped, as a typed DTO would.
PART_FIELDS = ("content", "url", "alt", "fileName", "fileSize", "language", "mimeType")


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def new_id() -> str:
    return str(uuid.uuid4())


class Clock:
    """Wall-clock milliseconds that never repeat.

    Clients are told to order messages by `createdAt`; a user message and a fast echo reply would
    otherwise often share a millisecond and make that order ambiguous.
    """

    def __init__(self) -> None:
        self._last = 0

    def now_ms(self) -> int:
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last

    def observe(self, ms: int) -> None:
        # After loading persisted rows, new stamps must still sort after the old ones.
        self._last = max(self._last, ms)


@dataclass(slots=True)
class User:
    id: str
    email: str
    name: str
    salt: str
    password_hash: str
    created_ms: int
    updated_ms: int
    avatar: str | None = None

    def profile(self) -> JSON:
        return {
            "userId": self.id,
            "email": self.email,
            "username": self.name,
            "avatar": self.avatar,
            "isEmailVerified": True,
            "createdAt": iso(self.created_ms),
            "updatedAt": iso(self.updated_ms),
        }


@dataclass(slots=True)
class Token:
    value: str
    kind: Literal["access", "refresh"]
    user_id: str
    expires_ms: int
    # The other half of the pair, so signing out can revoke both.
    partner: str = ""


@dataclass(slots=True)
class Character:
    id: str
    author_id: str | None
    name: str
    avatar: str | None
    bio: str | None
    origin_prompt: str | None
    is_public: bool
    created_ms: int
    updated_ms: int

    def to_api(self, author: User | None) -> JSON:
        return {
            "id": self.id,
            "author": (
                {"id": author.id, "name": author.name, "avatar": author.avatar} if author else None
            ),
            "name": self.name,
            "avatar": self.avatar,
            "bio": self.bio,
            "originPrompt": self.origin_prompt,
            "isPublic": self.is_public,
            "createdAt": iso(self.created_ms),
            "updatedAt": iso(self.updated_ms),
        }


@dataclass(slots=True)
class Chat:
    id: str
    user_id: str
    character_id: str | None
    name: str | None
    temporary: bool
    created_ms: int
    updated_ms: int
    last_message: str | None = None
    config: JSON | None = None

    def to_api(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "lastMessage": self.last_message,
            "characterId": self.character_id,
            "temporary": self.temporary,
            "createdAt": iso(self.created_ms),
            "updatedAt": iso(self.updated_ms),
        }


@dataclass(slots=True)
class Message:
    id: str
    chat_id: str
    sender: SenderType
    content: list[JSON] = field(default_factory=list)
    created_ms: int = 0

    def text(self) -> str:
        return "".join(str(p.get("content") or "") for p in self.content if p.get("type") == "text")

    def to_api(self) -> JSON:
        return {
            "id": self.id,
            "senderType": self.sender,
            "content": [dict(p) for p in self.content],
            "createdAt": iso(self.created_ms),
        }


# Fixed ids so a self-hoster's config (`momohub.default_character`) keeps working across restarts.
DEMO_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
DEMO_CHARACTERS: tuple[Character, ...] = (
    Character(
        id="6d6f6d6f-0000-4000-8000-000000000001",
        author_id=None,
        name="Momo",
        avatar=None,
        bio="A cheerful assistant who is always glad to help.",
        origin_prompt=(
            "You are Momo, a cheerful, upbeat assistant. Answer helpfully and warmly, "
            "with a little enthusiasm."
        ),
        is_public=True,
        created_ms=DEMO_EPOCH_MS,
        updated_ms=DEMO_EPOCH_MS,
    ),
    Character(
        id="6d6f6d6f-0000-4000-8000-000000000002",
        author_id=None,
        name="Kuro",
        avatar=None,
        bio="Says as little as possible.",
        origin_prompt="You are Kuro. Answer in as few words as possible. No pleasantries.",
        is_public=True,
        created_ms=DEMO_EPOCH_MS + 1,
        updated_ms=DEMO_EPOCH_MS + 1,
    ),
    Character(
        id="6d6f6d6f-0000-4000-8000-000000000003",
        author_id=None,
        name="Sensei",
        avatar=None,
        bio="A patient teacher who explains step by step.",
        origin_prompt=(
            "You are Sensei, a patient teacher. Explain things step by step and check "
            "understanding with a short question at the end."
        ),
        is_public=True,
        created_ms=DEMO_EPOCH_MS + 2,
        updated_ms=DEMO_EPOCH_MS + 2,
    ),
)
