"""Sans-I/O core of OneBot v11: action frames, responses, events and action parameters.

No sockets, no awaits. The bridge plays both OneBot roles and this module serves both:
- as an IMPLEMENTATION (bot frameworks call actions on it): `parse_action`, `validate_params`,
  `ok`/`failed`, and the event builders (`private_message_event`, ...), which return plain dicts
  with every field NoneBot insists on;
- as an APPLICATION (NapCat/Lagrange/go-cqhttp post events to it): `parse_event`, a pydantic
  discriminated union narrowed on `post_type` and then on the type field of each family, with
  `UnknownEvent` as the fallback so a new event kind is never an error.
"""

from __future__ import annotations

import json
import re
import time as _time
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters.onebot.cq import to_cq
from adapters.onebot.message import (
    ForwardNode,
    json_type_name,
    normalize_message,
    parse_forward_nodes,
    segments_to_json,
)
from bridge.models import JSON, Segment

# ----- errors and return codes -----------------------------------------------------------------


class RetCode(IntEnum):
    OK = 0
    ASYNC = 1
    BAD_PARAMS = 100  # HTTP-era code some frameworks still check for
    INVALID_DATA = 102
    OPERATION_FAILED = 103
    BAD_REQUEST = 1400
    UNAUTHORIZED = 1401
    FORBIDDEN = 1403
    NOT_FOUND = 1404


class _Absent:
    """Marks an `echo` the request did not carry (a JSON null is a real echo and goes back)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_ECHO"

    def __bool__(self) -> bool:
        return False


NO_ECHO: Final = _Absent()


class ProtocolError(Exception):
    """A frame the peer must get a `failed` response for; the connection stays open."""

    def __init__(self, retcode: int, message: str, *, echo: Any = NO_ECHO) -> None:
        super().__init__(f"{retcode}: {message}")
        self.retcode = int(retcode)
        self.message = message
        # Kept when the frame had one, so the caller's pending request is answered, not timed out.
        self.echo = echo

    def response(self) -> JSON:
        return failed(self.retcode, self.message, self.echo)


# ----- shared field types ------------------------------------------------------------------------

_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
# An epoch above this in seconds is in the year 5138: the peer sent milliseconds.
_MS_THRESHOLD: Final = 100_000_000_000
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1


def _coerce_int(value: Any) -> int:
    # bool is an int in Python but never an id on the wire; floats only when integral
    # (some JSON encoders write 123.0).
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    raise ValueError("must be an integer or a numeric string")


def _coerce_time(value: Any) -> int:
    if isinstance(value, float) and not isinstance(value, bool):
        value = int(value)
    seconds = _coerce_int(value)
    return seconds // 1000 if seconds > _MS_THRESHOLD else seconds


def _coerce_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be a string")


def _coerce_forward_id(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be a forward id (string or integer)")


Int = Annotated[int, BeforeValidator(_coerce_int)]
EpochSeconds = Annotated[int, BeforeValidator(_coerce_time)]
LooseStr = Annotated[str, BeforeValidator(_coerce_str)]
ForwardId = Annotated[str, BeforeValidator(_coerce_forward_id)]
Message = Annotated[
    list[Segment],
    PlainValidator(normalize_message),
    PlainSerializer(segments_to_json, return_type=list),
]
ForwardNodes = Annotated[list[ForwardNode], PlainValidator(parse_forward_nodes)]


def _check_int32(value: int, name: str) -> None:
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{name} {value} is outside int32; OneBot peers reject it")


# ----- action requests and responses ---------------------------------------------------------------


class ActionRequest(BaseModel):
    """`{"action", "params", "echo"}`. `has_echo` tells an absent echo from a JSON null."""

    model_config = ConfigDict(extra="ignore")

    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    echo: Any = None

    @property
    def has_echo(self) -> bool:
        return "echo" in self.model_fields_set

    @property
    def echo_or_absent(self) -> Any:
        return self.echo if self.has_echo else NO_ECHO

    @property
    def base_action(self) -> str:
        return base_action(self.action)

    def ok(self, data: Any = None) -> JSON:
        return ok(data, self.echo_or_absent)

    def failed(self, retcode: int, message: str) -> JSON:
        return failed(retcode, message, self.echo_or_absent)

    def to_json(self) -> JSON:
        """The frame to send when the bridge calls an action (application role)."""
        out: JSON = {"action": self.action, "params": dict(self.params)}
        if self.has_echo:
            out["echo"] = self.echo
        return out


def base_action(action: str) -> str:
    """The action without OneBot's `_async` / `_rate_limited` suffix."""
    for suffix in ("_async", "_rate_limited"):
        if action.endswith(suffix) and len(action) > len(suffix):
            return action[: -len(suffix)]
    return action


def parse_action(raw: str | bytes | Mapping[str, Any]) -> ActionRequest:
    if isinstance(raw, str | bytes | bytearray):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(RetCode.BAD_REQUEST, f"request is not valid JSON: {e}") from None
    else:
        obj = raw
    if not isinstance(obj, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"request must be a JSON object, not {json_type_name(obj)}"
        )
    echo = obj["echo"] if "echo" in obj else NO_ECHO
    if "action" not in obj:
        raise ProtocolError(RetCode.BAD_REQUEST, "action: is required", echo=echo)
    action = obj["action"]
    if not isinstance(action, str) or not action:
        raise ProtocolError(RetCode.BAD_REQUEST, "action: must be a non-empty string", echo=echo)
    params = obj.get("params")
    if params is None:  # absent and null both mean "no parameters"
        params = {}
    if not isinstance(params, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST,
            f"params: must be an object, not {json_type_name(params)}",
            echo=echo,
        )
    fields: JSON = {"action": action, "params": dict(params)}
    if echo is not NO_ECHO:
        fields["echo"] = echo
    return ActionRequest.model_validate(fields)


def ok(data: Any = None, echo: Any = NO_ECHO) -> JSON:
    return _response("ok", RetCode.OK, data, "", echo)


def failed(retcode: int, message: str, echo: Any = NO_ECHO) -> JSON:
    return _response("failed", retcode, None, message, echo)


def _response(status: str, retcode: int, data: Any, message: str, echo: Any) -> JSON:
    # `wording` is go-cqhttp's human-readable twin of `message`; frameworks show either.
    out: JSON = {
        "status": status,
        "retcode": int(retcode),
        "data": data,
        "message": message,
        "wording": message,
    }
    if echo is not NO_ECHO:
        out["echo"] = echo
    return out


class ActionResponse(BaseModel):
    """A response from a OneBot implementation (application role)."""

    model_config = ConfigDict(extra="allow")

    status: str
    retcode: Int = 0
    data: Any = None
    message: LooseStr = ""
    wording: LooseStr = ""
    echo: Any = None

    @property
    def has_echo(self) -> bool:
        return "echo" in self.model_fields_set

    # The implementation-role builders, reachable from here too; they return plain dicts.
    ok = staticmethod(ok)
    failed = staticmethod(failed)

    @property
    def is_ok(self) -> bool:
        return self.status in ("ok", "async") and self.retcode in (RetCode.OK, RetCode.ASYNC)

    @property
    def reason(self) -> str:
        return self.wording or self.message or f"retcode {self.retcode}"


def is_response_frame(obj: Any) -> bool:
    """On a Universal connection a frame is an event or a response; events carry post_type."""
    return isinstance(obj, Mapping) and "post_type" not in obj and "status" in obj


def parse_response(raw: str | bytes | Mapping[str, Any]) -> ActionResponse:
    obj = _load_object(raw, "response")
    try:
        return ActionResponse.model_validate(obj)
    except ValidationError as e:
        raise ProtocolError(RetCode.BAD_REQUEST, describe_validation_error(e)) from None


# ----- events ----------------------------------------------------------------------------------


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
    obj = _load_object(raw, "event")
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


# ----- action parameters (implementation role) -------------------------------------------------


_BOOL: Final = TypeAdapter(bool)


class ActionParams(BaseModel):
    """Base of the typed parameter models `validate_params` returns."""

    # Frameworks send extra, implementation-specific parameters; they are not errors.
    model_config = ConfigDict(extra="ignore")


class _SendParams(ActionParams):
    message: Message
    auto_escape: bool = False

    @model_validator(mode="before")
    @classmethod
    def _auto_escape(cls, data: Any) -> Any:
        # auto_escape turns a string message into plain text; it must act before `message` is
        # parsed as CQ code, so it is resolved here (an invalid value is reported by its field).
        if isinstance(data, Mapping) and isinstance(data.get("message"), str):
            try:
                plain = _BOOL.validate_python(data.get("auto_escape", False))
            except ValidationError:
                return data
            if plain:
                return {**data, "message": [{"type": "text", "data": {"text": data["message"]}}]}
        return data

    @field_validator("message")
    @classmethod
    def _not_empty(cls, value: list[Segment]) -> list[Segment]:
        if not value:
            raise ValueError("is empty")
        return value


def _resolve_target(params: Any) -> None:
    # OneBot: without message_type, the presence of group_id decides.
    if params.message_type is None:
        params.message_type = "group" if params.group_id is not None else "private"
    if params.message_type == "group" and params.group_id is None:
        raise ValueError("group_id: is required for a group message")
    if params.message_type == "private" and params.user_id is None:
        raise ValueError("user_id: is required for a private message")


class SendPrivateMsgParams(_SendParams):
    user_id: Int


class SendGroupMsgParams(_SendParams):
    group_id: Int


class SendMsgParams(_SendParams):
    message_type: Literal["private", "group"] | None = None
    user_id: Int | None = None
    group_id: Int | None = None

    @model_validator(mode="after")
    def _target(self) -> SendMsgParams:
        _resolve_target(self)
        return self


class DeleteMsgParams(ActionParams):
    message_id: Int


class GetMsgParams(ActionParams):
    message_id: Int


class GetForwardMsgParams(ActionParams):
    id: ForwardId | None = None
    message_id: ForwardId | None = None

    @model_validator(mode="after")
    def _one_id(self) -> GetForwardMsgParams:
        if self.id is None and self.message_id is None:
            raise ValueError("id: is required (or message_id)")
        return self

    @property
    def forward_id(self) -> str:
        return self.id if self.id is not None else str(self.message_id)


class _ForwardParams(ActionParams):
    messages: ForwardNodes

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ForwardNode]) -> list[ForwardNode]:
        if not value:
            raise ValueError("is empty")
        return value


class SendPrivateForwardMsgParams(_ForwardParams):
    user_id: Int


class SendGroupForwardMsgParams(_ForwardParams):
    group_id: Int


class SendForwardMsgParams(_ForwardParams):
    message_type: Literal["private", "group"] | None = None
    user_id: Int | None = None
    group_id: Int | None = None

    @model_validator(mode="after")
    def _target(self) -> SendForwardMsgParams:
        _resolve_target(self)
        return self


class GetStrangerInfoParams(ActionParams):
    user_id: Int
    no_cache: bool = False


class GetGroupInfoParams(ActionParams):
    group_id: Int
    no_cache: bool = False


class GetGroupMemberInfoParams(ActionParams):
    group_id: Int
    user_id: Int
    no_cache: bool = False


class GetGroupMemberListParams(ActionParams):
    group_id: Int
    no_cache: bool = False


class HandleQuickOperationParams(ActionParams):
    context: dict[str, Any]
    operation: dict[str, Any]

    @property
    def event(self) -> Event:
        """The event the quick operation answers (the framework echoes it back as `context`)."""
        return parse_event(self.context)


PARAM_MODELS: Final[Mapping[str, type[ActionParams]]] = {
    "send_private_msg": SendPrivateMsgParams,
    "send_group_msg": SendGroupMsgParams,
    "send_msg": SendMsgParams,
    "delete_msg": DeleteMsgParams,
    "get_msg": GetMsgParams,
    "get_forward_msg": GetForwardMsgParams,
    "send_private_forward_msg": SendPrivateForwardMsgParams,
    "send_group_forward_msg": SendGroupForwardMsgParams,
    "send_forward_msg": SendForwardMsgParams,
    "get_stranger_info": GetStrangerInfoParams,
    "get_group_info": GetGroupInfoParams,
    "get_group_member_info": GetGroupMemberInfoParams,
    "get_group_member_list": GetGroupMemberListParams,
    ".handle_quick_operation": HandleQuickOperationParams,
}


def validate_params(action: str, params: Any) -> ActionParams | None:
    """Typed parameters for `action`, or None when no model exists for it.

    Raises ProtocolError(1400, "<field>: <why>") when the parameters do not fit.
    """
    model = PARAM_MODELS.get(base_action(action))
    if model is None:
        return None
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"params: must be an object, not {json_type_name(params)}"
        )
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise ProtocolError(RetCode.BAD_REQUEST, describe_validation_error(e)) from None


# ----- helpers -----------------------------------------------------------------------------------


def describe_validation_error(error: ValidationError) -> str:
    """`<field>: <why>` for each problem, joined by `; `."""
    parts = []
    for err in error.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "missing":
            why = "is required"
        elif isinstance(cause, Exception):
            why = str(cause)
        else:
            why = err["msg"]
        loc = ".".join(str(p) for p in err["loc"])
        # Model-level checks already name their field ("user_id: is required ...").
        parts.append(f"{loc}: {why}" if loc else why)
    return "; ".join(parts)


def _load_object(raw: Mapping[str, Any] | str | bytes, what: str) -> Mapping[str, Any]:
    if isinstance(raw, str | bytes | bytearray):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(RetCode.BAD_REQUEST, f"{what} is not valid JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"{what} must be a JSON object, not {json_type_name(raw)}"
        )
    return raw
