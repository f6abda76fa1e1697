"""Hub segments → MomoHub content parts (pure)."""

from __future__ import annotations

from adapters.momohub.content import parts_text, to_content_parts
from bridge.models import Segment


def test_text_runs_merge_and_markup_renders_as_text() -> None:
    segs = [
        Segment("reply", {"id": "7"}),
        Segment("at", {"qq": "10000"}),
        Segment.text("hello "),
        Segment("face", {"id": "14"}),
        Segment.text("!"),
    ]
    assert to_content_parts(segs) == [
        {"type": "text", "content": "[reply to #7] @10000 hello [face 14]!"}
    ]


def test_web_images_become_image_parts_others_a_placeholder() -> None:
    segs = [
        Segment.text("look"),
        Segment("image", {"url": "https://example.com/a.png", "summary": "a cat"}),
        Segment("image", {"file": "base64://AAAA"}),
        Segment.text("done"),
    ]
    assert to_content_parts(segs) == [
        {"type": "text", "content": "look"},
        {"type": "image", "url": "https://example.com/a.png", "alt": "a cat"},
        {"type": "text", "content": "[image]done"},
    ]


def test_forwarded_nodes_quote_each_message() -> None:
    nodes = Segment(
        "nodes",
        {
            "messages": [
                {"message_id": 1, "message": [{"type": "text", "data": {"text": "one"}}]},
                {"message_id": 2, "message": [{"type": "text", "data": {"text": "two\nlines"}}]},
                "junk",
            ]
        },
    )
    parts = to_content_parts([nodes])
    assert parts_text(parts) == "Forwarded messages:\n> one\n> two\nlines"


def test_empty_and_unknown() -> None:
    assert to_content_parts([]) == []
    assert to_content_parts([Segment("record", {"file": "x.amr"})]) == [
        {"type": "text", "content": "[record]"}
    ]
