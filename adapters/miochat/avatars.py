"""Generated avatars for the mio-chat client's `/p/qava` (QQ numbers) and `/p/mava` (models).

The reference server fetches QQ avatars from Tencent and model logos from a public CDN; the bridge
does neither (no outbound requests on a visitor's behalf, nothing that breaks offline). It draws
a small SVG instead: a coloured disc, the hue taken from a hash of the input so the same number
or model always gets the same colour, and one or two characters on it. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import unicodedata
from xml.sax.saxutils import escape

# Longest input drawn from: a QQ number has at most 20 digits, a model name is bounded too.
MAX_INPUT = 128


def hue_of(seed: str) -> int:
    """A stable hue (0-359) for ``seed``: the same input, the same colour, on every server."""
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:2], "big") % 360


def initials(name: str) -> str:
    """What goes on the disc: for a number its last two digits, else the first letter of the
    name (upper-cased) or, for a name in CJK script, its first character."""
    text = "".join(ch for ch in name.strip() if unicodedata.category(ch)[0] in "LN")
    if not text:
        return "?"
    if text.isdigit():
        return text[-2:]
    return text[0].upper()


def svg_avatar(seed: str, label: str | None = None) -> str:
    """A 64×64 SVG disc coloured by ``seed`` with ``label`` (default: ``initials(seed)``)."""
    seed = seed[:MAX_INPUT]
    text = escape(initials(seed) if label is None else label[:2])
    hue = hue_of(seed)
    size = 28 if len(text) > 1 else 32
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<circle cx="32" cy="32" r="32" fill="hsl({hue},55%,52%)"/>'
        f'<text x="32" y="33" fill="#fff" font-family="sans-serif" font-size="{size}" '
        f'font-weight="600" text-anchor="middle" dominant-baseline="central">{text}</text>'
        "</svg>"
    )


def is_web_url(url: str | None) -> bool:
    """An http(s) URL fit for a Location header or an <img> (no spaces or control characters)."""
    if url is None or len(url) > 2048 or not url.startswith(("https://", "http://")):
        return False
    return not any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url)
