"""The admin's web console at /console (`[console] enabled`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.miochat.http_routes import Pages
    from bridge.app import App


def console_pages(app: App) -> Pages | None:
    """The console's pages, or None when it is off."""
    if not app.config.console.enabled:
        return None
    # Imported only when on: a bridge without the console loads none of it.
    from adapters.console.pages import Console

    return Console(app)
