"""Prometheus metrics at /metrics (`[console] metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.miochat.http_routes import Pages
    from bridge.app import App


def metrics_pages(app: App) -> Pages | None:
    """/metrics, or None when it is off."""
    return None
