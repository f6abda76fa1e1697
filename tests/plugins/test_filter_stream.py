"""The filter plugin's live-text filters, fed a reply piece by piece (plain data)."""

from __future__ import annotations

import random

import pytest

from plugins.filter import WordMatcher, _BlockStream, _MaskStream

WORDS = ["secret", "坏蛋"]
REPLY = "the secret word is SeCrEt, and 坏蛋 says hi; nothing else is hidden here at all"


def pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, at = [], 0
    while at < len(text):
        n = rng.randint(1, 4)
        out.append(text[at : at + n])
        at += n
    return out


@pytest.mark.parametrize("seed", range(30))
def test_mask_stream_never_shows_a_word_however_it_is_split(seed: int) -> None:
    matcher = WordMatcher(WORDS)
    stream = _MaskStream(matcher, matcher.hold)
    shown = [stream.feed(p) for p in pieces(REPLY, seed)]
    shown.append(stream.end())
    assert "".join(shown) == matcher.mask(REPLY)
    for i in range(len(shown)):
        so_far = "".join(shown[: i + 1]).lower()
        assert "secr" not in so_far and "坏" not in so_far


@pytest.mark.parametrize("seed", range(30))
def test_block_stream_stops_before_the_word(seed: int) -> None:
    matcher = WordMatcher(WORDS)
    stream = _BlockStream(matcher, matcher.hold)
    shown = "".join(stream.feed(p) for p in pieces(REPLY, seed)) + stream.end()
    assert shown == REPLY[: len(shown)]  # a prefix of the reply, and nothing after the word
    assert "secret" not in shown.lower() and "secre" not in shown.lower()
    assert len(shown) <= REPLY.lower().index("secret")


def test_clean_text_comes_through_whole_and_in_order() -> None:
    matcher = WordMatcher(WORDS)
    for stream in (_MaskStream(matcher, matcher.hold), _BlockStream(matcher, matcher.hold)):
        text = "nothing to hide in this reply, " * 5
        shown = "".join(stream.feed(p) for p in pieces(text, 1)) + stream.end()
        assert shown == text
