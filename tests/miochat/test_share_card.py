"""The SVG preview card of a shared contact: escaping, clipping, safe avatars, well-formed XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from adapters.miochat.share_card import render_card

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on malformed XML
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def image(root: ET.Element) -> ET.Element | None:
    return next(root.iter(f"{SVG}image"), None)


def test_name_bio_title_rendered() -> None:
    root = parse(render_card({"name": "Momo", "bio": "a cat", "avatar": None}, "MomoBridge"))
    # the initial, then name, bio, title
    assert texts(root) == ["M", "Momo", "a cat", "MomoBridge"]
    assert root.get("width") == "480" and root.get("height") == "160"


@pytest.mark.parametrize(
    ("contactor", "name", "bio"),
    [
        ({"title": "Titled", "desc": "described"}, "Titled", "described"),
        ({"name": "", "title": "T"}, "T", ""),
        ({}, "Unnamed", ""),
        ({"name": None, "bio": None}, "Unnamed", ""),
        ({"name": 123, "bio": 4.5}, "123", "4.5"),
        ({"name": "N", "title": "ignored", "bio": "B", "desc": "ignored"}, "N", "B"),
    ],
)
def test_field_fallbacks(contactor: dict[str, Any], name: str, bio: str) -> None:
    root = parse(render_card(contactor, "site"))
    assert texts(root)[1:] == [name, bio, "site"]


def test_markup_is_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script> & ]]>'
    svg = render_card({"name": evil, "bio": evil}, evil)
    assert "<script>" not in svg
    root = parse(svg)
    assert texts(root)[1:] == [evil, evil, evil]
    assert not list(root.iter("script")) and not list(root.iter(f"{SVG}script"))


def test_long_name_and_bio_are_clipped_with_ellipsis() -> None:
    root = parse(render_card({"name": "n" * 41, "bio": "b" * 91}, "t"))
    name, bio = texts(root)[1:3]
    assert name == "n" * 39 + "…" and len(name) == 40
    assert bio == "b" * 89 + "…" and len(bio) == 90
    root = parse(render_card({"name": "n" * 40, "bio": "b" * 90}, "t"))
    assert texts(root)[1:3] == ["n" * 40, "b" * 90]


@pytest.mark.parametrize(
    "avatar",
    [
        "https://example.com/a.png",
        "http://example.com/a.png?x=1&y=2",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_safe_avatar_becomes_image(avatar: str) -> None:
    root = parse(render_card({"name": "Momo", "avatar": avatar}, "t"))
    img = image(root)
    assert img is not None and img.get("href") == avatar
    assert texts(root)[0] == "Momo"  # no initial placeholder when there is an image


@pytest.mark.parametrize(
    "avatar",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:x",
        "//example.com/a.png",
        "ftp://example.com/a.png",
        " https://example.com/a.png",
        123,
        {"url": "https://example.com"},
    ],
)
def test_unsafe_or_odd_avatar_falls_back_to_initial(avatar: Any) -> None:
    svg = render_card({"name": "momo", "avatar": avatar}, "t")
    root = parse(svg)
    assert image(root) is None
    assert texts(root)[0] == "M"
    assert "javascript" not in svg.lower() and "vbscript" not in svg.lower()


def test_avatar_url_cannot_break_out_of_the_attribute() -> None:
    avatar = 'https://e.com/a.png" onload="alert(1)'
    root = parse(render_card({"name": "x", "avatar": avatar}, "t"))
    img = image(root)
    assert img is not None
    assert img.get("href") == avatar  # kept as one attribute value
    assert img.get("onload") is None


def test_initial_is_escaped() -> None:
    root = parse(render_card({"name": "<b>"}, "t"))
    assert texts(root)[0] == "<"


def test_unicode_is_kept() -> None:
    root = parse(render_card({"name": "桃子", "bio": "喵 🐱"}, "标题"))
    assert texts(root) == ["桃", "桃子", "喵 🐱", "标题"]


def test_control_characters_do_not_break_the_xml() -> None:
    parse(render_card({"name": "bad\x01name", "bio": "tab\x0bbio"}, "t\x1f"))
