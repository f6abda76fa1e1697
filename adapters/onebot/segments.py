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
            # Some encoders wrap lines; a browser's data: URL must not contain them.
            raw = "".join(v[len("base64://") :].split())
            try:
                # Decoded in full (C speed): a broken payload is refused here, not shown broken.
                body = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return None
            if not body:
                return None
            return f"data:{_sniff(body[:16])};base64,{raw}"
    return None


def refused_image(seg: Segment) -> str:
    """Why an image segment from a framework cannot reach the hub ("" when it can).

    Names the kind of source only: the value itself may be a long base64 blob or a local path.
    """
    if seg.type != "image" or _image_url(seg.data) is not None:
        return ""
    source = next((v for k in ("url", "file") if isinstance(v := seg.data.get(k), str) and v), "")
    if not source:
        return "image segment has neither url nor file"
    if source.startswith("file:") or source.startswith(("/", "\\")) or source[1:3] == ":\\":
        return "local file paths are never read (it would expose this machine's files); send base64:// or a URL"
    if source.startswith("base64://"):
        return "base64:// payload is empty or not valid base64"
    scheme = source.split("://", 1)[0] if "://" in source else "a bare name"
    return f"unsupported image source ({scheme}); send base64:// or an http(s) URL"


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
