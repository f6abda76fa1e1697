"""Hub requests as typed models: a pydantic union discriminated by (protocol, type) Literals.

`parse_request(raw)` (in `inbound`, re-exported by `protocol`) turns one text frame into exactly
one of the request models below, or into the `FrameError` to answer it with, so the server
dispatches on the model's class:

    handlers = {P.HeartbeatRequest: on_heartbeat, P.MessageRequest: on_message, ...}
    frame = P.parse_request(raw, logged_in=user is not None)
    if isinstance(frame, P.FrameError):
        send(P.failure_from(frame))
    else:
        handlers[type(frame)](frame)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    InstanceOf,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from adapters.miochat.envelope import (
    AbortData,
    AckData,
    CompletionsData,
    FrameError,
    HeartbeatData,
    LoginData,
    Request,
    RequestId,
    ShareData,
    _document_type,
    contact_id,
    safe_request_id,
)
from adapters.miochat.onebot_data import (
    DeleteMessage,
    ForwardMessage,
    SendMessage,
    delete_message_of,
    forward_of,
    send_message_of,
)
from bridge.errors import ErrorCode


class _Frame(BaseModel):
    """Fields every request has. `contact` is the frame's top-level "id" (the real client's)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    request_id: RequestId
    contact: str | None = Field(None, alias="id")

    @field_validator("request_id", mode="before")
    @classmethod
    def _rid(cls, v: Any) -> Any:
        if safe_request_id(v) is None:
            raise ValueError("request_id must be a string or a number")
        return v

    @field_validator("contact", mode="before")
    @classmethod
    def _contact(cls, v: Any) -> str | None:
        return contact_id(v)


def _contact_of(info: ValidationInfo) -> str | None:
    return info.data.get("contact")


class LoginRequest(_Frame):
    protocol: Literal["system"] = "system"
    type: Literal["login"] = "login"
    data: LoginData


class HeartbeatRequest(_Frame):
    protocol: Literal["system"] = "system"
    type: Literal["heartbeat"] = "heartbeat"
    data: HeartbeatData = Field(default_factory=HeartbeatData)

    @field_validator("data", mode="before")
    @classmethod
    def _lenient(cls, v: Any) -> Any:
        # Clients send `data: {}`, `""` or nothing; anything but an object means no timestamp.
        return v if isinstance(v, dict | HeartbeatData) else {}


class ShareRequest(_Frame):
    protocol: Literal["system"] = "system"
    type: Literal["share"] = "share"
    data: ShareData


class AckRequest(_Frame):
    protocol: Literal["system"] = "system"
    type: Literal["ack"] = "ack"
    data: AckData


class MessageRequest(_Frame):
    """onebot/message in both shapes (the document's nested one, the client's segment list)."""

    protocol: Literal["onebot"] = "onebot"
    type: Literal["message"] = "message"
    data: InstanceOf[SendMessage]

    @field_validator("data", mode="before")
    @classmethod
    def _parse(cls, v: Any, info: ValidationInfo) -> Any:
        return v if isinstance(v, SendMessage) else send_message_of(v, _contact_of(info))


class DeleteMessageRequest(_Frame):
    """onebot/del_message, incl. the document's recall form without a top-level type."""

    protocol: Literal["onebot"] = "onebot"
    type: Literal["del_message"] = "del_message"
    data: InstanceOf[DeleteMessage]

    @field_validator("data", mode="before")
    @classmethod
    def _parse(cls, v: Any, info: ValidationInfo) -> Any:
        return v if isinstance(v, DeleteMessage) else delete_message_of(v, _contact_of(info))


class ForwardRequest(_Frame):
    protocol: Literal["onebot"] = "onebot"
    type: Literal["forward_msg"] = "forward_msg"
    data: InstanceOf[ForwardMessage]

    @field_validator("data", mode="before")
    @classmethod
    def _parse(cls, v: Any, info: ValidationInfo) -> Any:
        return v if isinstance(v, ForwardMessage) else forward_of(v, _contact_of(info))


class ModelsRequest(_Frame):
    protocol: Literal["openai"] = "openai"
    type: Literal["models"] = "models"
    data: Any = None


class CompletionsRequest(_Frame):
    protocol: Literal["openai"] = "openai"
    type: Literal["completions"] = "completions"
    data: CompletionsData


class AbortRequest(_Frame):
    protocol: Literal["openai"] = "openai"
    type: Literal["abort"] = "abort"
    data: AbortData


REQUEST_MODELS: dict[tuple[str, str], type[_Frame]] = {
    ("system", "login"): LoginRequest,
    ("system", "heartbeat"): HeartbeatRequest,
    ("system", "share"): ShareRequest,
    ("system", "ack"): AckRequest,
    ("onebot", "message"): MessageRequest,
    ("onebot", "del_message"): DeleteMessageRequest,
    ("onebot", "forward_msg"): ForwardRequest,
    ("openai", "models"): ModelsRequest,
    ("openai", "completions"): CompletionsRequest,
    ("openai", "abort"): AbortRequest,
}
PROTOCOLS: tuple[str, ...] = tuple(sorted({p for p, _ in REQUEST_MODELS}))


def frame_tag(v: Any) -> str | None:
    """The union's discriminator: `"<protocol>/<type>"` of a frame dict or a request model.

    A onebot frame without a top-level type gets its type from the shape of its data, as in
    `parse_frame` (so the document's recall form is a `DeleteMessageRequest`).
    """
    if isinstance(v, _Frame):
        return f"{getattr(v, 'protocol', '')}/{getattr(v, 'type', '')}"
    if not isinstance(v, dict):
        return None
    protocol, ftype = v.get("protocol"), v.get("type")
    if not isinstance(ftype, str):
        ftype = _document_type(protocol, v.get("data"))
    if not isinstance(protocol, str) or ftype is None:
        return None
    return f"{protocol}/{ftype}"


RequestFrame = Annotated[
    Annotated[LoginRequest, Tag("system/login")]
    | Annotated[HeartbeatRequest, Tag("system/heartbeat")]
    | Annotated[ShareRequest, Tag("system/share")]
    | Annotated[AckRequest, Tag("system/ack")]
    | Annotated[MessageRequest, Tag("onebot/message")]
    | Annotated[DeleteMessageRequest, Tag("onebot/del_message")]
    | Annotated[ForwardRequest, Tag("onebot/forward_msg")]
    | Annotated[ModelsRequest, Tag("openai/models")]
    | Annotated[CompletionsRequest, Tag("openai/completions")]
    | Annotated[AbortRequest, Tag("openai/abort")],
    Discriminator(frame_tag),
]
REQUEST_FRAME: TypeAdapter[RequestFrame] = TypeAdapter(RequestFrame)


def _name(v: str) -> str:
    return repr(v if len(v) <= 64 else v[:64] + "…")


def _reason(e: ValidationError) -> str:
    """Like `validation_reason`, with locations relative to `data` (the frame's own fields keep
    theirs) and without the discriminator's tag in them."""
    parts = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and "/" in loc[0]:
            loc = loc[1:]
        if loc and loc[0] == "data":
            loc = loc[1:]
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


_WIRE = {"strict_wire": True}


def typed_request(
    req: Request, *, logged_in: bool = True, strict_wire: bool = False
) -> RequestFrame | FrameError:
    """The typed model of an already parsed envelope, or the `FrameError` to answer it with.

    Codes: UNAUTHENTICATED (`logged_in` false and not system/login), UNKNOWN_PROTOCOL,
    UNKNOWN_TYPE, LOGIN_FAILED (bad system/login data; the server then closes with 4001),
    INVALID_DATA (any other bad data). Every error carries the request_id, protocol and type.
    """
    rid, protocol, ftype = req.request_id, req.protocol, req.type
    if not logged_in and (protocol, ftype) != ("system", "login"):
        return FrameError(
            ErrorCode.UNAUTHENTICATED,
            "log in first (system/login)",
            request_id=rid,
            protocol=protocol,
            type=ftype,
        )
    if protocol not in PROTOCOLS:
        return FrameError(
            ErrorCode.UNKNOWN_PROTOCOL,
            f"unknown protocol {_name(protocol)}; expected one of {list(PROTOCOLS)}",
            request_id=rid,
            protocol=protocol,
            type=ftype,
        )
    if (protocol, ftype) not in REQUEST_MODELS:
        return FrameError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown type {_name(ftype)} for protocol {protocol!r}",
            request_id=rid,
            protocol=protocol,
            type=ftype,
        )
    fields = {
        "request_id": rid,
        "protocol": protocol,
        "type": ftype,
        "id": req.contact,
        "data": req.data,
    }
    try:
        return REQUEST_FRAME.validate_python(fields, context=_WIRE if strict_wire else None)
    except ValidationError as e:
        login = (protocol, ftype) == ("system", "login")
        code = ErrorCode.LOGIN_FAILED if login else ErrorCode.INVALID_DATA
        return FrameError(code, _reason(e), request_id=rid, protocol=protocol, type=ftype)
