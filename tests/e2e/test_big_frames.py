"""Large frames: an anonymous peer's big frames are refused unread, and a logged-in user's big frame is
parsed off the event loop, so other connections are answered meanwhile."""

from __future__ import annotations

import time

from tests.conftest import Bridge
from tests.support.hub_client import eventually


async def test_a_big_frame_before_login_is_refused_unread(bridge: Bridge) -> None:
    c = await bridge.client()
    await c.send_raw(
        '{"request_id":"x","protocol":"system","type":"heartbeat","data":{"p":"'
        + "a" * 70_000
        + '"}}'
    )
    failure = await c.wait_for(lambda f: f.get("code") == 1)
    assert failure["data"]["error"] == "BAD_FRAME" and "before login" in failure["data"]["reason"]
    assert (await c.login("now-small"))["code"] == 0  # the connection stays usable


async def test_heartbeats_are_answered_while_a_huge_frame_is_parsed(bridge: Bridge) -> None:
    heavy = await bridge.client("heavy")
    other = await bridge.client("other")
    # About 1 MiB of deep nesting: checking it takes ~0.4 s of CPU here. Parsed on the loop,
    # the other user's heartbeat would wait for all of it.
    nested = "[" * 500_000 + "]" * 500_000
    for _ in range(3):
        await heavy.send_raw(nested)
        t0 = time.monotonic()
        answer = await other.request("system", "heartbeat", {"timestamp": int(time.time() * 1000)})
        assert answer["code"] == 0
        assert time.monotonic() - t0 < 0.25
    # The big frames were answered too (failures: too deep), and the connection is usable.
    await eventually(lambda: len([f for f in heavy.frames if f.get("code") == 1]) >= 3, 30)
    assert all(f["data"]["error"] == "BAD_FRAME" for f in heavy.frames if f.get("code") == 1)
    pong = await heavy.request("system", "heartbeat", {})
    assert pong["code"] == 0
