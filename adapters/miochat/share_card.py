"""The SVG preview card of a shared contact."""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

# Characters XML 1.0 forbids (C0 controls except tab/newline/CR, surrogates, U+FFFE/U+FFFF);
# one of them in user text would make the whole card unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clip(text: str, n: int) -> str:
    text = _NOT_XML.sub("", text)
    return text if len(text) <= n else text[: n - 1] + "…"


def render_card(contactor: dict[str, Any], title: str) -> str:
    name = _clip(str(contactor.get("name") or contactor.get("title") or "Unnamed"), 40)
    bio = _clip(str(contactor.get("bio") or contactor.get("desc") or ""), 90)
    avatar = contactor.get("avatar")
    image = ""
    # Only plain web or data URLs: anything else could smuggle a script scheme into the SVG.
    if isinstance(avatar, str) and avatar.startswith(("https://", "http://", "data:image/")):
        image = (
            f'<clipPath id="a"><circle cx="70" cy="80" r="40"/></clipPath>'
            f'<image href={quoteattr(avatar)} x="30" y="40" width="80" height="80" '
            f'clip-path="url(#a)" preserveAspectRatio="xMidYMid slice"/>'
        )
    else:
        initial = escape(name[:1].upper() or "?")
        image = (
            '<circle cx="70" cy="80" r="40" fill="#8fb3ff"/>'
            f'<text x="70" y="94" font-size="40" text-anchor="middle" fill="#fff">{initial}</text>'
        )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="480" height="160" viewBox="0 0 480 160">'
        '<rect width="480" height="160" rx="16" fill="#f6f8fc"/>'
        f"{image}"
        f'<text x="130" y="72" font-size="24" font-family="sans-serif" fill="#1d2433">{escape(name)}</text>'
        f'<text x="130" y="102" font-size="14" font-family="sans-serif" fill="#5b6478">{escape(bio)}</text>'
        f'<text x="130" y="136" font-size="12" font-family="sans-serif" fill="#9aa3b5">{escape(_clip(title, 60))}</text>'
        "</svg>"
    )
