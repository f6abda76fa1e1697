"""OneBot v11 events, both ways: typed models of what implementations post, and builders of
what the bridge posts to bot frameworks.

`parse_event` (application role) narrows on `post_type` and then on each family's type field,
with `UnknownEvent` as the fallback so a new event kind is never an error. The builders
(implementation role) return plain dicts with every field NoneBot insists on.
"""

from __future__ import annotations

import time as _time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from adapters.onebot.cq import to_cq
from adapters.onebot.fields import INT32_MAX, INT32_MIN, EpochSeconds, Int, LooseStr, Message
from adapters.onebot.responses import describe_validation_error, load_object
from bridge.models import JSON, Segment

# ----- events implementations post (application role) ------------------------------------------


class _Event(BaseModel):
    # Implementations add fields (NapCat: message_format, real_id, ...); keep them for callers.
    model_config = ConfigDict(extra="allow")

    time: EpochSeconds
    self_id: Int


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        # Implementations send `"age": null`, `"card": null`; that means "not known".
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Sender(_Lenient):
    user_id: Int | None = None
    nickname: LooseStr = ""
    sex: LooseStr = "unknown"
    age: Int = 0


class GroupSender(Sender):
    card: LooseStr = ""
    role: LooseStr = "member"
    title: LooseStr = ""


class Anonymous(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Int
    name: LooseStr
    flag: LooseStr


class _MessageEvent(_Event):
    post_type: Literal["message"]
    sub_type: LooseStr
    message_id: Int
    user_id: Int
    message: Message
    raw_message: LooseStr = ""
    font: Int = 0
    sender: Sender = Field(default_factory=Sender)

    @model_validator(mode="after")
    def _fill_derived(self) -> _MessageEvent:
        if "raw_message" not in self.model_fields_set:
            self.raw_message = to_cq(self.message)
        if self.sender.user_id is None:
            self.sender.user_id = self.user_id
        return self


class PrivateMessageEvent(_MessageEvent):
    message_type: Literal["private"]
    sub_type: LooseStr = "friend"


class GroupMessageEvent(_MessageEvent):
    message_type: Literal["group"]
    sub_type: LooseStr = "normal"
    group_id: Int
    anonymous: Anonymous | None = None
    sender: GroupSender = Field(default_factory=GroupSender)


class MessageSentEvent(_Event):
    """NapCat's echo of the account's own messages; parsed only so callers can skip it."""

    post_type: Literal["message_sent"]
    message_type: LooseStr = ""
    message_id: Int | None = None
    user_id: Int | None = None
    group_id: Int | None = None
    message: Message = Field(default_factory=list)


class GroupRecallNotice(_Event):
    post_type: Literal["notice"]
    notice_type: Literal["group_recall"]
    group_id: Int
    user_id: Int
    operator_id: Int
    message_id: Int


class FriendRecallNotice(_Event):
    post_type: Literal["notice"]
    notice_type: Literal["friend_recall"]
    user_id: Int
    message_id: Int


class LifecycleEvent(_Event):
    post_type: Literal["meta_event"]
    meta_event_type: Literal["lifecycle"]
    sub_type: LooseStr


class Status(_Lenient):
    online: bool | None = None
    good: bool = True


class HeartbeatEvent(_Event):
    post_type: Literal["meta_event"]
    meta_event_type: Literal["heartbeat"]
    status: Status = Field(default_factory=Status)
    interval: Int = 0


class UnknownEvent(BaseModel):
    """An event of a kind we do not model (or a malformed known one); `raw` is what came in."""

    raw: dict[str, Any]
    reason: str = ""

    @property
    def post_type(self) -> str | None:
        value = self.raw.get("post_type")
        return value if isinstance(value, str) else None


# Narrowed twice: post_type picks the family, then each family's own type field picks the model.
_KnownEvent = Annotated[
    Annotated[PrivateMessageEvent | GroupMessageEvent, Field(discriminator="message_type")]
    | Annotated[GroupRecallNotice | FriendRecallNotice, Field(discriminator="notice_type")]
    | Annotated[LifecycleEvent | HeartbeatEvent, Field(discriminator="meta_event_type")]
    | MessageSentEvent,
    Field(discriminator="post_type"),
]
_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(_KnownEvent)

MessageEvent = PrivateMessageEvent | GroupMessageEvent
Event = (
    PrivateMessageEvent
    | GroupMessageEvent
    | MessageSentEvent
    | GroupRecallNotice
    | FriendRecallNotice
    | LifecycleEvent
    | HeartbeatEvent
    | UnknownEvent
)


def parse_event(raw: Mapping[str, Any] | str | bytes) -> Event:
    """Typed event from what an implementation posted. Only a non-object raises ProtocolError."""
    obj = load_object(raw, "event")
    try:
        return _EVENT_ADAPTER.validate_python(obj)
    except ValidationError as e:
        return UnknownEvent(raw=dict(obj), reason=describe_validation_error(e))


# ----- events the bridge emits (implementation role) ------------------------------------------------


def private_message_event(
    self_id: int,
    user_id: int,
    message_id: int,
    segments: Iterable[Segment],
    nickname: str,
    time_s: int,
    sub_type: str = "friend",
) -> JSON:
    _check_int32(message_id, "message_id")
    segs = list(segments)
    event = PrivateMessageEvent(
        time=time_s,
        self_id=self_id,
        post_type="message",
        message_type="private",
        sub_type=sub_type,
        message_id=message_id,
        user_id=user_id,
        message=segs,
        raw_message=to_cq(segs),
        font=0,
        sender=Sender(user_id=user_id, nickname=nickname, sex="unknown", age=0),
    )
    return event.model_dump(mode="json")


def group_message_event(
    self_id: int,
    user_id: int,
    message_id: int,
    segments: Iterable[Segment],
    nickname: str,
    time_s: int,
    group_id: int,
    role: Literal["owner", "admin", "member"] = "member",
    card: str = "",
    title: str = "",
) -> JSON:
    _check_int32(message_id, "message_id")
    segs = list(segments)
    event = GroupMessageEvent(
        time=time_s,
        self_id=self_id,
        post_type="message",
        message_type="group",
        sub_type="normal",
        message_id=message_id,
        user_id=user_id,
        group_id=group_id,
        anonymous=None,
        message=segs,
        raw_message=to_cq(segs),
        font=0,
        sender=GroupSender(
            user_id=user_id,
            nickname=nickname,
            sex="unknown",
            age=0,
            card=card,
            role=role,
            title=title,
        ),
    )
    return event.model_dump(mode="json")


def friend_recall_notice(
    self_id: int, user_id: int, message_id: int, time_s: int | None = None
) -> JSON:
    event = FriendRecallNotice(
        time=_now(time_s),
        self_id=self_id,
        post_type="notice",
        notice_type="friend_recall",
        user_id=user_id,
        message_id=message_id,
    )
    return event.model_dump(mode="json")


def group_recall_notice(
    self_id: int,
    group_id: int,
    user_id: int,
    operator_id: int,
    message_id: int,
    time_s: int | None = None,
) -> JSON:
    event = GroupRecallNotice(
        time=_now(time_s),
        self_id=self_id,
        post_type="notice",
        notice_type="group_recall",
        group_id=group_id,
        user_id=user_id,
        operator_id=operator_id,
        message_id=message_id,
    )
    return event.model_dump(mode="json")


def lifecycle_connect(self_id: int, time_s: int | None = None) -> JSON:
    event = LifecycleEvent(
        time=_now(time_s),
        self_id=self_id,
        post_type="meta_event",
        meta_event_type="lifecycle",
        sub_type="connect",
    )
    return event.model_dump(mode="json")


def heartbeat_event(
    self_id: int,
    interval_ms: int,
    online: bool = True,
    good: bool = True,
    time_s: int | None = None,
) -> JSON:
    event = HeartbeatEvent(
        time=_now(time_s),
        self_id=self_id,
        post_type="meta_event",
        meta_event_type="heartbeat",
        status=Status(online=online, good=good),
        interval=interval_ms,
    )
    return event.model_dump(mode="json")


def _now(time_s: int | None) -> int:
    return int(_time.time()) if time_s is None else time_s


def _check_int32(value: int, name: str) -> None:
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{name} {value} is outside int32; OneBot peers reject it")
