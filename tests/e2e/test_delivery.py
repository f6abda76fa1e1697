"""Confirmed push delivery over real sockets: a push stays in the outbox until the peer confirms
it (`system/ack`, or the pong to a ping sent after it), and whatever was not confirmed comes
again at the next login with the same message_id and seq. Every push frame carries an integer
top-level seq that grows per user."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.outbox import Push
from tests.conftest import Bridge
from tests.support.hub_client import WAIT, HubClient
from tests.support.hub_peers import MutePeer

CONTACT = "momo"


def push(message_id: int, text: str = "") -> Push:
    return Push(
        kind="message",
        contact=CONTACT,
        message_id=message_id,
        segments=[{"type": "text", "data": {"text": text or f"m{message_id}"}}],
        time=int(time.time()),
        sender_id=CONTACT,
        sender_name=CONTACT,
    )


def ids_and_seqs(frames: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(f["data"]["content"]["message_id"], f["seq"]) for f in frames]


def assert_seqs(frames: list[dict[str, Any]]) -> None:
    seqs = [f.get("seq") for f in frames]
    assert all(type(s) is int and s > 0 for s in seqs), frames
    assert seqs == sorted(set(seqs)), seqs


async def settle(c: HubClient) -> None:
    """A heartbeat round trip: everything the server had queued for ``c`` before has arrived."""
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def replayed(bridge: Bridge, user: str) -> list[dict[str, Any]]:
    """Log ``user`` in on a fresh connection and return what it was sent before a heartbeat."""
    c = await bridge.client(user)
    await settle(c)
    return c.pushes()


# ----- a silently dead connection --------------------------------------------------------------


async def test_push_into_a_dead_connection_comes_again_at_next_login(bridge: Bridge) -> None:
    """The defect: a reply pushed into a silently dead connection was neither delivered nor
    redelivered. The dead peer still holds its TCP connection; it never reads, never pongs."""
    dead = await MutePeer.open(bridge.url, rcvbuf=4096)
    await dead.login("dora")
    await dead.stall()
    delivered = await bridge.app.outbox.push("dora", push(7, "are you there?"))
    assert delivered == 1  # the server thinks the connection is alive: offered to it
    assert await bridge.app.outbox.pending_count("dora") == 1
    # A new connection while the dead one is still open on the server.
    fresh = await bridge.client("dora")
    got = await fresh.wait_push()
    assert got["data"]["content"]["message_id"] == 7
    assert got["data"]["content"]["message"][0]["data"]["text"] == "are you there?"
    first_seq = got["seq"]
    assert type(first_seq) is int
    dead.kill()
    async with asyncio.timeout(WAIT):
        await bridge.app.hub.wait_connections(1)
    # The live connection pongs: confirmed, never sent again.
    await fresh.close()
    bridge.clients.remove(fresh)
    assert await replayed(bridge, "dora") == []


async def test_read_but_unconfirmed_push_is_replayed_with_same_id_and_seq(bridge: Bridge) -> None:
    """A peer that read the pushes but never confirmed them (no ack, no pong) and died gets
    them again, in order, with the same message_id and seq: at least once."""
    peer = await MutePeer.open(bridge.url)
    await peer.login("erin")
    for i in (1, 2, 3):
        await bridge.app.outbox.push("erin", push(i))
    await peer.wait_for(lambda f: len(peer.pushes()) >= 3)
    first = peer.pushes()
    assert_seqs(first)
    peer.kill()
    async with asyncio.timeout(WAIT):
        await bridge.app.hub.wait_connections(0)
    again = await replayed(bridge, "erin")
    assert ids_and_seqs(again) == ids_and_seqs(first)
    assert [f["data"] for f in again] == [f["data"] for f in first]


DEAD_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from websockets.asyncio.client import connect

    async def main(url, user):
        async with connect(url, ping_interval=None) as ws:
            await ws.send(json.dumps({"request_id": 1, "protocol": "system", "type": "login",
                                      "data": {"mio-chat-id": user}}))
            json.loads(await ws.recv())
            print("ready", flush=True)
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("seq"):
                    print("push", frame["seq"], flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.fixture
async def frozen_client(bridge: Bridge) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DEAD_CLIENT,
        bridge.url,
        "fay",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            assert (await proc.stdout.readline()).strip() == b"ready"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_push_to_a_frozen_process_is_redelivered(
    bridge: Bridge, frozen_client: asyncio.subprocess.Process
) -> None:
    """A client process stopped with SIGSTOP: its kernel still accepts the bytes, nobody reads
    them or answers the ping. The push is never confirmed and comes again at the next login."""
    os.kill(frozen_client.pid, signal.SIGSTOP)
    await bridge.app.outbox.push("fay", push(11, "frozen"))
    fresh = await bridge.client("fay")
    got = await fresh.wait_push()
    assert got["data"]["content"]["message_id"] == 11 and type(got["seq"]) is int
    frozen_client.kill()  # SIGKILL ends a stopped process too
    await frozen_client.wait()
    async with asyncio.timeout(WAIT):
        await bridge.app.hub.wait_connections(1)


# ----- confirming ------------------------------------------------------------------------------


async def test_ack_confirms_up_to_seq(bridge: Bridge) -> None:
    peer = await MutePeer.open(bridge.url)
    await peer.login("gus")
    for i in (1, 2, 3):
        await bridge.app.outbox.push("gus", push(i))
    await peer.wait_for(lambda f: len(peer.pushes()) >= 3)
    pushes = peer.pushes()
    assert_seqs(pushes)
    ack = await peer.request("system", "ack", {"seq": pushes[1]["seq"]}, "ack-1")
    assert ack["code"] == 0 and ack["type"] == "ack", ack
    assert await bridge.app.outbox.pending_count("gus") == 1
    peer.kill()
    again = await replayed(bridge, "gus")
    # Only the one after the acked seq, exactly as it was.
    assert ids_and_seqs(again) == ids_and_seqs(pushes[2:])


async def test_ack_beyond_what_was_sent_confirms_only_what_was_sent(bridge: Bridge) -> None:
    peer = await MutePeer.open(bridge.url)
    await peer.login("hal")
    await bridge.app.outbox.push("hal", push(1))
    await peer.wait_for(lambda f: len(peer.pushes()) >= 1)
    assert (await peer.request("system", "ack", {"seq": 2**62}, "ack-far"))["code"] == 0
    # Stored after that ack: the ack cannot have confirmed it.
    await bridge.app.outbox.push("hal", push(2))
    await peer.wait_for(lambda f: len(peer.pushes()) >= 2)
    peer.kill()
    again = await replayed(bridge, "hal")
    assert [m for m, _ in ids_and_seqs(again)] == [2]


@pytest.mark.parametrize(
    "data", [{"seq": -1}, {"seq": "5"}, {"seq": 1.5}, {"seq": True}, {"seq": 2**64}, {}, [1]]
)
async def test_bad_ack_is_invalid_data_and_confirms_nothing(bridge: Bridge, data: Any) -> None:
    peer = await MutePeer.open(bridge.url)
    await peer.login("ivy")
    await bridge.app.outbox.push("ivy", push(1))
    await peer.wait_for(lambda f: len(peer.pushes()) >= 1)
    raw = json.dumps({"request_id": "bad", "protocol": "system", "type": "ack", "data": data})
    await peer.ws.send(raw)
    f = await peer.wait_for(lambda f: f.get("request_id") in ("bad", None))
    assert f["code"] == 1 and f["data"]["error"] in ("INVALID_DATA", "BAD_FRAME"), f
    assert await bridge.app.outbox.pending_count("ivy") == 1
    peer.kill()


@pytest.mark.parametrize("repeat", range(5))
async def test_pong_confirms_then_clean_reconnect_replays_nothing(
    bridge: Bridge, repeat: int
) -> None:
    """A normal client (websockets answers pings itself) confirms by pong: a clean close right
    after reading the pushes, and nothing is sent again."""
    c = await bridge.client("jon")
    for i in (1, 2, 3):
        await bridge.app.outbox.push("jon", push(i))
    await c.wait_for(lambda f: len(c.pushes()) >= 3)
    assert_seqs(c.pushes())
    # Past this round trip the client has read the ping written after the pushes, and answered.
    await settle(c)
    await c.close()
    bridge.clients.remove(c)
    async with asyncio.timeout(WAIT):
        await bridge.app.hub.wait_connections(0)
    assert await replayed(bridge, "jon") == []


async def test_seq_grows_per_user_across_live_and_replayed_pushes(bridge: Bridge) -> None:
    for i in (1, 2):
        await bridge.app.outbox.push("kim", push(i))  # stored while offline
    other = await bridge.client("lea")
    c = await bridge.client("kim")
    await c.wait_for(lambda f: len(c.pushes()) >= 2)
    for i in (3, 4):
        await bridge.app.outbox.push("kim", push(i))
        await bridge.app.outbox.push("lea", push(100 + i))
    await bridge.app.outbox.push("kim", Push(kind="recall", contact=CONTACT, message_id=3))
    await c.wait_for(lambda f: len(c.pushes()) >= 5)
    await other.wait_for(lambda f: len(other.pushes()) >= 2)
    assert [f["data"]["content"]["message_id"] for f in c.pushes()] == [1, 2, 3, 4, 3]
    assert c.pushes()[-1]["type"] == "del_msg"
    assert_seqs(c.pushes())
    assert_seqs(other.pushes())
