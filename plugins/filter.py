"""A sensitive-word filter on what users send and on the replies they get.

    [plugins.filter]
    words = ["badword", "坏词"]
    action = "mask"    # "mask": each word becomes asterisks; "block": the message is stopped
    notice = "..."       # optional: what a blocked message's sender is told
    reply_notice = "..." # optional: what a blocked reply is replaced by

Matching ignores case and width (full-width ``ＢＡＤ`` is ``bad``) and looks for the words
anywhere in the text, not between word boundaries: Chinese and Japanese text has no spaces to
anchor on. Invisible format characters (zero-width spaces and joiners) inside a word do not hide
it. With no words (the default) the plugin registers no filter at all.

A reply is filtered while it streams too: the last few characters of its live text wait, so a
word split across two pieces is caught before any of it is shown; in block mode the live text
stops at the word and the stored, pushed reply is the notice. Each piece is matched against
every word: a list of thousands of words costs a little on every piece of every reply.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.models import ConversationKey
from bridge.plugins import Consume, FilterInput, PluginContext

MAX_WORDS = 10_000
MAX_WORD_LENGTH = 200
# Longer texts are matched in a worker thread: normalizing runs in Python, a character at a time.
OFF_LOOP_CHARS = 16_384

T = TypeVar("T")


class FilterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: list[str] = Field(default_factory=list, max_length=MAX_WORDS)
    action: Literal["mask", "block"] = "mask"
    notice: str = Field("Your message was not sent: it contains a blocked word.", min_length=1)
    reply_notice: str = Field(
        "[This reply was withheld: it contained a blocked word.]", min_length=1
    )

    @field_validator("words")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        for word in words:
            # A blank word would match everywhere and mask or block every message.
            if not normalize(word)[0].strip():
                raise ValueError("a word must have visible characters")
            if len(word) > MAX_WORD_LENGTH:
                raise ValueError(f"a word may have at most {MAX_WORD_LENGTH} characters")
        return words


def normalize(text: str) -> tuple[str, Sequence[int]]:
    """The text as matched (NFKC, case-folded, without format characters) and, for each of its
    characters, the index in ``text`` it came from.

    Normalized one character at a time so every match maps back onto the original text: NFKC
    and case folding may turn one character into several (``ß`` → ``ss``, ``㈱`` → ``(株)``)."""
    if text.isascii():
        # ASCII has no format characters and folds one to one: the common case, at C speed.
        return text.lower(), range(len(text))
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cf":
            continue
        folded = unicodedata.normalize("NFKC", ch).casefold()
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


class WordMatcher:
    def __init__(self, words: list[str]) -> None:
        # Longest first only so a word contained in another is skipped cheaply when both hit.
        self._words = sorted({normalize(w)[0].strip() for w in words}, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._words)

    @property
    def hold(self) -> int:
        """How much live text must wait so no word can be split across what is shown: the
        longest word, with room for format characters inside it and for folding that
        shortens (``ß`` matches ``ss``)."""
        return 2 * max(len(w) for w in self._words) + 8

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the words occur in ``text`` (original indices, end exclusive), overlapping
        occurrences merged."""
        norm, origin = normalize(text)
        hits: list[tuple[int, int]] = []
        for word in self._words:
            at = norm.find(word)
            while at != -1:
                hits.append((origin[at], origin[at + len(word) - 1] + 1))
                at = norm.find(word, at + 1)
        hits.sort()
        merged: list[tuple[int, int]] = []
        for start, end in hits:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def found(self, text: str) -> bool:
        norm = normalize(text)[0]
        return any(word in norm for word in self._words)

    def mask(self, text: str) -> str:
        spans = self.spans(text)
        if not spans:
            return text
        parts: list[str] = []
        at = 0
        for start, end in spans:
            parts.append(text[at:start])
            # One asterisk per visible character: a zero-width joiner in the word is dropped.
            visible = sum(1 for ch in text[start:end] if unicodedata.category(ch) != "Cf")
            parts.append("*" * visible)
            at = end
        parts.append(text[at:])
        return "".join(parts)


class _MaskStream:
    """A reply's live text, masked: the last ``hold`` characters wait, so a word split across
    pieces is whole (and masked) before any of it is shown."""

    __slots__ = ("_hold", "_matcher", "_pending")

    def __init__(self, matcher: WordMatcher, hold: int) -> None:
        self._matcher = matcher
        self._hold = hold
        self._pending = ""

    def feed(self, text: str) -> str:
        pending = self._pending + text
        cut = len(pending) - self._hold
        if cut <= 0:
            self._pending = pending
            return ""
        for start, end in self._matcher.spans(pending):
            if start < cut < end:  # never show half a word: it waits whole
                cut = start
                break
        self._pending = pending[cut:]
        return self._matcher.mask(pending[:cut])

    def end(self) -> str:
        out, self._pending = self._matcher.mask(self._pending), ""
        return out


class _BlockStream:
    """A reply's live text, stopped for good at the first blocked word: no part of the word
    is ever shown (the last ``hold`` characters wait), nor anything after it."""

    __slots__ = ("_blocked", "_hold", "_matcher", "_pending")

    def __init__(self, matcher: WordMatcher, hold: int) -> None:
        self._matcher = matcher
        self._hold = hold
        self._pending = ""
        self._blocked = False

    def feed(self, text: str) -> str:
        if self._blocked:
            return ""
        pending = self._pending + text
        if self._matcher.found(pending):
            self._blocked, self._pending = True, ""
            return ""
        cut = max(0, len(pending) - self._hold)
        self._pending = pending[cut:]
        return pending[:cut]

    def end(self) -> str:
        out, self._pending = ("" if self._blocked else self._pending), ""
        return out


async def _run(fn: Callable[[str], T], text: str) -> T:
    if len(text) > OFF_LOOP_CHARS:
        return await asyncio.to_thread(fn, text)
    return fn(text)


def setup(ctx: PluginContext) -> None:
    settings = ctx.settings(FilterSettings)
    matcher = WordMatcher(settings.words)
    if not matcher:
        return

    if settings.action == "mask":

        @ctx.input_filter
        async def mask_input(message: FilterInput) -> str:
            return await _run(matcher.mask, message.text)

        @ctx.reply_filter
        async def mask_reply(key: ConversationKey, text: str) -> str:
            return await _run(matcher.mask, text)

        ctx.stream_filter(lambda key: _MaskStream(matcher, matcher.hold))
        return

    @ctx.input_filter
    async def block_input(message: FilterInput) -> str | Consume:
        if not await _run(matcher.found, message.text):
            return message.text
        await message.reply(settings.notice)
        return Consume("blocked word")

    @ctx.reply_filter
    async def block_reply(key: ConversationKey, text: str) -> str:
        return settings.reply_notice if await _run(matcher.found, text) else text

    ctx.stream_filter(lambda key: _BlockStream(matcher, matcher.hold))
