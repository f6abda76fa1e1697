"""One hub connection never holds up another: a peer that stops reading is aborted at the
transport while every other client is answered at once; frames run concurrently (bounded, BUSY
past the bound) and one conversation's frames keep their order.

Over real sockets: a bridge on an OS-chosen port, peers that stop reading with a tiny receive
buffer, a raw framework peer, the embedded MomoHub sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.outbox import Push
from tests.conftest import Bridge
from tests.support.fake_framework import FakeFramework
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import WAIT, HubClient, eventually
from tests.support.hub_peers import MutePeer, server_log

BOT = "10000"
MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
PROMPT = 1.0  # "promptly": an answer within a second, on a loaded machine too
STALL = {"send_timeout": 0.5, "max_send_queue": 64 << 10}


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


def big_push(message_id: int, size: int) -> Push:
    return Push(
        kind="message",
        contact=BOT,
        message_id=message_id,
        segments=text("x" * size),
        time=int(time.time()),
        sender_id=BOT,
        sender_name="bot",
    )


@pytest.fixture
async def fw() -> AsyncIterator[FakeFramework]:
    f = FakeFramework()
    yield f
    await f.stop()


async def linked_bridge(bridge_factory, fw: FakeFramework, **sections: Any) -> Bridge:
    url = await fw.start()
    b = await bridge_factory(
        onebot={"frameworks": [{"url": url, "reconnect_interval": 0.05}]}, **sections
    )
    async with asyncio.timeout(WAIT):
        await b.app.frameworks.wait_connected(1)
    await fw.wait_connections(1)
    return b


async def timed(coro: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = await coro
    return result, time.monotonic() - t0


class Heartbeats:
    """Heartbeats back to back from ``client`` while in the block; records each round trip."""

    def __init__(self, client: HubClient) -> None:
        self.client = client
        self.times: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            frame, took = await timed(self.client.request("system", "heartbeat", {}))
            assert frame["code"] == 0, frame
            self.times.append(took)

    async def __aenter__(self) -> Heartbeats:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        if exc[0] is not None:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=exc[0] is not None)
        assert self.times or exc[0] is not None, "no heartbeat was answered"


# ----- a peer that stops reading ----------------------------------------------------------------


async def test_stalled_reader_is_aborted_while_another_user_gets_framework_replies(
    bridge_factory, fw: FakeFramework
) -> None:
    """The defect: one hub client that stopped reading delayed another user's framework reply
    from milliseconds to 28 s. Now the stalled peer is aborted at the transport, and the other
    user's replies and heartbeats stay prompt the whole time."""
    b = await linked_bridge(bridge_factory, fw, server=STALL)
    hub = b.app.hub
    stalled = await MutePeer.open(b.url, rcvbuf=4096)
    await stalled.login("20001")
    ack = await stalled.request("onebot", "message", text("hi"), "m1", id=BOT)
    assert ack["code"] == 0, ack  # the framework now knows user 20001
    live = await b.client("20002")
    assert (await live.request("onebot", "message", text("hi"), id=BOT))["code"] == 0
    await stalled.stall()
    latencies: list[float] = []
    with server_log() as log:
        async with Heartbeats(live) as beats, asyncio.timeout(60):
            for i in range(400):  # up to 25 MB for the stalled peer; it goes long before
                r = await fw.call(
                    "send_private_msg",
                    {"user_id": 20001, "message": "y" * (64 << 10)},
                    echo=f"big-{i}",
                )
                assert r["status"] == "ok", r
                t0 = time.monotonic()
                r = await fw.call(
                    "send_private_msg", {"user_id": 20002, "message": f"reply {i}"}, echo=f"r-{i}"
                )
                assert r["status"] == "ok", r
                await live.wait_push(
                    lambda f, i=i: f["data"]["content"]["message"] == text(f"reply {i}")
                )
                latencies.append(time.monotonic() - t0)
                if hub.connection_count == 1:
                    break
            await hub.wait_connections(1)  # the stalled peer is gone, the live one stays
    stalled.kill()
    assert "hub.peer_aborted" in log.getvalue()
    assert len(latencies) < 400
    assert max(latencies) < PROMPT, latencies
    assert max(beats.times) < PROMPT, max(beats.times)
    # Still fine afterwards, for both users: the stalled one logs in again and gets its backlog.
    assert (await live.request("system", "heartbeat", {}))["code"] == 0
    again = await b.client("20001")
    await again.wait_push(lambda f: f["data"]["content"]["message"][0]["data"]["text"][0] == "y")


async def test_one_push_bigger_than_the_socket_buffers_then_nothing(bridge_factory) -> None:
    """A peer that stops reading in the middle of one large frame, with nothing queued after
    it, is aborted within the send timeout too (not left hanging until its TCP times out)."""
    b = await bridge_factory(server={"send_timeout": 0.5, "max_send_queue": 16 << 20})
    hub = b.app.hub
    stalled = await MutePeer.open(b.url, rcvbuf=4096)
    await stalled.login("big")
    other = await b.client("calm")
    await stalled.stall()
    with server_log() as log:
        # More than the kernel's socket buffers hold (4 MB send side at most here), less than
        # the send queue's bound: only the send timeout can notice this peer.
        await b.app.outbox.push("big", big_push(1, 8 << 20))
        async with Heartbeats(other) as beats, asyncio.timeout(0.5 + 10):
            await hub.wait_connections(1)
    stalled.kill()
    assert "hub.peer_aborted" in log.getvalue()
    assert max(beats.times) < PROMPT
    assert await b.app.outbox.pending_count("big") == 1  # never confirmed: kept for next time


async def test_stalled_tab_does_not_delay_the_users_live_tab(
    bridge_factory, upstream: FakeOpenAI
) -> None:
    b = await bridge_factory(
        server=STALL,
        openai={
            "providers": [{"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"}]
        },
    )
    hub = b.app.hub
    stalled = await MutePeer.open(b.url, rcvbuf=4096)
    await stalled.login("tabs")
    live = await b.client("tabs")
    # The stalled tab has a stream running upstream; the abort ends it.
    await stalled.ws.send(
        '{"request_id":"slow-1","protocol":"openai","type":"completions",'
        '"data":{"model":"slow","messages":[{"role":"user","content":"hi"}]}}'
    )
    await stalled.wait_for(
        lambda f: f.get("request_id") == "slow-1" and f.get("message") == "update"
    )
    await stalled.stall()
    latencies = []
    async with asyncio.timeout(60):
        for i in range(1, 801):  # up to 25 MB for the stalled tab; it goes long before
            t0 = time.monotonic()
            await b.app.outbox.push("tabs", big_push(i, 32 << 10))
            await live.wait_push(lambda f, i=i: f["data"]["content"]["message_id"] == i)
            latencies.append(time.monotonic() - t0)
            if hub.connection_count == 1:
                break
        await hub.wait_connections(1)
    stalled.kill()
    assert len(latencies) < 800
    assert max(latencies) < PROMPT, max(latencies)
    await upstream.wait_open_streams(0)
    assert hub.active_streams == {}
    # Every push the live tab saw carries an increasing seq.
    seqs = [p["seq"] for p in live.pushes()]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(set(seqs))


# ----- concurrency ------------------------------------------------------------------------------


async def test_frames_in_flight_bound_gives_busy_and_heartbeats_still_answered(
    bridge_factory,
) -> None:
    b = await bridge_factory(momohub={"enabled": True}, limits={"frames_in_flight": 2})
    sandbox_url = b.app.sandbox.base_url
    c = await b.client("busy")
    ids = []
    for t in ("one", "two"):
        rid = await c.send("onebot", "message", text(t), id=MOMO)
        ids.append((await c.reply(rid))["data"]["message_id"])
        frames = await c.stream(rid)
        assert frames[-1]["message"] == "completed"
    # Each recall now waits on a stalled upstream DELETE: two slow frames in flight.
    async with aiohttp.ClientSession() as http:
        rule = {"path": r"DELETE /v1/chats/.*/messages/.*", "stall": 5, "count": 10}
        async with http.post(f"{sandbox_url}/_sandbox/faults", json=rule) as r:
            assert r.status < 300
    slow = [
        await c.send(
            "onebot", "del_message", {"id": MOMO, "type": "message", "content": {"message_id": m}}
        )
        for m in ids
    ]
    # Until the upstream has both DELETEs: both frames are in flight then.
    async with aiohttp.ClientSession() as http:

        async def both_deletes_arrived() -> bool:
            async with http.get(f"{sandbox_url}/_sandbox/stats") as r:
                stats = await r.json()
            return sum(n for k, n in stats["requests"].items() if k.startswith("DELETE")) >= 2

        await eventually(both_deletes_arrived, what="both recalls at the upstream")
    third, took = await timed(c.request("onebot", "message", text("three"), id=MOMO))
    assert third["code"] == 1 and third["data"]["error"] == "BUSY", third
    assert took < PROMPT
    beat, took = await timed(c.request("system", "heartbeat", {}))
    assert beat["code"] == 0 and took < PROMPT
    for rid in slow:
        assert not any(f.get("request_id") == rid for f in c.frames)  # still running
    for rid in slow:
        f = await c.reply(rid, timeout=30)
        assert f["code"] == 0, f
    # Room again once they are done.
    rid = await c.send("onebot", "message", text("four"), id=MOMO)
    assert (await c.reply(rid))["code"] == 0
    assert (await c.stream(rid))[-1]["message"] == "completed"


async def test_frames_for_one_conversation_keep_their_order(
    bridge_factory, fw: FakeFramework
) -> None:
    b = await linked_bridge(bridge_factory, fw, momohub={"enabled": True})
    c = await b.client("30003")
    n = 20
    # Back to back, without waiting for any answer.
    bot_rids = [await c.send("onebot", "message", text(f"fw {i}"), id=BOT) for i in range(n)]
    momo_rids = [await c.send("onebot", "message", text(f"momo {i}"), id=MOMO) for i in range(5)]
    acks = [await c.reply(rid) for rid in bot_rids]
    assert all(a["code"] == 0 for a in acks), acks
    mids = [a["data"]["message_id"] for a in acks]
    assert mids == sorted(mids)
    await fw.wait(lambda f: f.get("raw_message") == f"fw {n - 1}")
    events = [f["raw_message"] for f in fw.frames if f.get("post_type") == "message"]
    assert events == [f"fw {i}" for i in range(n)]
    assert [f["message_id"] for f in fw.frames if f.get("post_type") == "message"] == mids
    replies = []
    for rid in momo_rids:
        frames = await c.stream(rid, timeout=30)
        replies.append("".join(f["data"]["chunk"] for f in frames if f["message"] == "update"))
    assert replies == [f"Momo: you said momo {i}" for i in range(5)]
    chat = await b.app.storage.conversations.get("30003", MOMO, "default")
    msgs = await b.app.momohub.list_messages(chat, page=1, limit=50)
    assert [m.text for m in msgs if m.senderType == "USER"] == [f"momo {i}" for i in range(5)]


# ----- the send queue's bound is for peers that fall behind, not for long backlogs -------------


async def test_backlog_longer_than_the_send_queue_is_replayed_in_full(bridge_factory) -> None:
    """A user away long enough to have more waiting than `max_send_queue` holds logs in and
    gets all of it, in order, then what is pushed meanwhile (before: aborted at every login)."""
    b = await bridge_factory(server=STALL)
    for i in range(1, 41):  # 40 x 16 KiB: ten times the queue's bound
        await b.app.outbox.push("away", big_push(i, 16 << 10))
    c = await b.client()
    rid = await c.send("system", "login", {"mio-chat-id": "away"})
    assert (await c.reply(rid))["code"] == 0
    # Live pushes while the backlog is going out come after it.
    for i in range(41, 46):
        await b.app.outbox.push("away", big_push(i, 16 << 10))
    await c.wait_for(lambda f: len(c.pushes()) >= 45, timeout=30)
    assert [p["data"]["content"]["message_id"] for p in c.pushes()] == list(range(1, 46))
    seqs = [p["seq"] for p in c.pushes()]
    assert seqs == sorted(set(seqs))
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    await c.close()
    b.clients.remove(c)
    async with asyncio.timeout(WAIT):
        await b.app.hub.wait_connections(0)
    again = await b.client("away")
    assert (await again.request("system", "heartbeat", {}))["code"] == 0
    assert again.pushes() == []  # confirmed by pong: nothing twice


async def test_one_push_larger_than_the_send_queue_is_delivered(bridge_factory) -> None:
    """A single frame over `max_send_queue` is not a peer falling behind: it goes out (the
    send timeout still guards it), live and replayed (before: aborted, at every login again)."""
    b = await bridge_factory(server=STALL)
    c = await b.client("wide")
    await b.app.outbox.push("wide", big_push(1, 256 << 10))
    got = await c.wait_push()
    assert len(got["data"]["content"]["message"][0]["data"]["text"]) == 256 << 10
    assert (await c.request("system", "heartbeat", {}))["code"] == 0
    await b.app.outbox.push("offline", big_push(2, 256 << 10))
    d = await b.client("offline")
    assert (await d.wait_push())["data"]["content"]["message_id"] == 2
    assert (await d.request("system", "heartbeat", {}))["code"] == 0
