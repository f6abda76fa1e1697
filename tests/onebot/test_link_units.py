"""Pure pieces of the framework link: backoff, log-safe URLs, segment mapping both ways."""

from __future__ import annotations

import pytest

from adapters.onebot.framework_actions import order_key, reserved_numbers
from adapters.onebot.framework_link import backoff_delay, safe_url
from adapters.onebot.segments import from_hub, refused_image, to_hub, to_onebot
from bridge.config import Config
from bridge.models import Segment

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


def test_backoff_doubles_then_caps() -> None:
    mid = [backoff_delay(a, 0.5, 8.0, uniform=lambda lo, hi: 1.0) for a in range(8)]
    assert mid == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_backoff_jitter_stays_within_a_fifth_and_under_the_cap() -> None:
    lo = backoff_delay(3, 1.0, 60.0, uniform=lambda a, b: a)
    hi = backoff_delay(3, 1.0, 60.0, uniform=lambda a, b: b)
    assert lo == pytest.approx(6.4) and hi == pytest.approx(8.0)
    for _ in range(200):
        # The cap is a promise: a framework that comes back is redialed within it.
        assert 0.8 * 10 <= backoff_delay(50, 1.0, 10.0) <= 10.0
        assert backoff_delay(3, 1.0, 5.0) <= 5.0


def test_backoff_survives_huge_attempt_counts() -> None:
    assert backoff_delay(10**6, 1.0, 30.0, uniform=lambda a, b: 1.0) == 30.0


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("ws://127.0.0.1:8080/onebot/v11/ws", "ws://127.0.0.1:8080/onebot/v11/ws"),
        ("ws://h:1/ws?access_token=s3cret", "ws://h:1/ws"),
        ("wss://user:pw@example.com/OneBotv11", "wss://example.com/OneBotv11"),
    ],
)
def test_safe_url_drops_credentials(url: str, safe: str) -> None:
    assert safe_url(url) == safe


def test_hub_message_as_onebot_segments() -> None:
    segs = to_onebot(
        [
            Segment.text("hi"),
            Segment("image", {"image": "https://x/y.png"}),
            Segment("reply", {"id": 12}),
            Segment("nodes", {"messages": [{"message_id": 3, "message": []}]}),
        ],
        forward_id=77,
    )
    assert segs == [
        Segment.text("hi"),
        Segment("image", {"file": "https://x/y.png", "url": "https://x/y.png"}),
        Segment("reply", {"id": "12"}),  # OneBot segment data values are strings
        Segment("forward", {"id": "77"}),
    ]


def test_framework_images_become_urls_a_browser_can_show() -> None:
    out = to_hub(
        [
            Segment("image", {"file": f"base64://{PNG}"}),
            Segment("image", {"file": "abc.image", "url": "https://cdn/x.jpg"}),
            Segment("image", {"file": "data:image/gif;base64,R0lGOD"}),
        ]
    )
    assert out[0]["data"]["url"] == f"data:image/png;base64,{PNG}"
    assert out[1]["data"]["url"] == "https://cdn/x.jpg"
    assert out[2]["data"]["url"].startswith("data:image/gif")
    assert all(refused_image(Segment("image", s["data"])) == "" for s in out)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"file": "file:///etc/passwd"}, "local file"),
        ({"file": "/etc/passwd"}, "local file"),
        ({"file": "C:\\Users\\me\\a.png"}, "local file"),
        ({"file": "base64://@@@@"}, "not valid base64"),
        ({"file": "ftp://host/a.png"}, "unsupported image source (ftp)"),
        ({}, "neither url nor file"),
    ],
)
def test_unusable_framework_images_are_refused_not_read(data: dict, words: str) -> None:
    seg = Segment("image", data)
    assert words in refused_image(seg)
    # The user still sees that something was there; nothing of the path is passed on.
    assert to_hub([seg]) == [{"type": "text", "data": {"text": "[image unavailable]"}}]


def test_refused_image_ignores_other_segments() -> None:
    assert refused_image(Segment.text("file:///etc/passwd")) == ""


def test_from_hub_round_trips_stored_content() -> None:
    stored = [{"type": "text", "data": {"text": "a"}}, {"type": "face", "data": {"id": "1"}}]
    assert [s.to_json() for s in from_hub(stored)] == stored


@pytest.mark.parametrize(
    ("action", "params", "key"),
    [
        ("send_private_msg", {"user_id": 42, "message": "x"}, 42),
        ("send_private_msg", {"user_id": "42", "message": "x"}, 42),  # Koishi sends strings
        ("send_private_forward_msg", {"user_id": 42, "messages": []}, 42),
        ("send_group_msg", {"group_id": 7, "message": "x"}, 7),
        ("send_group_forward_msg", {"group_id": "7", "messages": []}, 7),
        ("send_msg", {"user_id": 42, "group_id": 7}, 7),  # group_id decides without a type
        ("send_msg", {"message_type": "private", "user_id": 42, "group_id": 7}, 42),
        ("send_msg", {"message_type": "group", "group_id": 7.0}, 7),
        ("send_forward_msg", {"user_id": 42}, 42),
        (".handle_quick_operation", {"context": {"message_type": "private", "user_id": 9}}, 9),
        (".handle_quick_operation", {"context": {"message_type": "group", "group_id": 8}}, 8),
        (".handle_quick_operation", {"context": "nonsense"}, None),
        ("send_private_msg", {"user_id": "abc"}, None),
        ("send_private_msg", {"user_id": True}, None),
        ("get_msg", {"message_id": 42}, None),
        ("delete_msg", {"message_id": 42}, None),
        ("get_login_info", {}, None),
    ],
)
def test_order_key_is_the_number_an_action_sends_to(action: str, params: dict, key: int) -> None:
    assert order_key(action, params) == key


def test_reserved_numbers_are_every_bridge_identity() -> None:
    cfg = Config.model_validate(
        {
            "auth": {"admin_qq": "20001", "bot_qq": "20000"},
            "onebot": {
                "frameworks": [
                    {"url": "ws://127.0.0.1:1/a"},
                    {"url": "ws://127.0.0.1:2/b", "self_id": "20002"},
                ]
            },
        }
    )
    assert reserved_numbers(cfg) == {20000, 20001, 20002}
