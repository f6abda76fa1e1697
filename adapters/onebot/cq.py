"""CQ code: the string form of a OneBot v11 message (`text[CQ:type,key=value,...]text`).

Pure functions, no I/O. Escaping follows the OneBot v11 spec exactly: in text `&`, `[` and `]`
are escaped; inside parameter values `,` is escaped too. Parsing never raises: a `[CQ:` that does
not form a well-formed code is kept as literal text, because a message from a peer must never be
lost to a stray bracket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.models import Segment

__all__ = ["escape", "parse_cq", "to_cq", "unescape"]

# Segment types and keys seen in the wild are word characters plus `-` and `.`; restricting them
# keeps `[CQ:` followed by arbitrary prose from being mistaken for a code.
_TYPE = r"[A-Za-z0-9_.\-]+"
_KEY = r"[A-Za-z0-9_.\-]+"
# A raw `[` is not allowed in a value so that an unterminated code cannot swallow the next one.
_VALUE = r"[^,\[\]]*"
_CODE_RE = re.compile(rf"\[CQ:(?P<type>{_TYPE})(?P<params>(?:,{_KEY}={_VALUE})*)\]")
_PARAM_RE = re.compile(rf",(?P<key>{_KEY})=(?P<value>{_VALUE})")
_TYPE_RE = re.compile(rf"^{_TYPE}$")
_KEY_RE = re.compile(rf"^{_KEY}$")
_OPEN = "[CQ:"


def escape(s: str, *, escape_comma: bool = True) -> str:
    """Escape `s` for a CQ string: a parameter value by default, plain text with `escape_comma=False`."""
    # `&` first, or the `&` of the entities produced below would be escaped again.
    s = s.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    if escape_comma:
        s = s.replace(",", "&#44;")
    return s


def unescape(s: str) -> str:
    # `&amp;` last: the literal text `&#91;` is sent as `&amp;#91;` and must come back as `&#91;`,
    # not as `[`.
    return s.replace("&#44;", ",").replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")


def parse_cq(s: str) -> list[Segment]:
    """Split a CQ string into segments. Parameter values come back as (unescaped) strings."""
    out: list[Segment] = []
    # Unescaped text pending since the last code. Each piece is unescaped on its own so that an
    # entity can never be assembled across a code boundary.
    text: list[str] = []

    def flush_text() -> None:
        if text:
            _append_text(out, "".join(text))
            text.clear()

    pos = 0
    while pos < len(s):
        start = s.find(_OPEN, pos)
        if start < 0:
            text.append(unescape(s[pos:]))
            break
        text.append(unescape(s[pos:start]))
        m = _CODE_RE.match(s, start)
        if m is None:
            # Malformed: keep the opener as text and look for the next code after it.
            text.append(_OPEN)
            pos = start + len(_OPEN)
            continue
        seg_type = m.group("type")
        data = {p.group("key"): unescape(p.group("value")) for p in _PARAM_RE.finditer(m["params"])}
        if seg_type == "text":
            # `[CQ:text,text=...]` is legal; fold it into the surrounding text run.
            text.append(data.get("text", ""))
        else:
            flush_text()
            out.append(Segment(seg_type, data))
        pos = m.end()
    flush_text()
    return out


def to_cq(segments: Iterable[Segment | Mapping[str, Any]]) -> str:
    """Render segments as a CQ string. Raises ValueError for a type or key CQ cannot express."""
    parts: list[str] = []
    for seg in segments:
        seg_type, data = _type_and_data(seg)
        if seg_type == "text":
            parts.append(escape(_value_str(data.get("text", "")), escape_comma=False))
            continue
        if not _TYPE_RE.match(seg_type):
            raise ValueError(f"segment type {seg_type!r} cannot be written as a CQ code")
        params = []
        for key, value in data.items():
            if value is None:  # absent in the array form, so absent here too
                continue
            if not _KEY_RE.match(str(key)):
                raise ValueError(f"segment key {key!r} cannot be written as a CQ code")
            params.append(f",{key}={escape(_value_str(value))}")
        parts.append(f"[CQ:{seg_type}{''.join(params)}]")
    return "".join(parts)


def _append_text(out: list[Segment], text: str) -> None:
    if not text:
        return
    if out and out[-1].type == "text":
        out[-1] = Segment.text(str(out[-1].data.get("text", "")) + text)
    else:
        out.append(Segment.text(text))


def _type_and_data(seg: Segment | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if isinstance(seg, Segment):
        return seg.type, seg.data
    return str(seg.get("type", "")), seg.get("data") or {}


def _is_segment_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, Segment) or (isinstance(v, Mapping) and "type" in v) for v in value
    )


def _value_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        # OneBot implementations read "true"/"false"; Python's str() would give "True".
        return "true" if value else "false"
    if isinstance(value, Segment):
        return to_cq([value])
    if _is_segment_list(value):
        # A custom forward node's `content` travels as a nested CQ string (go-cqhttp style);
        # escape() by the caller then protects it inside the outer code.
        return to_cq(value)
    if isinstance(value, Mapping | list):
        return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Segment):
        return {"type": value.type, "data": _jsonable(value.data)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
