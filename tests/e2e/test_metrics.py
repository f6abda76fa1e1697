"""/metrics on a running bridge: counts move with real traffic; the token and the switch."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.fake_openai import FakeOpenAI

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(bridge: Bridge, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.http + "/metrics", headers=headers or {}) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


async def scrape(bridge: Bridge, headers: dict[str, str] | None = None) -> Samples:
    status, content_type, text = await get(bridge, headers)
    assert status == 200, text
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_traffic_moves_the_counts(bridge_factory: Any) -> None:
    hub = await bridge_factory(momohub={"enabled": True})
    before = await scrape(hub)
    assert value(before, "momobridge_hub_connections", transport="websocket") == 0

    c = await hub.client("mia")
    assert (await c.request("system", "heartbeat", {"timestamp": ""}))["code"] == 0
    rid = await c.send("onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=MOMO)
    assert (await c.reply(rid))["code"] == 0
    assert (await c.stream(rid))[-1]["message"] == "completed"
    ask = {"model": f"character:{MOMO}", "messages": [{"role": "user", "content": "hello"}]}
    assert (await c.stream(await c.send("openai", "completions", ask)))[-1]["message"] == (
        "completed"
    )
    after = await scrape(hub)

    assert moved(before, after, "momobridge_logins_total", transport="websocket", result="ok") == 1
    frames = "momobridge_frames_received_total"
    beats = dict(transport="websocket", protocol="system", type="heartbeat")
    assert moved(before, after, frames, **beats) == 1
    assert moved(before, after, frames, transport="websocket", protocol="system", type="login") == 1
    replies = "momobridge_replies_total"
    assert moved(before, after, replies, target="momohub", result="completed") == 2
    assert moved(before, after, "momobridge_reply_seconds_count", target="momohub") == 2
    first = "momobridge_reply_first_token_seconds_count"
    assert moved(before, after, first, target="momohub") == 2
    assert value(after, "momobridge_hub_connections", transport="websocket") == 1
    assert moved(before, after, "momobridge_pushes_total", event="stored") >= 1
    assert value(after, "momobridge_stream_slots_in_use") == 0
    assert value(after, "momobridge_outbox_pending") >= 0
    assert value(after, "process_resident_memory_bytes") > 0


async def test_a_refused_login_counts(bridge_factory: Any) -> None:
    bridge = await bridge_factory(auth={"user_code": "letmein"})
    before = await scrape(bridge)
    c = await bridge.client()
    await c.send("system", "login", {"mio-chat-id": "x", "mio-chat-token": "wrong"})
    assert await c.wait_closed() is not None
    after = await scrape(bridge)
    name = "momobridge_logins_total"
    assert moved(before, after, name, transport="websocket", result="refused") == 1


async def test_a_failed_upstream_counts_as_an_upstream_error(
    bridge_factory: Any, upstream: FakeOpenAI
) -> None:
    provider = {"name": "fake", "base_url": upstream.base_url, "api_key": "sk", "timeout": 1.0}
    hub = await bridge_factory(openai={"default_model": "fake/echo", "providers": [provider]})
    before = await scrape(hub)
    c = await hub.client("ivy")
    ask = {"model": "fake/fail-500", "messages": [{"role": "user", "content": "hi"}]}
    frames = await c.stream(await c.send("openai", "completions", ask))
    assert frames[-1]["message"] == "failed"
    after = await scrape(hub)
    errors = "momobridge_upstream_errors_total"
    assert moved(before, after, errors, target="openai", code="UPSTREAM_ERROR") == 1
    assert moved(before, after, "momobridge_replies_total", target="openai", result="failed") == 1


async def test_a_token_protects_it(bridge_factory: Any) -> None:
    hub = await bridge_factory(console={"metrics_token": "s3cret"})
    assert (await get(hub))[0] == 401
    assert (await get(hub, {"Authorization": "Bearer nope"}))[0] == 401
    assert (await get(hub, {"Authorization": "Basic s3cret"}))[0] == 401
    await scrape(hub, {"Authorization": "Bearer s3cret"})


async def test_off_is_not_served(bridge_factory: Any) -> None:
    hub = await bridge_factory(console={"metrics": False})
    assert (await get(hub))[0] == 404


async def test_without_a_token_only_this_host_may_scrape(bridge_factory: Any) -> None:
    """No token: a scrape through a proxy (which forwards anyone's request from loopback) is
    refused; with a token it goes through."""
    hub = await bridge_factory()
    assert (await get(hub, {"X-Forwarded-For": "203.0.113.9"}))[0] == 403
    await scrape(hub)
    tokened = await bridge_factory(console={"metrics_token": "s3cret"})
    headers = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer s3cret"}
    await scrape(tokened, headers)
