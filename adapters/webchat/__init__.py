"""A plain web chat at /chat (`[console] chat_page`): a browser client of the hub protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.miochat.http_routes import Pages
    from bridge.app import App


def chat_pages(app: App) -> Pages | None:
    """The chat page, or None when it is off."""
    return None
