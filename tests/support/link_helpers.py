"""Small helpers for tests that talk to the bot contact through the hub."""

from __future__ import annotations

from typing import Any

from tests.support.hub_client import HubClient

BOT = "10000"


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


def texts(c: HubClient) -> list[str]:
    """The text of every message push the client got, in order."""
    return [
        "".join(s["data"].get("text", "") for s in p["data"]["content"]["message"])
        for p in c.pushes("message")
    ]


async def say(c: HubClient, t: str) -> int:
    """Send ``t`` to the bot; the stored message id."""
    f = await c.request("onebot", "message", text(t), id=BOT)
    assert f["code"] == 0, f
    return int(f["data"]["message_id"])
