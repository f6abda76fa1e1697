"""Stream slots of `openai/completions`: whatever ends a stream (an abort in the same read as
the request, an abort while it waits behind another turn, an upstream that drops mid-reply, a
closed connection) it ends with exactly one terminal frame, and its slot of
`limits.streams_per_user` comes back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient, eventually
from tests.support.hub_peers import StrictClient

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
LIMIT = 2


@pytest.fixture
async def hub(bridge_factory, upstream: FakeOpenAI) -> Bridge:
    return await bridge_factory(
        limits={"streams_per_user": LIMIT},
        openai={
            "providers": [
                {"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test", "timeout": 1}
            ]
        },
    )


async def client(bridge: Bridge, user: str) -> StrictClient:
    c = await StrictClient.open(bridge.url)
    bridge.clients.append(c)
    await c.login(user)
    return c


def completions(rid: str, model: str, text: str = "hi", **data: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "protocol": "openai",
        "type": "completions",
        "data": {"model": model, "messages": [{"role": "user", "content": text}], **data},
    }


def abort(rid: str, target: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "protocol": "openai",
        "type": "abort",
        "data": {"request_id": target},
    }


def send_together(c: HubClient, *frames: dict[str, Any]) -> None:
    """Several frames in ONE write to the socket, so the server reads them in one go."""
    ws = c.ws
    for f in frames:
        ws.protocol.send_text(json.dumps(f).encode())
    assert ws.transport is not None
    ws.transport.write(b"".join(ws.protocol.data_to_send()))


async def settle(c: HubClient) -> None:
    """A heartbeat round trip: a second terminal frame, if any, would be here by now."""
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


def one_terminal(c: StrictClient, rid: str) -> dict[str, Any]:
    ends = c.terminal(rid)
    assert len(ends) == 1, (rid, [f for f in c.frames if f.get("request_id") == rid])
    return ends[0]


async def no_streams_left(bridge: Bridge) -> None:
    hub = bridge.app.hub
    await eventually(lambda: hub.active_streams == {}, what="every stream slot released")
    assert all(not conn.streams for conn in hub._all)


# ----- abort --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["slow", "echo"])
async def test_abort_in_the_same_read_as_the_request_releases_the_slot(
    hub: Bridge, model: str
) -> None:
    """The defect: openai/abort in the same read as its openai/completions leaked the stream
    slot for good; after `streams_per_user` of them the user only ever got BUSY."""
    c = await client(hub, "ann")
    rounds = 3 * LIMIT
    for i in range(rounds):
        send_together(c, completions(f"c{i}", model), abort(f"a{i}", f"c{i}"))
        assert (await c.reply(f"a{i}"))["code"] == 0  # it found the stream
        end = await c.wait_for(
            lambda f, i=i: (
                f.get("request_id") == f"c{i}"
                and (f.get("code") == 1 or f.get("message") == "completed")
            )
        )
        assert end["code"] == 1 and end["data"]["error"] == "CANCELLED", end
    await settle(c)
    for i in range(rounds):
        one_terminal(c, f"c{i}")
    await no_streams_left(hub)
    # Still room for a full set of streams.
    for _ in range(LIMIT):
        frames = await c.stream(
            await c.send("openai", "completions", completions("", "echo")["data"])
        )
        assert frames[-1]["message"] == "completed", frames[-1]
    assert c.violations == []


async def test_abort_while_queued_behind_another_turn(hub: Bridge, upstream: FakeOpenAI) -> None:
    """Cancelled before its stream starts: the second completion of a conversation waits for
    the first; aborting it then ends it at once, and it never reaches the upstream."""
    c = await client(hub, "ben")
    c.frames.clear()
    send_together(c, completions("first", "slow"))
    await c.wait_for(lambda f: f.get("request_id") == "first" and f.get("message") == "update")
    send_together(c, completions("second", "slow"))
    await c.wait_for(lambda f: f.get("request_id") == "second" and f.get("message") == "pending")
    assert len(upstream.requests) == 1
    send_together(c, abort("a2", "second"))
    assert (await c.reply("a2"))["code"] == 0
    end = await c.wait_for(lambda f: f.get("request_id") == "second" and f.get("code") == 1)
    assert end["data"]["error"] == "CANCELLED"
    # The first one keeps streaming.
    seen = len([f for f in c.frames if f.get("request_id") == "first"])
    await c.wait_for(
        lambda f: len([g for g in c.frames if g.get("request_id") == "first"]) > seen + 1
    )
    send_together(c, abort("a1", "first"))
    assert (await c.reply("a1"))["code"] == 0
    end = await c.wait_for(lambda f: f.get("request_id") == "first" and f.get("code") == 1)
    assert end["data"]["error"] == "CANCELLED"
    await settle(c)
    one_terminal(c, "first")
    one_terminal(c, "second")
    await upstream.wait_open_streams(0)
    assert len(upstream.requests) == 1  # the second never reached the upstream
    await no_streams_left(hub)
    assert c.violations == []


async def test_abort_queued_in_the_same_read_as_the_turn_ahead(
    hub: Bridge, upstream: FakeOpenAI
) -> None:
    """Two completions of one conversation and an abort of the second, in one write."""
    c = await client(hub, "cy")
    for i in range(3 * LIMIT):
        send_together(
            c,
            completions(f"x{i}", "echo"),
            completions(f"y{i}", "echo"),
            abort(f"a{i}", f"y{i}"),
        )
        assert (await c.reply(f"a{i}"))["code"] == 0
        await c.stream(f"x{i}")
        await c.stream(f"y{i}")
    await settle(c)
    for i in range(3 * LIMIT):
        assert one_terminal(c, f"x{i}")["message"] == "completed"
        assert one_terminal(c, f"y{i}")["data"]["error"] == "CANCELLED"
    await no_streams_left(hub)


async def test_abort_of_another_users_request_is_not_found(hub: Bridge) -> None:
    owner = await client(hub, "dee")
    stranger = await client(hub, "eve")
    send_together(owner, completions("shared-id", "slow"))
    await owner.wait_for(
        lambda f: f.get("request_id") == "shared-id" and f.get("message") == "update"
    )
    f = await stranger.request("openai", "abort", {"request_id": "shared-id"})
    assert f["code"] == 1 and f["data"]["error"] == "NOT_FOUND", f
    # The owner's stream is unaffected: more updates, no failure.
    seen = len(owner.frames)
    await owner.wait_for(lambda f: f.get("message") == "update", start=seen + 1)
    assert not owner.terminal("shared-id")
    send_together(owner, abort("mine", "shared-id"))
    assert (await owner.reply("mine"))["code"] == 0
    await owner.stream("shared-id")
    await settle(owner)
    assert one_terminal(owner, "shared-id")["data"]["error"] == "CANCELLED"
    await no_streams_left(hub)


async def test_abort_after_the_end_is_not_found_and_adds_no_frame(hub: Bridge) -> None:
    c = await client(hub, "fin")
    send_together(c, completions("done", "echo"))
    await c.stream("done")
    f = await c.request("openai", "abort", {"request_id": "done"})
    assert f["data"]["error"] == "NOT_FOUND"
    await settle(c)
    assert one_terminal(c, "done")["message"] == "completed"


async def test_abort_from_another_tab_of_the_same_user(hub: Bridge) -> None:
    tab1 = await client(hub, "gil")
    tab2 = await client(hub, "gil")
    send_together(tab1, completions("t1", "slow"))
    await tab1.wait_for(lambda f: f.get("request_id") == "t1" and f.get("message") == "update")
    assert (await tab2.request("openai", "abort", {"request_id": "t1"}))["code"] == 0
    await tab1.stream("t1")
    await settle(tab1)
    assert one_terminal(tab1, "t1")["data"]["error"] == "CANCELLED"
    assert not tab2.terminal("t1")
    await no_streams_left(hub)


# ----- other ends ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "error"),
    [("drop", "UPSTREAM_ERROR"), ("stall", "UPSTREAM_TIMEOUT"), ("fail-500", "UPSTREAM_ERROR")],
)
async def test_upstream_failure_inside_the_stream(
    hub: Bridge, upstream: FakeOpenAI, model: str, error: str
) -> None:
    c = await client(hub, "hana")
    for i in range(LIMIT + 1):
        send_together(c, completions(f"{model}-{i}", model))
        frames = await c.stream(f"{model}-{i}")
        assert frames[-1]["data"]["error"] == error, frames[-1]
    await settle(c)
    for i in range(LIMIT + 1):
        one_terminal(c, f"{model}-{i}")
    await upstream.wait_open_streams(0)
    await no_streams_left(hub)
    frames = await c.stream(await c.send("openai", "completions", completions("", "echo")["data"]))
    assert frames[-1]["message"] == "completed"
    assert c.violations == []


async def test_closed_connection_releases_its_slots(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await client(hub, "ida")
    send_together(c, completions("s1", "slow"), completions("s2", "slow", conversation_id="b"))
    for rid in ("s1", "s2"):
        await c.wait_for(lambda f, r=rid: f.get("request_id") == r and f.get("message") == "update")
    f = await c.request("openai", "completions", completions("", "echo")["data"])
    assert f["data"]["error"] == "BUSY"
    await c.close()
    hub.clients.remove(c)
    await upstream.wait_open_streams(0)
    await no_streams_left(hub)
    c2 = await client(hub, "ida")
    frames = await c2.stream(
        await c2.send("openai", "completions", completions("", "echo")["data"])
    )
    assert frames[-1]["message"] == "completed"


async def test_character_completion_and_abort_in_one_read(bridge_factory) -> None:
    b = await bridge_factory(momohub={"enabled": True}, limits={"streams_per_user": LIMIT})
    c = await client(b, "jay")
    model = f"character:{MOMO}"
    for i in range(3 * LIMIT):
        send_together(c, completions(f"k{i}", model, "/slow"), abort(f"a{i}", f"k{i}"))
        assert (await c.reply(f"a{i}"))["code"] == 0
        await c.stream(f"k{i}")
    await settle(c)
    for i in range(3 * LIMIT):
        assert one_terminal(c, f"k{i}")["data"]["error"] == "CANCELLED"
    await no_streams_left(b)
    frames = await c.stream(await c.send("openai", "completions", completions("", model)["data"]))
    assert frames[-1]["message"] == "completed"
