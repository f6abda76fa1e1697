"""A filtered message keeps its shape: the text goes where the first text segment was."""

from __future__ import annotations

from bridge.models import Segment
from bridge.session_plugins import with_text

IMG_A = Segment("image", {"file": "a.png"})
IMG_B = Segment("image", {"file": "b.png"})


def test_text_stays_where_it_was_among_images() -> None:
    message = [IMG_A, Segment.text("bad "), IMG_B, Segment.text("words")]
    assert with_text(message, "*** words") == [IMG_A, Segment.text("*** words"), IMG_B]


def test_text_first_and_only() -> None:
    assert with_text([Segment.text("hi")], "HI") == [Segment.text("HI")]


def test_emptied_text_leaves_the_rest() -> None:
    assert with_text([Segment.text("x"), IMG_A], "") == [IMG_A]
