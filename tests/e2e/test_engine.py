"""The conversation engine end to end: hub client ↔ bridge ↔ MomoHub sandbox over real sockets.

One conversation's turns reach MomoHub one at a time and in order; a recall acts on exactly the
turn it names (a queued one is dropped before MomoHub sees it, the running one is cancelled and its
upstream request closed, a finished one deleted by its recorded ids, never by text); limits and
names behave; a slow upstream never holds up a heartbeat or an abort; and nothing is left behind in
memory once the conversations are over.

The sandbox runs inside the test process, so its stored messages are read straight from its
store; its faults are queued through its control API like any client would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import Bridge
from tests.support.hub_client import HubClient, eventually

MOMO = next(c.id for c in DEMO_CHARACTERS if c.name == "Momo")
KURO = next(c.id for c in DEMO_CHARACTERS if c.name == "Kuro")
SENSEI = next(c.id for c in DEMO_CHARACTERS if c.name == "Sensei")

STREAM_POST = "POST /v1/chats/{chatId}/messages"
CHAT_POST = "POST /v1/chats"
MESSAGE_DELETE = "DELETE /v1/chats/{chatId}/messages/{messageId}"
# Long enough that the tests' own steps fit easily inside it; a fault stall wakes at shutdown.
STALL = 30
# What "answered at once" means while an upstream is stalled for STALL seconds.
PROMPT = 2.0
# `/slow` streams one token per 0.2 s: this reply takes about 3 s.
SLOW = "take your time /slow with this one please a b c d e f"


def text(t: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": t}}]


def echo(t: str, name: str = "Momo") -> str:
    return f"{name}: you said {t}"


class Upstream:
    """The bridge's embedded sandbox: its store and stats in-process, its faults over HTTP."""

    def __init__(self, bridge: Bridge) -> None:
        assert bridge.app.sandbox is not None
        self.bridge = bridge
        self.server = bridge.app.sandbox
        self.base = self.server.base_url

    @property
    def store(self) -> Any:
        return self.server.state.store

    @property
    def stats(self) -> Any:
        return self.server.state.stats

    def requests(self, route: str) -> int:
        return self.stats.requests[route]

    async def fault(self, **rule: Any) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base}/_sandbox/faults", json=rule) as r:
                assert r.status == 201, await r.text()

    async def chat_id(self, user: str, character: str = MOMO, thread: str = "default") -> str:
        storage = self.bridge.app.storage
        assert storage is not None
        chat = await storage.conversations.get(user, character, thread)
        assert chat is not None, f"no MomoHub chat for {user}/{character}/{thread}"
        return chat

    async def messages(
        self, user: str, character: str = MOMO, thread: str = "default"
    ) -> list[tuple[str, str]]:
        """(sender, text) of the chat's messages as MomoHub stores them, oldest first."""
        chat = await self.chat_id(user, character, thread)
        return [(m.sender, m.text()) for m in self.store.messages.get(chat, [])]

    async def wait_stored(self, user: str, count: int, character: str = MOMO) -> None:
        async def stored() -> bool:
            storage = self.bridge.app.storage
            assert storage is not None
            if await storage.conversations.get(user, character, "default") is None:
                return False
            return len(await self.messages(user, character)) >= count

        await eventually(stored, what=f"{count} messages in {user}'s MomoHub chat")

    async def wait_closed(self) -> None:
        await eventually(
            lambda: self.stats.open_streams == 0, what="MomoHub to see its streams closed"
        )


@pytest.fixture
async def hub(bridge_factory: Any) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


# ----- client helpers -----------------------------------------------------------------------


async def submit(c: HubClient, contact: str, t: str) -> tuple[Any, int]:
    """Send a message; (request_id, message_id) once it is acknowledged."""
    rid = await c.send("onebot", "message", text(t), id=contact)
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack
    return rid, ack["data"]["message_id"]


async def converse(c: HubClient, contact: str, t: str) -> tuple[int, list[dict[str, Any]]]:
    rid, mid = await submit(c, contact, t)
    frames = await c.stream(rid)
    assert frames[-1].get("message") == "completed", frames[-1]
    return mid, frames


async def finished(c: HubClient, t: str, contact: str = MOMO) -> tuple[int, int]:
    """A turn run to the end: (the user's message id, the reply's message id)."""
    rid, mid = await submit(c, contact, t)
    frames = await c.stream(rid)
    assert frames[-1].get("message") == "completed", frames[-1]
    push = await c.wait_push(
        lambda f: f["type"] == "message" and f["data"]["content"].get("stream_request_id") == rid
    )
    return mid, push["data"]["content"]["message_id"]


def reply_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["chunk"] for f in frames if f.get("message") == "update")


def frames_of(c: HubClient, rid: Any) -> list[dict[str, Any]]:
    return [f for f in c.frames if f.get("request_id") == rid]


def terminals(c: HubClient, rid: Any) -> list[dict[str, Any]]:
    return [f for f in frames_of(c, rid) if f.get("code") == 1 or f.get("message") == "completed"]


async def first_update(c: HubClient, rid: Any) -> None:
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")


async def recall(c: HubClient, mid: int, contact: str = MOMO) -> dict[str, Any]:
    return await c.request(
        "onebot", "del_message", {"id": contact, "type": "message", "content": {"message_id": mid}}
    )


async def settle(*clients: HubClient) -> None:
    """A round trip on each connection: whatever the server queued before it has arrived."""
    for c in clients:
        f = await c.request("system", "heartbeat", {})
        assert f["code"] == 0, f


def recalled(c: HubClient) -> Counter[int]:
    return Counter(p["data"]["content"]["message_id"] for p in c.pushes("del_msg"))


async def idle(bridge: Bridge) -> None:
    """Until the engine holds no conversation owner."""
    sessions = bridge.app.sessions
    assert sessions is not None
    await eventually(lambda: len(sessions.engine) == 0, what="the engine to drop its owners")


async def complete(
    c: HubClient, model: str, content: str, conversation_id: str | None = None
) -> Any:
    data: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if conversation_id is not None:
        data["conversation_id"] = conversation_id
    return await c.send("openai", "completions", data)


# ----- 2. one conversation's turns, in order -------------------------------------------------


async def test_back_to_back_messages_reach_momohub_one_after_the_other(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("ann")
    first = await c.send("onebot", "message", text(SLOW), id=MOMO)
    second = await c.send("onebot", "message", text("and then this"), id=MOMO)
    one = await c.stream(first, timeout=30)
    two = await c.stream(second, timeout=30)
    assert reply_text(one) == echo(SLOW)
    assert reply_text(two) == echo("and then this")
    # MomoHub stores a user message when its POST starts and the reply when it is done: had the
    # second POST started while the first streamed, its user message would sit before reply 1
    # (or it would have been refused as "busy").
    assert await up.messages("ann") == [
        ("USER", SLOW),
        ("CHARACTER", echo(SLOW)),
        ("USER", "and then this"),
        ("CHARACTER", echo("and then this")),
    ]
    assert up.requests(STREAM_POST) == 2


async def test_recalling_a_queued_message_drops_it_before_momohub(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("bea")
    tab = await hub.client("bea")
    first, _ = await submit(c, MOMO, SLOW)
    await first_update(c, first)
    second, second_id = await submit(c, MOMO, "never mind this one")
    f = await recall(c, second_id)
    assert f["code"] == 0, f
    # The queued message's stream ends at once, with one failure.
    frames = await c.stream(second)
    assert [fr.get("message") for fr in frames] == ["pending", "failed"]
    assert frames[-1]["data"]["error"] == "CANCELLED"
    assert "recalled" in frames[-1]["data"]["reason"]
    # The first reply is unaffected.
    one = await c.stream(first, timeout=30)
    assert one[-1]["message"] == "completed" and reply_text(one) == echo(SLOW)
    await idle(hub)
    await settle(c, tab)
    # Still exactly one terminal frame for it, and nothing of it ever reached MomoHub.
    assert len(terminals(c, second)) == 1
    assert not [fr for fr in frames_of(c, second) if fr.get("message") == "update"]
    assert await up.messages("bea") == [("USER", SLOW), ("CHARACTER", echo(SLOW))]
    assert up.requests(STREAM_POST) == 1
    # The other tab learns of the recall; the tab that asked already knows.
    assert recalled(tab) == {second_id: 1}
    assert second_id not in recalled(c)
    # No reply is ever stored or pushed for it.
    storage = hub.app.storage
    assert storage is not None
    assert await storage.messages.replies_to(second_id) == []
    assert await storage.inflight.all() == []


async def test_recalling_a_queued_duplicate_keeps_the_earlier_equal_messages(hub: Bridge) -> None:
    """Regression: recalling a queued message whose text equalled an earlier one deleted the
    earlier one in MomoHub."""
    up = Upstream(hub)
    c = await hub.client("cid")
    await finished(c, "same")
    await finished(c, "same")
    slow, _ = await submit(c, MOMO, SLOW)
    await first_update(c, slow)
    third, third_id = await submit(c, MOMO, "same")
    assert (await recall(c, third_id))["code"] == 0
    frames = await c.stream(third)
    assert frames[-1]["data"]["error"] == "CANCELLED"
    assert (await c.stream(slow, timeout=30))[-1]["message"] == "completed"
    await idle(hub)
    assert await up.messages("cid") == [
        ("USER", "same"),
        ("CHARACTER", echo("same")),
        ("USER", "same"),
        ("CHARACTER", echo("same")),
        ("USER", SLOW),
        ("CHARACTER", echo(SLOW)),
    ]
    assert up.requests(MESSAGE_DELETE) == 0


# ----- 3. recall of the running turn, and of a finished one ---------------------------------


async def test_recalling_the_running_turn_closes_upstream_and_deletes_it_by_position(
    hub: Bridge,
) -> None:
    up = Upstream(hub)
    c = await hub.client("dan")
    tab = await hub.client("dan")
    await finished(c, "same")
    # The next reply stalls after MomoHub stored the user message: the turn is running.
    await up.fault(path=r"POST /v1/chats/[^/]+/messages", stall=STALL)
    running, running_id = await submit(c, MOMO, "same")
    await up.wait_stored("dan", 3)
    assert up.stats.open_streams == 1
    f = await recall(c, running_id)
    assert f["code"] == 0, f
    frames = await c.stream(running)
    assert frames[-1]["data"]["error"] == "CANCELLED"
    assert "recalled" in frames[-1]["data"]["reason"]
    await up.wait_closed()
    # Only the running turn's message went: found by its position after the last recorded
    # turn, not by its text (which equals the earlier message's).
    assert await up.messages("dan") == [("USER", "same"), ("CHARACTER", echo("same"))]
    assert up.requests(MESSAGE_DELETE) == 1
    await tab.wait_push(lambda p: p["type"] == "del_msg")
    await settle(c, tab)
    assert recalled(tab) == {running_id: 1}
    assert len(terminals(c, running)) == 1
    # The conversation goes on normally afterwards.
    await finished(c, "next")
    assert [m for m in await up.messages("dan") if m[0] == "USER"] == [
        ("USER", "same"),
        ("USER", "next"),
    ]


async def test_recalling_the_running_turn_spares_an_earlier_failed_turn(hub: Bridge) -> None:
    """A failed turn records no MomoHub ids, but its user message stays in the chat (and in the
    bridge): recalling a later running turn must not take it along."""
    up = Upstream(hub)
    c = await hub.client("eli")
    await finished(c, "hello")
    failed_rid, _ = await submit(c, MOMO, "please /fail")
    frames = await c.stream(failed_rid)
    assert frames[-1]["data"]["error"] == "UPSTREAM_ERROR"
    await up.fault(path=r"POST /v1/chats/[^/]+/messages", stall=STALL)
    running, running_id = await submit(c, MOMO, "and this")
    await up.wait_stored("eli", 4)
    assert (await recall(c, running_id))["code"] == 0
    assert (await c.stream(running))[-1]["data"]["error"] == "CANCELLED"
    await up.wait_closed()
    assert await up.messages("eli") == [
        ("USER", "hello"),
        ("CHARACTER", echo("hello")),
        ("USER", "please /fail"),
    ]


async def test_recalling_a_finished_turn_deletes_exactly_its_two_messages(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("fay")
    tab = await hub.client("fay")
    await finished(c, "alpha")
    b_id, b_reply = await finished(c, "beta")
    await finished(c, "gamma")
    f = await recall(c, b_id)
    assert f["code"] == 0, f
    assert await up.messages("fay") == [
        ("USER", "alpha"),
        ("CHARACTER", echo("alpha")),
        ("USER", "gamma"),
        ("CHARACTER", echo("gamma")),
    ]
    assert up.requests(MESSAGE_DELETE) == 2
    await tab.wait_for(lambda _: len(recalled(tab)) >= 2)
    await settle(c, tab)
    assert recalled(tab) == {b_id: 1, b_reply: 1}
    # The tab that asked hears of the reply it did not name, not of its own message.
    assert recalled(c) == {b_reply: 1}


# ----- 4. the same recall from two tabs at once ------------------------------------------------


@pytest.mark.parametrize("state", ["finished", "running"])
async def test_recall_from_two_tabs_at_once_is_applied_once(hub: Bridge, state: str) -> None:
    """Regression: a recall from two tabs at once was applied twice (del_msg pushes 8, 8, 9, 9)."""
    up = Upstream(hub)
    a = await hub.client("gus")
    b = await hub.client("gus")
    watcher = await hub.client("gus")
    await finished(a, "warm up")
    rid = None
    if state == "finished":
        mid, reply = await finished(a, "recall me")
        expected = {mid, reply}
    else:
        await up.fault(path=r"POST /v1/chats/[^/]+/messages", stall=STALL)
        rid, mid = await submit(a, MOMO, "recall me")
        await up.wait_stored("gus", 3)
        expected = {mid}
    deletes = up.requests(MESSAGE_DELETE)
    body = {"id": MOMO, "type": "message", "content": {"message_id": mid}}
    ra, rb = await asyncio.gather(
        a.send("onebot", "del_message", body), b.send("onebot", "del_message", body)
    )
    fa, fb = await asyncio.gather(a.reply(ra), b.reply(rb))
    assert sorted([fa["code"], fb["code"]]) == [0, 1], (fa, fb)
    loser = fa if fa["code"] else fb
    assert loser["data"]["error"] == "NOT_FOUND"
    winner, other = (b, a) if fa["code"] else (a, b)
    if rid is not None:
        frames = await a.stream(rid)
        assert frames[-1]["data"]["error"] == "CANCELLED"
    await up.wait_closed()
    await settle(a, b, watcher)
    for c in (a, b, watcher):
        counts = recalled(c)
        assert all(n == 1 for n in counts.values()), (c is winner, counts)
        assert set(counts) <= expected
    assert set(recalled(other)) == expected and set(recalled(watcher)) == expected
    assert set(recalled(winner)) == expected - {mid}
    # MomoHub was asked to delete each message once.
    assert up.requests(MESSAGE_DELETE) - deletes == len(expected)
    assert await up.messages("gus") == [("USER", "warm up"), ("CHARACTER", echo("warm up"))]
    if rid is not None:
        assert len(terminals(a, rid)) == 1


# ----- 5. conversations per user ---------------------------------------------------------------


async def test_conversations_per_user_caps_upstream_chats(bridge_factory: Any) -> None:
    """Regression: 60 completions with distinct conversation_ids created 61 upstream chats; a
    2000-char id got a MomoHub 400."""
    b = await bridge_factory(
        momohub={"enabled": True},
        limits={"conversations_per_user": 3, "streams_per_user": 16},
    )
    up = Upstream(b)
    c = await b.client("hal")
    model = f"character:{MOMO}"
    # All at once: distinct conversations run concurrently, so the cap must hold under a race.
    rids = [await complete(c, model, f"hi {i}", f"conv-{i}") for i in range(8)]
    results = [await c.stream(r, timeout=30) for r in rids]
    done = [r for r in results if r[-1].get("message") == "completed"]
    refused = [r[-1] for r in results if r[-1].get("code") == 1]
    assert len(done) == 3 and len(refused) == 5, [r[-1] for r in results]
    for f in refused:
        assert f["data"]["error"] == "BUSY", f
        assert "conversations_per_user" in f["data"]["reason"]
    assert len(up.store.chats) == 3
    assert up.requests(CHAT_POST) == 3
    storage = b.app.storage
    assert storage is not None
    assert await storage.conversations.count("hal") == 3
    # Past the limit a new conversation is refused; one of the allowed ones goes on.
    late = await c.stream(await complete(c, model, "one more", "conv-late"))
    assert late[-1]["data"]["error"] == "BUSY"
    allowed = next(i for i, r in enumerate(results) if r[-1].get("message") == "completed")
    again = await c.stream(await complete(c, model, "again", f"conv-{allowed}"))
    assert again[-1]["message"] == "completed", again[-1]
    assert len(up.store.chats) == 3
    # A 2000-character id is refused by the bridge itself: nothing reaches MomoHub.
    posts = up.requests(CHAT_POST), up.requests(STREAM_POST)
    rid = await complete(c, model, "long id", "x" * 2000)
    f = await c.reply(rid)
    assert f["code"] == 1 and f["data"]["error"] == "INVALID_DATA", f
    assert "conversation_id" in f["data"]["reason"]
    await settle(c)
    assert (up.requests(CHAT_POST), up.requests(STREAM_POST)) == posts
    assert len(up.store.chats) == 3
    # Another user has their own allowance.
    d = await b.client("ida")
    ok = await d.stream(await complete(d, model, "mine", "conv-0"), timeout=30)
    assert ok[-1]["message"] == "completed"
    assert len(up.store.chats) == 4


# ----- 6. characters by name -------------------------------------------------------------------


async def test_characters_are_found_by_name_in_any_case(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("jon")
    rid = await c.send("onebot", "message", text("by name"), id="momo")
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack
    frames = await c.stream(rid)
    assert reply_text(frames) == echo("by name")
    push = await c.wait_push(lambda p: p["type"] == "message")
    assert push["data"]["id"] == MOMO  # stored and pushed under the id
    frames = await c.stream(await complete(c, "character:Momo", "as a model"))
    assert frames[-1]["message"] == "completed", frames[-1]
    assert reply_text(frames) == echo("as a model")
    # Both went to the one conversation with Momo.
    assert [m for m in await up.messages("jon") if m[0] == "USER"] == [
        ("USER", "by name"),
        ("USER", "as a model"),
    ]
    assert len(up.store.chats) == 1


async def test_a_name_shared_by_two_characters_is_not_found_naming_both(hub: Bridge) -> None:
    up = Upstream(hub)
    # Someone else publishes a second "Momo" on MomoHub.
    async with aiohttp.ClientSession() as http:
        email = f"other-{uuid.uuid4().hex[:8]}@example.test"
        auth = {"email": email, "password": "correct horse", "name": "Other"}
        async with http.post(f"{up.base}/auth/sign-up/email", json=auth) as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{up.base}/auth/sign-in/email", json=auth) as r:
            token = (await r.json())["data"]["tokens"]["accessToken"]
        async with http.post(
            f"{up.base}/characters",
            json={"name": "Momo", "isPublic": True, "bio": "the other one"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            assert r.status == 201, await r.text()
            other = (await r.json())["data"]["id"]
    await hub.app.router.contact_target(MOMO).refresh()
    c = await hub.client("kim")
    f = await c.request("onebot", "message", text("which one?"), id="momo")
    assert f["code"] == 1 and f["data"]["error"] == "NOT_FOUND", f
    assert MOMO in f["data"]["reason"] and other in f["data"]["reason"]
    frames = await c.stream(await complete(c, "character:Momo", "which one?"))
    assert frames[-1]["data"]["error"] == "NOT_FOUND", frames[-1]
    assert MOMO in frames[-1]["data"]["reason"] and other in frames[-1]["data"]["reason"]
    assert up.requests(CHAT_POST) == 0 and up.requests(STREAM_POST) == 0
    # By id, each is still reachable.
    _, frames = await converse(c, MOMO, "the first")
    assert reply_text(frames) == echo("the first")
    _, frames = await converse(c, other, "the second")
    assert reply_text(frames) == echo("the second")


# ----- 7. a slow upstream holds nothing else up ------------------------------------------------


async def test_heartbeat_and_abort_answer_at_once_while_a_recall_waits(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("lia")
    mid, _ = await finished(c, "delete me slowly")
    await up.fault(path=r"DELETE /v1/chats/.*", stall=STALL, count=5)
    stream = await complete(c, f"character:{KURO}", SLOW)
    await first_update(c, stream)
    deleting = await c.send(
        "onebot", "del_message", {"id": MOMO, "type": "message", "content": {"message_id": mid}}
    )
    await eventually(lambda: up.requests(MESSAGE_DELETE) >= 1, what="the stalled DELETE")
    beat = await asyncio.wait_for(c.request("system", "heartbeat", {}), PROMPT)
    assert beat["code"] == 0
    aborted = await asyncio.wait_for(c.request("openai", "abort", {"request_id": stream}), PROMPT)
    assert aborted["code"] == 0, aborted
    frames = await c.stream(stream, timeout=PROMPT)
    assert frames[-1]["data"]["error"] == "CANCELLED"
    # Another conversation is not held up either.
    rid, _ = await asyncio.wait_for(submit(c, SENSEI, "still here?"), PROMPT)
    assert (await c.stream(rid, timeout=PROMPT * 2))[-1]["message"] == "completed"
    # The recall itself is still waiting on MomoHub.
    assert not [f for f in c.frames if f.get("request_id") == deleting]


async def test_heartbeat_answers_at_once_while_a_send_waits(hub: Bridge) -> None:
    up = Upstream(hub)
    c = await hub.client("max")
    # A new conversation: the chat creation stalls.
    await up.fault(path=r"POST /v1/chats", stall=STALL)
    waiting, waiting_id = await asyncio.wait_for(submit(c, MOMO, "first words"), PROMPT)
    await eventually(lambda: up.requests(CHAT_POST) >= 1, what="the stalled chat creation")
    beat = await asyncio.wait_for(c.request("system", "heartbeat", {}), PROMPT)
    assert beat["code"] == 0
    # A message queued behind it is acknowledged at once, and so is its recall.
    queued, queued_id = await asyncio.wait_for(submit(c, MOMO, "queued words"), PROMPT)
    f = await asyncio.wait_for(recall(c, queued_id), PROMPT)
    assert f["code"] == 0, f
    assert (await c.stream(queued, timeout=PROMPT))[-1]["data"]["error"] == "CANCELLED"
    # An existing conversation's reply streams while its send is stalled upstream.
    await up.fault(path=r"POST /v1/chats/[^/]+/messages", stall=STALL)
    kuro = await complete(c, f"character:{KURO}", "hello kuro")
    await eventually(lambda: up.stats.open_streams >= 1, what="the stalled stream")
    beat = await asyncio.wait_for(c.request("system", "heartbeat", {}), PROMPT)
    assert beat["code"] == 0
    f = await asyncio.wait_for(c.request("openai", "abort", {"request_id": kuro}), PROMPT)
    assert f["code"] == 0, f
    assert (await c.stream(kuro, timeout=PROMPT))[-1]["data"]["error"] == "CANCELLED"
    # The running turn stalled on chat creation can be recalled too.
    f = await asyncio.wait_for(recall(c, waiting_id), PROMPT * 2)
    assert f["code"] == 0, f
    assert (await c.stream(waiting, timeout=PROMPT))[-1]["data"]["error"] == "CANCELLED"


# ----- 8. nothing left behind -------------------------------------------------------------------


async def test_memory_is_back_to_baseline_after_a_burst(hub: Bridge) -> None:
    app = hub.app
    assert app.sessions is not None and app.hub is not None and app.outbox is not None
    engine, server, outbox, sessions = app.sessions.engine, app.hub, app.outbox, app.sessions
    target = app.router.contact_target(MOMO)
    assert len(engine) == 0 and server.active_streams == {} and sessions._watched == {}
    assert outbox.tracked_users == 0

    async def user(i: int) -> None:
        name = f"burst{i}"
        a = await hub.client(name)
        b = await hub.client(name)
        jobs = []
        # Plain messages from two tabs to two characters.
        for n in range(3):
            jobs.append(converse(a, MOMO, f"{name} says {n}"))
        jobs.append(converse(b, MOMO, f"{name} from b"))
        jobs.append(converse(b, KURO, f"{name} to kuro"))
        await asyncio.gather(*jobs)
        # Completions in their own conversations.
        rids = [await complete(a, f"character:{SENSEI}", "hi", f"c{i}-{n}") for n in range(2)]
        for r in rids:
            assert (await a.stream(r, timeout=30))[-1]["message"] == "completed"
        # A queued message recalled, and an aborted completion.
        slow, _ = await submit(a, MOMO, "short /slow")
        _, queued_id = await submit(a, MOMO, "queued")
        assert (await recall(b, queued_id))["code"] == 0
        assert (await a.stream(slow, timeout=30))[-1]["message"] == "completed"
        aborted = await complete(b, f"character:{KURO}", SLOW)
        await b.wait_for(lambda f: f.get("request_id") == aborted)
        assert (await b.request("openai", "abort", {"request_id": aborted}))["code"] == 0
        assert (await b.stream(aborted))[-1]["data"]["error"] == "CANCELLED"

    await asyncio.gather(*(user(i) for i in range(4)))
    await idle(hub)
    await eventually(lambda: server.active_streams == {}, what="stream slots released")
    assert sessions._watched == {}
    assert len(target._create_locks) == 0
    await hub.close_clients()
    async with asyncio.timeout(10):
        await server.wait_connections(0)
    await eventually(lambda: outbox.tracked_users == 0, what="the outbox to forget the users")
    assert all(server.clients_of(f"burst{i}") == [] for i in range(4))
    assert len(engine) == 0 and server.active_streams == {} and sessions._watched == {}


async def test_a_recalled_running_turn_is_cleaned_up_before_the_next_turn_starts(
    hub: Bridge,
) -> None:
    """The running turn's MomoHub messages are found from the chat's state; the queued turn
    must not reach MomoHub (and change that state) before they are gone."""
    up = Upstream(hub)
    c = await hub.client("gil")
    await finished(c, "first")
    await up.fault(path=r"POST /v1/chats/[^/]+/messages", stall=STALL)
    running, running_id = await submit(c, MOMO, "cut me")
    await up.wait_stored("gil", 3)
    queued, _ = await submit(c, MOMO, "then me")
    assert (await recall(c, running_id))["code"] == 0
    assert (await c.stream(running))[-1]["data"]["error"] == "CANCELLED"
    assert reply_text(await c.stream(queued)) == echo("then me")
    assert await up.messages("gil") == [
        ("USER", "first"),
        ("CHARACTER", echo("first")),
        ("USER", "then me"),
        ("CHARACTER", echo("then me")),
    ]
