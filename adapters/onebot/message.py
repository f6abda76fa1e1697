"""The OneBot v11 `message` value: normalization to segments, JSON form, forward nodes.

A `message` may arrive as a CQ string, an array of segments, or one segment object; everything
downstream sees `list[Segment]`. Segment data values become strings, as OneBot specifies, except
structures that are messages themselves (a custom forward node's `content`), which become parsed
segments, and other nested objects, which are kept as they came (e.g. NapCat's `json` segment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.onebot.cq import parse_cq
from bridge.json_names import json_type_name
from bridge.models import JSON, Segment
from bridge.models import plain_text as plain_text

__all__ = [
    "ForwardNode",
    "MessageError",
    "json_type_name",
    "normalize_message",
    "normalize_segment",
    "parse_forward_node",
    "parse_forward_nodes",
    "plain_text",
    "segments_to_json",
]


class MessageError(ValueError):
    """A `message` value that is not a OneBot message; the text says what is wrong with it."""


def normalize_message(message: Any, *, auto_escape: bool = False) -> list[Segment]:
    """Turn a CQ string, a segment array or one segment object into segments.

    With `auto_escape` a string is plain text, as the OneBot send actions define it.
    """
    if isinstance(message, str):
        if auto_escape:
            return [Segment.text(message)] if message else []
        # Through normalize_segment so a node's CQ-string `content` is parsed as well.
        return [normalize_segment(s) for s in parse_cq(message)]
    if isinstance(message, Segment | Mapping):
        return [normalize_segment(message)]
    if isinstance(message, list | tuple):
        return [normalize_segment(item, where=f"message[{i}]") for i, item in enumerate(message)]
    raise MessageError(
        "message must be a CQ string, an array of segments or a segment object, "
        f"not {json_type_name(message)}"
    )


def normalize_segment(segment: Any, *, where: str = "segment") -> Segment:
    if isinstance(segment, Segment):
        raw_type: Any = segment.type
        raw_data: Any = segment.data
    elif isinstance(segment, Mapping):
        if "type" not in segment:
            raise MessageError(f"{where} has no type")
        raw_type = segment["type"]
        raw_data = segment.get("data")
    else:
        raise MessageError(f"{where} must be a segment object, not {json_type_name(segment)}")
    if not isinstance(raw_type, str) or not raw_type:
        raise MessageError(f"{where}.type must be a non-empty string")
    if raw_data is None:  # `{"type": "shake"}` and `"data": null` both mean no parameters
        raw_data = {}
    if not isinstance(raw_data, Mapping):
        raise MessageError(f"{where}.data must be an object, not {json_type_name(raw_data)}")
    data: JSON = {}
    for key, value in raw_data.items():
        if value is None:  # a null parameter is an absent one; CQ codes cannot carry null
            continue
        if raw_type == "node" and key == "content":
            try:
                data[key] = normalize_message(value)
            except MessageError as e:
                raise MessageError(f"{where}.data.content: {e}") from None
        else:
            data[str(key)] = _coerce_value(value)
    return Segment(raw_type, data)


def segments_to_json(segments: Iterable[Segment]) -> list[JSON]:
    """Segments as the OneBot array form, nested segments (node content) included."""
    return [{"type": s.type, "data": _to_json_value(s.data)} for s in segments]


@dataclass(frozen=True, slots=True)
class ForwardNode:
    """One node of a merged forward: a stored message (`ref_id`) or custom `content`."""

    user_id: str = ""
    nickname: str = ""
    content: list[Segment] | None = None
    ref_id: str | None = None

    def to_segment(self) -> Segment:
        if self.ref_id is not None:
            return Segment("node", {"id": self.ref_id})
        # Both spellings: go-cqhttp and Lagrange read uin/name, NapCat and NoneBot use
        # user_id/nickname; each ignores the pair it does not know.
        return Segment(
            "node",
            {
                "user_id": self.user_id,
                "nickname": self.nickname,
                "uin": self.user_id,
                "name": self.nickname,
                "content": list(self.content or []),
            },
        )

    def to_json(self) -> JSON:
        return segments_to_json([self.to_segment()])[0]


def parse_forward_node(segment: Any, *, where: str = "node") -> ForwardNode:
    seg = normalize_segment(segment, where=where)
    if seg.type != "node":
        raise MessageError(f"{where} must be a node segment, not {seg.type!r}")
    data = seg.data
    if "id" in data:
        ref = data["id"]
        if not isinstance(ref, str) or not ref:
            raise MessageError(f"{where}.data.id must be a message id")
        return ForwardNode(ref_id=ref)
    if "content" not in data:
        raise MessageError(f"{where} needs data.id (a stored message) or data.content")
    return ForwardNode(
        user_id=_first_str(data, "user_id", "uin"),
        nickname=_first_str(data, "nickname", "name"),
        content=data["content"],
    )


def parse_forward_nodes(messages: Any) -> list[ForwardNode]:
    """The `messages` parameter of the forward actions: node segments in any message form."""
    if isinstance(messages, str):
        items: list[Any] = list(parse_cq(messages))
    elif isinstance(messages, Segment | Mapping):
        items = [messages]
    elif isinstance(messages, list | tuple):
        items = list(messages)
    else:
        raise MessageError(
            f"messages must be an array of node segments, not {json_type_name(messages)}"
        )
    return [parse_forward_node(m, where=f"messages[{i}]") for i, m in enumerate(items)]


def _first_str(data: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = data.get(key)
        if value is not None and value != "":
            return str(value)
    return ""


def _coerce_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Segment):
        return normalize_segment(value)
    # Nested objects (NapCat's `json` segment may carry an object) are passed through.
    return _to_json_value(value)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, Segment):
        return {"type": value.type, "data": _to_json_value(value.data)}
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json_value(v) for v in value]
    return value
