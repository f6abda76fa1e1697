"""onebot request data: message segments and the send, recall and forward payloads.

Plain parsers (pydantic only hands them the frame's `data`), in both the document's nested shape
and the real mio-chat client's (top-level contact id, bare segment list). Every refusal is a
`DataError` (INVALID_DATA) naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.miochat.envelope import DataError, Request, contact_id
from adapters.miochat.wire import INT32_MAX, INT32_MIN, has_surrogate, json_hazard
from bridge.models import Segment

_INT_TEXT = re.compile(r"\s*(-?[0-9]{1,10})\s*")


def _segments(v: Any) -> list[Segment]:
    if isinstance(v, dict) and "type" in v:
        v = [v]
    if isinstance(v, str):
        if has_surrogate(v):
            raise DataError("message text contains a lone UTF-16 surrogate")
        return [Segment.text(v)] if v else []
    if not isinstance(v, list):
        raise DataError("message must be a list of segments")
    out: list[Segment] = []
    for i, seg in enumerate(v):
        if not isinstance(seg, dict) or not isinstance(seg.get("type"), str):
            raise DataError(f"segment {i} must be an object with a string type")
        data = seg.get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DataError(f"segment {i} data must be an object")
        found = json_hazard(seg["type"]) or json_hazard(data, "data")
        if found is not None:
            where, problem = found
            raise DataError(f"segment {i} {where or 'type'} {problem}")
        out.append(Segment(seg["type"], dict(data)))
    return out


def _contact(v: Any, what: str = "data.id (the contact)") -> str:
    if v is None:
        raise DataError(f"{what} is missing")
    if isinstance(v, str) and has_surrogate(v):
        raise DataError(f"{what} contains a lone UTF-16 surrogate")
    contact = contact_id(v)
    if contact is None:
        raise DataError(f"{what} is missing or not a string or a 64-bit integer")
    return contact


def message_id_of(v: Any, what: str) -> int:
    """A message id: a 32-bit integer, or its decimal text. Else `DataError` naming `what`."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise DataError(f"{what} must be an integer")
    if isinstance(v, str):
        m = _INT_TEXT.fullmatch(v)
        if m is None:
            raise DataError(f"{what} must be an integer")
        v = int(m.group(1))
    if not INT32_MIN <= v <= INT32_MAX:
        raise DataError(f"{what} must be a 32-bit integer")
    return v


@dataclass(frozen=True, slots=True)
class SendMessage:
    contact: str
    segments: list[Segment]


def send_message_of(data: Any, contact: str | None) -> SendMessage:
    """onebot/message data, with `contact` the frame's top-level id; raises `DataError`."""
    if isinstance(data, list):
        if not contact:
            raise DataError("message frame has no contact id")
        segs = _segments(data)
    elif isinstance(data, dict):
        contact = _contact(data.get("id", contact))
        inner = data.get("data", data.get("content"))
        if isinstance(inner, dict):
            segs = _segments(inner.get("message"))
        elif isinstance(inner, list):
            segs = _segments(inner)
        elif "message" in data:
            segs = _segments(data["message"])
        else:
            raise DataError("data.data.message (the segments) is missing")
    else:
        raise DataError("data must be an object or a list of segments")
    if not segs:
        raise DataError("message is empty")
    return SendMessage(contact, segs)


def parse_send_message(req: Request) -> SendMessage:
    """Both shapes: the document's nested one and the real client's top-level id + segment list."""
    return send_message_of(req.data, req.contact)


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    contact: str | None
    message_id: int


def delete_message_of(data: Any, contact: str | None) -> DeleteMessage:
    """onebot/del_message data (incl. the document's recall form); raises `DataError`."""
    if not isinstance(data, dict):
        raise DataError("data must be an object")
    content = data.get("content", data)
    if not isinstance(content, dict) or "message_id" not in content:
        raise DataError("data.content.message_id is missing")
    where = "content.message_id" if "content" in data else "message_id"
    to = data.get("id", contact)
    if isinstance(to, str) and has_surrogate(to):
        raise DataError("data.id (the contact) contains a lone UTF-16 surrogate")
    return DeleteMessage(
        contact=contact_id(to),
        message_id=message_id_of(content["message_id"], where),
    )


def parse_del_message(req: Request) -> DeleteMessage:
    return delete_message_of(req.data, req.contact)


@dataclass(frozen=True, slots=True)
class ForwardItem:
    message_id: int | None
    segments: list[Segment]


@dataclass(frozen=True, slots=True)
class ForwardMessage:
    contact: str
    items: list[ForwardItem]


def forward_of(data: Any, contact: str | None) -> ForwardMessage:
    """onebot/forward_msg data; raises `DataError`."""
    if not isinstance(data, dict):
        raise DataError("data must be an object")
    to = _contact(data.get("id", contact))
    content = data.get("content")
    if not isinstance(content, list) or not content:
        raise DataError("data.content must be a non-empty list of messages")
    items: list[ForwardItem] = []
    for i, item in enumerate(content):
        if not isinstance(item, dict):
            raise DataError(f"content[{i}] must be an object")
        mid = item.get("message_id")
        items.append(
            ForwardItem(
                message_id=message_id_of(mid, f"content[{i}].message_id")
                if mid is not None
                else None,
                segments=_segments(item.get("message", [])),
            )
        )
    return ForwardMessage(to, items)


def parse_forward(req: Request) -> ForwardMessage:
    return forward_of(req.data, req.contact)
