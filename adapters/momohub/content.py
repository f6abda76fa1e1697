"""Hub segments → MomoHub content parts. Only text reaches MomoHub's model today, so anything
without a MomoHub equivalent is rendered as readable text rather than dropped."""

from __future__ import annotations

from typing import Any

from bridge.models import Segment


def _node_text(node: dict[str, Any]) -> str:
    parts = []
    for seg in node.get("message") or []:
        if isinstance(seg, dict):
            parts.append(segment_text(Segment(str(seg.get("type")), seg.get("data") or {})))
    return "".join(parts)


def segment_text(seg: Segment) -> str:
    d = seg.data
    match seg.type:
        case "text":
            return str(d.get("text", ""))
        case "at":
            return f"@{d.get('name') or d.get('qq', '')} "
        case "reply":
            return f"[reply to #{d.get('id', '?')}] "
        case "face":
            return f"[face {d.get('id', '')}]"
        case "image":
            return "[image]"
        case "nodes" | "forward":
            lines = [f"> {_node_text(n)}" for n in d.get("messages") or [] if isinstance(n, dict)]
            return "Forwarded messages:\n" + "\n".join(lines)
        case _:
            return f"[{seg.type}]"


def to_content_parts(segments: list[Segment]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            parts.append({"type": "text", "content": "".join(text)})
            text.clear()

    for seg in segments:
        url = seg.data.get("url") or seg.data.get("image") or seg.data.get("file")
        if seg.type == "image" and isinstance(url, str) and url.startswith(("http://", "https://")):
            flush()
            parts.append({"type": "image", "url": url, "alt": str(seg.data.get("summary", ""))})
        else:
            text.append(segment_text(seg))
    flush()
    return parts


def parts_text(parts: list[dict[str, Any]]) -> str:
    return "".join(str(p.get("content", "")) for p in parts if p.get("type") == "text")
