"""A plain web chat at /chat (`[console] chat_page`): a browser client of the hub protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.miochat.http_routes import Pages
    from bridge.app import App


def chat_pages(app: App) -> Pages | None:
    """The chat page, or None when it is off."""
    if not app.config.console.chat_page:
        return None
    # Imported only when on: the files are read from the package at this point.
    from adapters.webchat.pages import ChatPages

    return ChatPages()
