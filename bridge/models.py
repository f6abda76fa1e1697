"""The neutral vocabulary of the core.

Edges translate their wire formats into these types and back; the core (router, sessions, plugins)
only ever sees these. Message content uses OneBot-style segments because every edge we speak
(hub, OneBot) already uses that shape, and MomoHub content parts map onto it losslessly for text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.errors import ErrorCode

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Segment:
    type: str
    data: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"type": self.type, "data": dict(self.data)}

    @classmethod
    def text(cls, text: str) -> Segment:
        return cls("text", {"text": text})


def plain_text(segments: list[Segment]) -> str:
    """Concatenated text of the `text` segments (what a language model can read)."""
    return "".join(str(s.data.get("text", "")) for s in segments if s.type == "text")


@dataclass(frozen=True, slots=True)
class UserRef:
    """A hub user as the core knows them."""

    id: str
    is_admin: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation, whatever edge it came from.

    ``user_id`` is who owns it (a hub user today; a QQ account with a group or a user, or a
    scheduled job later), ``contact`` the character, model or bot it talks to, ``thread`` which of
    that pair's conversations.
    """

    user_id: str
    contact: str
    thread: str = "default"

    def __str__(self) -> str:
        return f"{self.user_id}/{self.contact}/{self.thread}"


@dataclass(slots=True)
class ChatMessage:
    conversation: ConversationKey
    sender: UserRef
    segments: list[Segment]
    message_id: int
    time: float


@dataclass(frozen=True, slots=True)
class RecallRequest:
    """Remove one stored message from a target, by the ids the target's system gave it.

    ``refs`` are the ids recorded for the message. ``unresolved`` means the message's turn was
    stopped before those ids could be learned: the target may find them from what it knows of
    the conversation, but never by matching text.
    """

    user: UserRef
    conversation: ConversationKey
    message_id: int
    segments: list[Segment]
    outgoing: bool
    refs: list[str] = field(default_factory=list)
    unresolved: bool = False


@dataclass(frozen=True, slots=True)
class Contact:
    """Something a user can message: a bot framework account or an AI character."""

    id: str
    kind: Literal["onebot", "character"]
    name: str
    avatar: str | None = None
    bio: str | None = None
    default: bool = False

    def to_json(self) -> JSON:
        out: JSON = {"id": self.id, "kind": self.kind, "name": self.name}
        if self.avatar:
            out["avatar"] = self.avatar
        if self.bio:
            out["bio"] = self.bio
        if self.default:
            out["default"] = True
        return out


@dataclass(frozen=True, slots=True)
class ModelGroup:
    owner: str
    models: list[str]
    # Display names of models whose id says little (an agent's number), by model id.
    names: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        out: JSON = {"owner": self.owner, "models": list(self.models)}
        if self.names:
            out["names"] = dict(self.names)
        return out


# ----- reply events: what a target streams back --------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    text: str = ""
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    action: Literal["started", "pending", "running", "finished"]
    params: str = ""
    result: str | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str | None = "stop"
    usage: JSON | None = None
    # Ids the target's own system gave the request and the reply (e.g. MomoHub message ids), so a
    # later recall can find them there. `ref_system` names that system.
    ref_system: str = ""
    request_ref: str | None = None
    reply_ref: str | None = None
    sender_name: str = ""
    # The whole reply, when it is known at once (recovered after a crash) rather than streamed.
    text: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrorCode
    reason: str


ReplyEvent = Delta | ToolCall | Done | Failed


@dataclass(slots=True)
class CompletionRequest:
    """An OpenAI-style completion request from a hub user."""

    user: UserRef
    model: str
    messages: list[JSON]
    conversation_id: str = "default"
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    tools: list[JSON] | None = None
    # False: the client asked for a whole answer; a target whose upstream can answer either way
    # asks for one (the frames stay the same: one update, then completed).
    stream: bool = True
