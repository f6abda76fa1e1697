"""Hub frames in: the envelope (`parse_frame`) and the request payloads inside it (the onebot
ones, parsed without pydantic, are in `onebot_data`).

Pure functions over plain data. Every refusal is a `FrameError` carrying the contract's error code:
BAD_FRAME from `parse_frame` (answered with `request_id: null`), INVALID_DATA (`DataError`, also a
ValueError) from the payload parsers. The contract is docs/protocol.md; where the real
mio-chat client differs from the document we accept both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.miochat.wire import (
    INT64_MAX,
    INT64_MIN,
    WireError,
    has_surrogate,
    json_hazard,
    loads,
)
from bridge.errors import ErrorCode

RequestId = str | int | float
USER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONVERSATION_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class FrameError(Exception):
    """A request the hub must answer with a failure frame (the connection stays open)."""

    def __init__(
        self,
        code: ErrorCode,
        reason: str,
        *,
        request_id: RequestId | None = None,
        protocol: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.request_id = request_id
        self.protocol = protocol
        self.type = type

    def __repr__(self) -> str:
        return f"FrameError({self.code!s}, {self.reason!r}, request_id={self.request_id!r})"


class DataError(FrameError, ValueError):
    """A request's data is unusable: INVALID_DATA. Also a ValueError, as the parsers always raised."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.INVALID_DATA, reason)


@dataclass(frozen=True, slots=True)
class Request:
    request_id: RequestId
    protocol: str
    type: str
    data: Any
    contact: str | None  # the top-level "id" the real client sends with onebot/message


def safe_request_id(v: Any) -> RequestId | None:
    """`v` if it can be echoed as a request_id in valid JSON, else None."""
    # Exact types first: every frame's id passes here at least twice (parsed, then echoed).
    kind = type(v)
    if kind is int:
        return v if INT64_MIN <= v <= INT64_MAX else None
    if kind is str:
        return v if v.isascii() or not has_surrogate(v) else None
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return None if has_surrogate(v) else v
    if isinstance(v, int):
        return v if INT64_MIN <= v <= INT64_MAX else None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return None


def _valid_request_id(v: Any) -> bool:
    # bool is an int subclass in Python but not a JSON number a client means as an id.
    return safe_request_id(v) is not None


def contact_id(v: Any) -> str | None:
    """A contact id as text: a JSON string or a 64-bit integer; anything else is None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return None if has_surrogate(v) else v
    if isinstance(v, int) and INT64_MIN <= v <= INT64_MAX:
        return str(v)
    return None


def _document_type(protocol: Any, data: Any) -> str | None:
    """The user's document sends onebot frames without a top-level type; tell them apart by shape.

    Its recall frame says `data.type == "message"` too, so the shape decides, not that field.
    """
    if protocol != "onebot" or not isinstance(data, dict):
        return None
    if data.get("type") == "forward_msg" or isinstance(data.get("content"), list):
        return "forward_msg"
    content = data.get("content")
    if isinstance(content, dict) and "message_id" in content and "message" not in content:
        return "del_message"
    if isinstance(data.get("data"), dict) or "message" in data:
        return "message"
    return None


def parse_frame(raw: str | bytes) -> Request:
    """The envelope of one text frame; raises `FrameError`.

    BAD_FRAME (always with `request_id` None, so nothing unsafe is echoed): not strict JSON (see
    `wire.loads`: too deep, int beyond int64, NaN/Infinity/1e400, lone surrogates anywhere), not
    an object, no usable request_id. UNKNOWN_PROTOCOL / UNKNOWN_TYPE carry the request_id.
    """
    try:
        obj = loads(raw)
    except WireError as e:
        raise bad_json(e) from None
    return envelope_of(obj)


def bad_json(e: WireError) -> FrameError:
    """The BAD_FRAME answering a frame that `wire.loads` refused."""
    return FrameError(ErrorCode.BAD_FRAME, f"frame is not valid JSON: {e}")


def envelope_of(obj: Any) -> Request:
    """`parse_frame` past the JSON: the envelope of an already parsed frame; raises `FrameError`."""
    if not isinstance(obj, dict):
        raise FrameError(
            ErrorCode.BAD_FRAME, f"frame must be a JSON object, got {type(obj).__name__}"
        )
    rid = obj.get("request_id")
    if rid is None:
        raise FrameError(ErrorCode.BAD_FRAME, "frame has no request_id")
    if not _valid_request_id(rid):
        raise FrameError(ErrorCode.BAD_FRAME, "request_id must be a string or a number")
    protocol = obj.get("protocol")
    ftype = obj.get("type")
    if not isinstance(protocol, str):
        raise FrameError(ErrorCode.UNKNOWN_PROTOCOL, "frame has no protocol string", request_id=rid)
    if not isinstance(ftype, str):
        ftype = _document_type(protocol, obj.get("data"))
        if ftype is None:
            raise FrameError(
                ErrorCode.UNKNOWN_TYPE,
                "frame has no type string",
                request_id=rid,
                protocol=protocol,
            )
    return Request(
        request_id=rid,
        protocol=protocol,
        type=ftype,
        data=obj.get("data"),
        contact=contact_id(obj.get("id")),
    )


# ----- request payloads ----------------------------------------------------------------------


class _Payload(BaseModel):
    """A request's `data` object. Any lone surrogate (and, unless a model opts out, any integer
    beyond int64 or non-finite float) anywhere in it is a validation error naming the field."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)
    _check_numbers: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _json_safe(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, BaseModel):
            return v
        if not isinstance(v, dict):
            raise ValueError("data must be an object")
        if info.context and info.context.get("strict_wire"):
            return v  # parsed by `wire.loads`, which already refused all of these
        found = json_hazard(v, numbers=cls._check_numbers)
        if found is not None:
            where, problem = found
            raise ValueError(f"{where or 'data'} {problem}")
        return v


# The field checks below are plain functions so that the pydantic validators and the shortcuts
# for common frames (`inbound`) share one definition of what is valid.


def login_user_id(v: Any) -> str:
    """`mio-chat-id` as text; ValueError when unusable."""
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise ValueError("mio-chat-id must be a string or an integer")
    if isinstance(v, int) and v.bit_length() > 256:  # str() of a huge int is slow or fails
        raise ValueError("mio-chat-id must be 1-64 characters of A-Z a-z 0-9 _ -")
    s = str(v)
    if not USER_ID_RE.fullmatch(s):
        raise ValueError("mio-chat-id must be 1-64 characters of A-Z a-z 0-9 _ -")
    return s


def login_token(v: Any) -> str:
    """`mio-chat-token` as text ("" when null); ValueError when unusable."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise ValueError("mio-chat-token must be a string")
    return str(v)


class LoginData(_Payload):
    user_id: str = Field(alias="mio-chat-id")
    token: str = Field("", alias="mio-chat-token")

    @field_validator("user_id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> str:
        return login_user_id(v)

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: Any) -> str:
        return login_token(v)


_TIMESTAMP_MAX_CHARS = 32
_TIMESTAMP_LIMIT = float(2**63)


def heartbeat_timestamp(v: Any) -> int | float | str | None:
    """A heartbeat's `timestamp` as kept (None when absent); ValueError when unusable."""
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError("timestamp must be a number of milliseconds")
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise ValueError("timestamp is outside the 64-bit range")
        return v
    if isinstance(v, str):
        if len(v) > _TIMESTAMP_MAX_CHARS:
            raise ValueError(f"timestamp is longer than {_TIMESTAMP_MAX_CHARS} characters")
        try:
            value = float(v)
        except ValueError:
            return v  # not a number: treated as absent, as clients have always been allowed
    else:
        value = v
    if math.isfinite(value) and abs(value) >= _TIMESTAMP_LIMIT:
        raise ValueError("timestamp is outside the 64-bit range")
    return v


class HeartbeatData(_Payload):
    """`{"timestamp": <ms>|""}`. Unreadable text ("soon", "inf") counts as absent; a timestamp
    that is too long or outside the 64-bit range is a validation error (INVALID_DATA)."""

    model_config = ConfigDict(allow_inf_nan=True)
    _check_numbers: ClassVar[bool] = False
    timestamp: int | float | str | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any) -> Any:
        return heartbeat_timestamp(v)

    def millis(self) -> float | None:
        ts = self.timestamp
        if ts is None or ts == "":
            return None
        try:
            value = float(ts)
        except (TypeError, ValueError, OverflowError):
            return None
        return value if math.isfinite(value) else None

    def delay(self, now_ms: float) -> int:
        """Server now minus the client's timestamp in ms, 0 when absent; fits an int64."""
        sent: Any = self.timestamp
        # The usual heartbeat: float minus int converts the int just as `millis` would.
        if type(sent) is not int or type(now_ms) is not float:
            sent = self.millis()
            if sent is None:
                return 0
        return max(INT64_MIN, min(INT64_MAX, int(now_ms - sent)))


class AckData(_Payload):
    """system/ack: confirms every push up to `seq`."""

    seq: StrictInt = Field(ge=0, le=INT64_MAX)


class CompletionsData(_Payload):
    model: str = ""
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    stream: bool = True
    tools: list[dict[str, Any]] | None = None
    conversation_id: str = "default"

    @field_validator("conversation_id", mode="before")
    @classmethod
    def _conversation(cls, v: Any) -> Any:
        return conversation_id_of(v)


def conversation_id_of(v: Any) -> str:
    """A completion's `conversation_id` ("default" when null); ValueError when unusable."""
    if v is None:
        return "default"
    if not isinstance(v, str) or not CONVERSATION_ID_RE.fullmatch(v):
        raise ValueError("conversation_id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return v


class AbortData(_Payload):
    request_id: RequestId

    @field_validator("request_id", mode="before")
    @classmethod
    def _rid(cls, v: Any) -> Any:
        if not _valid_request_id(v):
            raise ValueError("request_id must be a string or a number")
        return v


class ShareData(_Payload):
    contactor: dict[str, Any]


def validation_reason(e: ValidationError | ValueError) -> str:
    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    if isinstance(e, FrameError):
        return e.reason
    return str(e)
