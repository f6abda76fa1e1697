"""MomoHub's data as typed values: REST models (lenient) and the events of a reply stream.

The REST models accept what any server build sends: only the fields the bridge cannot work without
are required, unknown fields are ignored, and known variations (``author`` vs ``authorId``, expiry in
seconds vs milliseconds, a bare list instead of a page) are normalised here so callers never see them.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters.momohub.sse import SSEEvent

__all__ = [
    "AuthResult",
    "Author",
    "Character",
    "Chat",
    "ChatConfig",
    "ContentPart",
    "Envelope",
    "Message",
    "Page",
    "StreamDecoder",
    "StreamDelta",
    "StreamDone",
    "StreamError",
    "StreamEvent",
    "StreamHeartbeat",
    "StreamToolResult",
    "StreamToolStart",
    "Tokens",
    "User",
    "decode_stream",
    "jwt_expiry",
    "parse_expiry",
    "parse_time",
]

T = TypeVar("T")

# Below this an epoch value is seconds, at or above it milliseconds (1e12 s is the year 33658).
_MS_THRESHOLD = 1e12
# An "absolute" expiry before 2001 cannot be real: it is a lifetime in seconds from a build that
# sends relative values. Reading it as absolute would make every token look expired (refresh storm).
_RELATIVE_BELOW = 1e9


# ----- time helpers ---------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An instant from epoch seconds, epoch milliseconds, a numeric string or an ISO 8601 string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        try:
            value = float(s)
        except ValueError:
            try:
                dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        seconds = value / 1000 if abs(value) >= _MS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def parse_expiry(value: Any, *, now: float | None = None) -> float | None:
    """An ``*ExpiredIn`` value as epoch seconds (float), or None if absent/unreadable.

    The server sends absolute epoch milliseconds, the docs show epoch seconds; both are accepted
    (below 1e12 means seconds), as are ISO strings. A tiny number is taken as a lifetime in seconds.
    """
    if (isinstance(value, int | float) and not isinstance(value, bool)) or isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number) and 0 < number < _RELATIVE_BELOW:
            return (time.time() if now is None else now) + number
    dt = parse_time(value)
    return dt.timestamp() if dt is not None else None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (epoch seconds), read without verifying -- only to schedule a
    refresh for tokens given in the config, which come without an expiry."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return parse_expiry(exp) if isinstance(exp, int | float) and exp > _RELATIVE_BELOW else None


# ----- REST models ----------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Envelope(_Lenient):
    """``ApiResponse<T>``; only ``success`` is guaranteed."""

    success: bool
    code: str | None = None
    message: str | None = None
    data: Any = None
    errors: dict[str, Any] | None = None
    timestamp: Any = None

    @field_validator("code", "message", mode="before")
    @classmethod
    def _stringish(cls, v: Any) -> Any:
        return None if v is None else str(v)

    @field_validator("errors", mode="before")
    @classmethod
    def _errors_map(cls, v: Any) -> Any:
        return v if isinstance(v, dict) else None


class Tokens(_Lenient):
    accessToken: str
    refreshToken: str | None = None
    # Absolute expiry, normalised to epoch seconds.
    accessTokenExpiredIn: float | None = None
    refreshTokenExpiredIn: float | None = None
    tokenType: str | None = None

    @field_validator("accessTokenExpiredIn", "refreshTokenExpiredIn", mode="before")
    @classmethod
    def _expiry(cls, v: Any) -> float | None:
        return parse_expiry(v)


class User(_Lenient):
    """``UserProfile``: the server says ``userId``/``username``; ``id``/``name`` also accepted."""

    id: str = Field(validation_alias=AliasChoices("userId", "id"))
    email: str | None = None
    name: str | None = Field(None, validation_alias=AliasChoices("username", "name"))
    avatar: str | None = None
    isEmailVerified: bool | None = None
    createdAt: datetime | None = None

    @field_validator("createdAt", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime | None:
        return parse_time(v)


class AuthResult(_Lenient):
    """What sign-in and refresh return: ``{user, tokens}``."""

    tokens: Tokens
    user: User | None = None

    @field_validator("user", mode="before")
    @classmethod
    def _optional_user(cls, v: Any) -> Any:
        # The tokens are what matter; an unfamiliar profile shape must not fail a sign-in.
        if isinstance(v, dict) and (v.get("userId") or v.get("id")):
            return v
        return None


class Author(_Lenient):
    id: str = Field(validation_alias=AliasChoices("id", "userId"))
    name: str | None = Field(None, validation_alias=AliasChoices("name", "username"))
    avatar: str | None = None


class Character(_Lenient):
    id: str
    name: str = ""
    author: Author | None = None
    # Older servers send only this; kept in sync with `author` either way.
    authorId: str | None = None
    avatar: str | None = None
    bio: str | None = None
    originPrompt: str | None = None
    isPublic: bool | None = None
    createdAt: datetime | None = None
    updatedAt: datetime | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("author", mode="before")
    @classmethod
    def _author(cls, v: Any) -> Any:
        return v if isinstance(v, dict) and (v.get("id") or v.get("userId")) else None

    @field_validator("createdAt", "updatedAt", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime | None:
        return parse_time(v)

    @model_validator(mode="after")
    def _sync_author(self) -> Character:
        if self.author is None and self.authorId:
            self.author = Author(id=self.authorId)
        elif self.author is not None and not self.authorId:
            self.authorId = self.author.id
        return self


class ContentPart(_Lenient):
    type: str = "text"
    content: str | None = None
    url: str | None = None
    alt: str | None = None
    fileName: str | None = None
    fileSize: int | None = None
    language: str | None = None
    mimeType: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else "text" if v is None else v

    @field_validator("fileSize", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        try:
            return None if v is None else int(v)
        except (TypeError, ValueError):
            return None


class Message(_Lenient):
    id: str
    senderType: str = "USER"
    content: list[ContentPart] = []
    createdAt: datetime | None = None

    @field_validator("senderType", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else "USER" if v is None else v

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [{"type": "text", "content": v}]
        if isinstance(v, dict):
            return [v]
        return v

    @field_validator("createdAt", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime | None:
        return parse_time(v)

    @property
    def text(self) -> str:
        return "".join(p.content or "" for p in self.content if p.type == "text")


class Chat(_Lenient):
    id: str
    name: str | None = None
    lastMessage: Any = None
    characterId: str | None = None
    temporary: bool = False
    createdAt: datetime | None = None
    updatedAt: datetime | None = None

    @field_validator("temporary", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("createdAt", "updatedAt", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime | None:
        return parse_time(v)


class ChatConfig(_Lenient):
    temperature: float | None = None
    maxTokens: int | None = None
    topP: float | None = None
    systemPrompt: str | None = None


class Page(_Lenient, Generic[T]):
    items: list[T] = []
    total: int | None = None
    page: int = 1
    limit: int | None = None
    totalPages: int | None = None
    hasNext: bool = False
    hasPrevious: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: Any) -> Any:
        # Some builds return a bare array where a page is documented.
        if isinstance(v, list):
            return {"items": v, "total": len(v), "page": 1, "totalPages": 1}
        if isinstance(v, dict):
            v = dict(v)
            if v.get("items") is None:
                v["items"] = []
            # Missing navigation flags are derived instead of assumed false, so a caller paging
            # through never stops early just because a build omitted `hasNext`.
            page, pages = v.get("page"), v.get("totalPages")
            if v.get("hasNext") is None and isinstance(page, int) and isinstance(pages, int):
                v["hasNext"] = page < pages
            if v.get("hasPrevious") is None and isinstance(page, int):
                v["hasPrevious"] = page > 1
            for k in ("hasNext", "hasPrevious", "page"):
                if v.get(k) is None:
                    v.pop(k, None)
        return v


# ----- stream events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamToolStart:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamToolResult:
    name: str
    result: str


@dataclass(frozen=True, slots=True)
class StreamDone:
    text: str


@dataclass(frozen=True, slots=True)
class StreamError:
    message: str


@dataclass(frozen=True, slots=True)
class StreamHeartbeat:
    pass


StreamEvent = (
    StreamDelta | StreamToolStart | StreamToolResult | StreamDone | StreamError | StreamHeartbeat
)

_DELTA_NAMES = frozenset({"delta", "message", ""})
_HELD_NAMES = frozenset({"done", "error", "tool_call_start", "tool_call_result"})


def _json_object(text: str) -> dict[str, Any] | None:
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return None
    try:
        value = json.loads(s)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _delta_text(data: str) -> str:
    """A token is raw text, or ``{"content": "..."}`` from builds that send JSON. JSON without a
    string ``content`` is somebody's raw text that happens to look like JSON."""
    obj = _json_object(data)
    if obj is not None and isinstance(obj.get("content"), str):
        return obj["content"]
    return data


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class StreamDecoder:
    """Turns SSE events into MomoHub stream events; stateful because continuations exist.

    Deltas (and their continuations) are emitted at once. ``done``, ``error`` and tool events are
    held until the next event or the end of the stream, because a continuation block may still add
    to their text (a reply or error message with a blank line); the server closes the stream right
    after ``done``/``error``, so holding them costs nothing in practice.
    """

    def __init__(self) -> None:
        self._held: tuple[str, str] | None = None  # (event, data so far)
        self._last: str | None = None  # event type that continuations extend
        self._text: list[str] = []  # all delta text, for `[DONE]` which carries none

    @property
    def has_held(self) -> bool:
        """True if an event is waiting for a possible continuation (``flush``/``close`` emit it)."""
        return self._held is not None

    def feed(self, events: Iterable[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in events:
            self._one(ev, out)
        return out

    def flush(self) -> list[StreamEvent]:
        """Emit a held event now (e.g. the stream went quiet after ``done``)."""
        out: list[StreamEvent] = []
        if self._held is not None:
            name, data = self._held
            self._held = None
            self._last = None
            out.append(self._typed(name, data))
        return out

    close = flush

    def _one(self, ev: SSEEvent, out: list[StreamEvent]) -> None:
        if ev.kind == "comment":
            out.extend(self.flush())
            out.append(StreamHeartbeat())
            return
        if ev.continuation:
            if self._held is not None and self._last == ev.event:
                self._held = (self._held[0], self._held[1] + ev.data)
            elif self._last == ev.event and ev.event in _DELTA_NAMES and ev.data:
                self._text.append(ev.data)
                out.append(StreamDelta(ev.data))
            return
        if self._held is not None:
            out.extend(self.flush())
        name = ev.event
        data = ev.data
        if "[DONE]" in data and data.strip() == "[DONE]" and name in ("", "message", "done"):
            self._last = None
            out.append(StreamDone("".join(self._text)))
        elif name in _DELTA_NAMES:
            self._last = name
            # Only text holding a "{" can be a JSON token: the usual raw token skips the check.
            text = _delta_text(data) if "{" in data else data
            self._text.append(text)
            out.append(StreamDelta(text))
        elif name in _HELD_NAMES:
            self._last = name
            self._held = (name, data)
        else:
            self._last = None  # unknown event types are ignored, continuations included

    def _typed(self, name: str, data: str) -> StreamEvent:
        if name == "done":
            return StreamDone(data)
        if name == "error":
            obj = _json_object(data)
            if obj is not None:
                for key in ("message", "error"):
                    if isinstance(obj.get(key), str) and obj[key]:
                        return StreamError(obj[key])
            return StreamError(data.strip() or "MomoHub reported an error without a message")
        obj = _json_object(data) or {}
        tool = str(obj.get("name") or "")
        if name == "tool_call_start":
            args = obj.get("arguments")
            if isinstance(args, str):
                # OpenAI-style builds send arguments as a JSON string.
                args = _json_object(args) or ({"input": args} if args else {})
            return StreamToolStart(tool, args if isinstance(args, dict) else {})
        result = obj.get("result") if obj else data
        return StreamToolResult(tool, "" if result is None else _as_text(result))


def decode_stream(events: Iterable[SSEEvent]) -> list[StreamEvent]:
    """All stream events of a complete SSE event sequence (held events included)."""
    decoder = StreamDecoder()
    return decoder.feed(events) + decoder.close()
