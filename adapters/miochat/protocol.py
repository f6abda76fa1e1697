"""Sans-I/O core of the hub protocol (mio-chat envelope): frames in, typed requests out, and back.

No sockets, no awaits: everything here is tested with plain data. The contract is
shared/spec/hub-protocol.md; where the real mio-chat client differs from the document we accept both.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.errors import ErrorCode
from bridge.models import Segment

RequestId = str | int | float
USER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


@dataclass(frozen=True, slots=True)
class Request:
    request_id: RequestId
    protocol: str
    type: str
    data: Any
    contact: str | None  # the top-level "id" the real client sends with onebot/message


def _valid_request_id(v: Any) -> bool:
    # bool is an int subclass in Python but not a JSON number a client means as an id.
    return isinstance(v, str | int | float) and not isinstance(v, bool)


def _document_type(protocol: str, data: Any) -> str | None:
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


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON: echoing one back would break clients.
    raise ValueError(f"{name} is not valid JSON")


def parse_frame(raw: str | bytes) -> Request:
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise FrameError(ErrorCode.BAD_FRAME, f"frame is not valid JSON: {e}") from None
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
    contact = obj.get("id")
    return Request(
        request_id=rid,
        protocol=protocol,
        type=ftype,
        data=obj.get("data"),
        contact=str(contact)
        if isinstance(contact, str | int) and not isinstance(contact, bool)
        else None,
    )


# ----- request payloads ----------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class LoginData(_Payload):
    user_id: str = Field(alias="mio-chat-id")
    token: str = Field("", alias="mio-chat-token")

    @field_validator("user_id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError("mio-chat-id must be a string or an integer")
        s = str(v)
        if not USER_ID_RE.fullmatch(s):
            raise ValueError("mio-chat-id must be 1-64 characters of A-Z a-z 0-9 _ -")
        return s

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError("mio-chat-token must be a string")
        return str(v)


class HeartbeatData(_Payload):
    timestamp: int | float | str | None = None

    def millis(self) -> float | None:
        ts = self.timestamp
        if ts is None or ts == "":
            return None
        try:
            value = float(ts)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None


def _segments(v: Any) -> list[Segment]:
    if isinstance(v, dict) and "type" in v:
        v = [v]
    if isinstance(v, str):
        return [Segment.text(v)] if v else []
    if not isinstance(v, list):
        raise ValueError("message must be a list of segments")
    out: list[Segment] = []
    for i, seg in enumerate(v):
        if not isinstance(seg, dict) or not isinstance(seg.get("type"), str):
            raise ValueError(f"segment {i} must be an object with a string type")
        data = seg.get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"segment {i} data must be an object")
        out.append(Segment(seg["type"], dict(data)))
    return out


@dataclass(frozen=True, slots=True)
class SendMessage:
    contact: str
    segments: list[Segment]


def parse_send_message(req: Request) -> SendMessage:
    """Both shapes: the document's nested one and the real client's top-level id + segment list."""
    data = req.data
    if isinstance(data, list):
        if not req.contact:
            raise ValueError("message frame has no contact id")
        segs = _segments(data)
        contact = req.contact
    elif isinstance(data, dict):
        contact_v = data.get("id", req.contact)
        if isinstance(contact_v, bool) or not isinstance(contact_v, str | int):
            raise ValueError("data.id (the contact) is missing")
        contact = str(contact_v)
        inner = data.get("data", data.get("content"))
        if isinstance(inner, dict):
            segs = _segments(inner.get("message"))
        elif isinstance(inner, list):
            segs = _segments(inner)
        elif "message" in data:
            segs = _segments(data["message"])
        else:
            raise ValueError("data.data.message (the segments) is missing")
    else:
        raise ValueError("data must be an object or a list of segments")
    if not segs:
        raise ValueError("message is empty")
    return SendMessage(contact, segs)


def _int_id(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{what} must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise ValueError(f"{what} must be an integer")


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    contact: str | None
    message_id: int


def parse_del_message(req: Request) -> DeleteMessage:
    data = req.data
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    content = data.get("content", data)
    if not isinstance(content, dict) or "message_id" not in content:
        raise ValueError("data.content.message_id is missing")
    contact = data.get("id", req.contact)
    return DeleteMessage(
        contact=str(contact)
        if isinstance(contact, str | int) and not isinstance(contact, bool)
        else None,
        message_id=_int_id(content["message_id"], "message_id"),
    )


@dataclass(frozen=True, slots=True)
class ForwardItem:
    message_id: int | None
    segments: list[Segment]


@dataclass(frozen=True, slots=True)
class ForwardMessage:
    contact: str
    items: list[ForwardItem]


def parse_forward(req: Request) -> ForwardMessage:
    data = req.data
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    contact = data.get("id", req.contact)
    if isinstance(contact, bool) or not isinstance(contact, str | int):
        raise ValueError("data.id (the contact) is missing")
    content = data.get("content")
    if not isinstance(content, list) or not content:
        raise ValueError("data.content must be a non-empty list of messages")
    items: list[ForwardItem] = []
    for i, item in enumerate(content):
        if not isinstance(item, dict):
            raise ValueError(f"content[{i}] must be an object")
        mid = item.get("message_id")
        items.append(
            ForwardItem(
                message_id=_int_id(mid, f"content[{i}].message_id") if mid is not None else None,
                segments=_segments(item.get("message", [])),
            )
        )
    return ForwardMessage(str(contact), items)


class CompletionsData(_Payload):
    model: str = ""
    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    stream: bool = True
    tools: list[dict[str, Any]] | None = None
    conversation_id: str = "default"


class AbortData(_Payload):
    request_id: RequestId


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
    return str(e)


# ----- responses -----------------------------------------------------------------------------


def success(
    request_id: RequestId | None,
    protocol: str | None,
    ftype: str | None,
    data: Any = None,
    *,
    message: str = "success",
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "request_id": request_id,
        "protocol": protocol,
        "type": ftype,
        "code": 0,
        "message": message,
    }
    if data is not None:
        frame["data"] = data
    return frame


def failure(
    request_id: RequestId | None,
    protocol: str | None,
    ftype: str | None,
    error: ErrorCode,
    reason: str,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "protocol": protocol,
        "type": ftype,
        "code": 1,
        "message": "failed",
        "data": {"reason": reason, "error": str(error)},
    }


def stream_frame(
    request_id: RequestId,
    protocol: str,
    ftype: str,
    message: Literal["pending", "update", "completed"],
    data: Any = None,
) -> dict[str, Any]:
    return success(request_id, protocol, ftype, data, message=message)


def message_push(
    request_id: str,
    contact: str,
    segments: list[dict[str, Any]],
    message_id: int,
    time_s: int,
    sender_id: str,
    sender_name: str,
    stream_request_id: RequestId | None = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "message": segments,
        "message_id": message_id,
        "time": time_s,
        "sender": {"id": sender_id, "name": sender_name},
    }
    if stream_request_id is not None:
        content["stream_request_id"] = stream_request_id
    return {
        "request_id": request_id,
        "protocol": "onebot",
        "type": "message",
        "code": 0,
        "message": "success",
        "data": {"id": contact, "type": "message", "content": content},
    }


def recall_push(request_id: str, contact: str, message_id: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "protocol": "onebot",
        "type": "del_msg",
        "code": 0,
        "message": "success",
        "data": {"id": contact, "type": "del_msg", "content": {"message_id": message_id}},
    }


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
