"""Plugins' filters on a reply's live text: what the user sees while a reply streams (and
`Consume`, what an input filter returns to stop a message).

A stream filter may hold text back (a word's beginning, until the piece that completes it has
arrived) and must be synchronous: it runs for every piece of every reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from bridge.models import ConversationKey

log = structlog.get_logger(__name__)


class Consume:
    """What an input filter returns to stop a message (it may have replied itself). Here, with
    the other filter types, rather than in `bridge.plugins`: the hub's completions path needs it
    before the plugin host is imported (which happens after the hub listens)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "") -> None:
        self.reason = reason


class StreamFilter(Protocol):
    """One reply's live text on its way to the user: ``feed`` gets each piece and returns what
    may be shown now (it may hold text back, e.g. a word's beginning); ``end`` returns the rest
    once the reply is complete. Synchronous: it runs for every piece of every reply."""

    def feed(self, text: str) -> str: ...

    def end(self) -> str: ...


StreamFilterFactory = Callable[[ConversationKey], StreamFilter]


class StreamGuard:
    """A reply's stream filters, chained in load order. A filter that raises withholds the
    rest of the live text (its reply filter still decides the stored reply): what a filter
    exists to hide must not slip out because it broke."""

    __slots__ = ("_broken", "_filters")

    def __init__(self, filters: list[tuple[str, StreamFilter]]) -> None:
        self._filters = filters
        self._broken = False

    def feed(self, text: str) -> str:
        if self._broken:
            return ""
        try:
            for _, f in self._filters:
                text = f.feed(text)
        except Exception:
            self._failed()
            return ""
        return text

    def end(self) -> str:
        if self._broken:
            return ""
        text = ""
        try:
            for _, f in self._filters:
                text = f.feed(text) + f.end() if text else f.end()
        except Exception:
            self._failed()
            return ""
        return text

    def _failed(self) -> None:
        self._broken = True
        log.exception("plugin.stream_filter_crashed", plugins=[n for n, _ in self._filters])


class Silent:
    def feed(self, text: str) -> str:
        return ""

    def end(self) -> str:
        return ""
