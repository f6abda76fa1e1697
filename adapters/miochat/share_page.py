"""The page a browser gets for `GET /share/{id}`: the shared contact's card as plain HTML.

Programs keep getting the JSON; only a request whose Accept names text/html (a browser opening
the link) gets this page. Everything in the card is someone else's text, so every value is
HTML-escaped and the page runs no script at all (its CSP allows none): a hostile name or bio
can at worst look odd.
"""

from __future__ import annotations

from html import escape
from typing import Any

# No scripts, no forms, no framing; the avatar may live on any web host (MomoHub's CDN); the
# styles are the inline block below.
CSP = (
    "default-src 'none'; img-src 'self' https: http: data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_STYLE = (
    "body{margin:0;font:15px/1.5 system-ui,sans-serif;background:#eef1f7;color:#1d2433}"
    ".card{max-width:420px;margin:10vh auto;background:#fff;border-radius:16px;padding:24px;"
    "display:flex;gap:18px;align-items:center}"
    ".avatar{width:88px;height:88px;border-radius:50%;object-fit:cover;flex:none;"
    "background:#8fb3ff;color:#fff;display:grid;place-items:center;font-size:40px}"
    "h1{font-size:22px;margin:0 0 6px}p{margin:0;color:#5b6478;white-space:pre-wrap}"
    "footer{margin-top:10px;font-size:12px;color:#9aa3b5}"
)


def _text(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_share_page(contactor: dict[str, Any], title: str, preview_url: str) -> str:
    """The page for one shared card; ``preview_url`` is its preview.svg (for link unfurlers)."""
    name = _text(contactor.get("name") or contactor.get("title") or "Unnamed", 80)
    bio = _text(contactor.get("bio") or contactor.get("desc") or "", 600)
    avatar = contactor.get("avatar")
    # Only plain web or data-image URLs: anything else could carry a script scheme.
    if isinstance(avatar, str) and avatar.startswith(("https://", "http://", "data:image/")):
        picture = f'<img class="avatar" src="{escape(avatar)}" alt="">'
    else:
        picture = f'<div class="avatar" aria-hidden="true">{escape(name[:1].upper())}</div>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(name)} · {escape(_text(title, 60))}</title>"
        f'<meta property="og:title" content="{escape(name)}">'
        f'<meta property="og:description" content="{escape(_text(bio, 200))}">'
        f'<meta property="og:image" content="{escape(preview_url)}">'
        f"<style>{_STYLE}</style></head><body>"
        f'<main class="card">{picture}<div><h1 class="name">{escape(name)}</h1>'
        f'<p class="bio">{escape(bio)}</p>'
        f"<footer>shared on {escape(_text(title, 60))}</footer></div></main>"
        "</body></html>"
    )
