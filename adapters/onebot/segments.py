"""Hub segments ↔ OneBot segments, for the framework link (pure)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from bridge.models import Segment

JSON = dict[str, Any]


def to_onebot(segments: list[Segment], forward_id: int | None = None) -> list[Segment]:
    """What a framework sees of a hub user's message."""
    out: list[Segment] = []
    for seg in segments:
        d = seg.data
        if seg.type == "image":
            url = d.get("url") or d.get("image") or d.get("file") or ""
            out.append(Segment("image", {"file": str(url), "url": str(url)}))
        elif seg.type == "nodes":
            # A forwarded bundle: the framework fetches its nodes with get_forward_msg.
            out.append(Segment("forward", {"id": str(forward_id or "")}))
        else:
            out.append(Segment(seg.type, {k: str(v) for k, v in d.items()}))
    return out


def _image_url(d: JSON) -> str | None:
    for key in ("url", "file"):
        v = d.get(key)
        if not isinstance(v, str) or not v:
            continue
        if v.startswith(("http://", "https://", "data:")):
            return v
        if v.startswith("base64://"):
            raw = v[len("base64://") :]
            try:
                head = base64.b64decode(raw[:24] + "=" * (-len(raw[:24]) % 4))
            except (binascii.Error, ValueError):
                return None
            return f"data:{_sniff(head)};base64,{raw}"
    return None


def _sniff(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def to_hub(segments: list[Segment]) -> list[JSON]:
    """A framework's message as hub segments a browser can show.

    Images become URLs (http(s) as is, base64 as a data: URL). Local paths (file://) are never
    read: that would let a framework make the bridge serve any file of this machine.
    """
    out: list[JSON] = []
    for seg in segments:
        if seg.type == "image":
            url = _image_url(seg.data)
            if url is None:
                out.append({"type": "text", "data": {"text": "[image unavailable]"}})
            else:
                out.append({"type": "image", "data": {"url": url, "file": url}})
        elif seg.type == "text":
            out.append({"type": "text", "data": {"text": str(seg.data.get("text", ""))}})
        else:
            out.append({"type": seg.type, "data": _plain(seg.data)})
    return out


def _plain(d: JSON) -> JSON:
    out: JSON = {}
    for k, v in d.items():
        if isinstance(v, list):
            out[k] = [s.to_json() if isinstance(s, Segment) else s for s in v]
        else:
            out[k] = v
    return out


def from_hub(content: list[JSON]) -> list[Segment]:
    return [Segment(str(s.get("type")), dict(s.get("data") or {})) for s in content]
