"""Replies to QQ across drops, replacements and restarts: every part of a reply reaches QQ, in
order, and nothing that QQ took is sent again (tests/support/qq_impl.py plays NapCat)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Bridge
from tests.e2e.test_qq import ALICE, BOT, impl, qq_settings
from tests.support.hub_client import eventually

OWNER = f"qq:{BOT}:u{ALICE}"
SLOW = (
    "First part is here. Alpha beta gamma /slow. Delta epsilon zeta /slow. "
    "Eta theta iota kappa /slow. Lambda mu nu xi /slow. The end is near!"
)


async def make(bridge_factory, **qq: Any) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, onebot=qq_settings(typing=False, **qq))


async def waiting(hub: Bridge, n: int = 1) -> None:
    """Until the outbox holds ``n`` pushes for the chat (a reply finished while QQ was away)."""
    outbox = hub.app.outbox
    assert outbox is not None

    async def held() -> bool:
        return await outbox.pending_count(OWNER) >= n

    await eventually(held, 30, "the finished reply waiting in the outbox")


async def test_a_drop_mid_stream_gets_the_rest_once_without_gaps(bridge_factory) -> None:
    hub = await make(bridge_factory)
    sim = await impl(hub)
    try:
        await sim.private(ALICE, SLOW)
        await sim.wait_sent(1)
        await sim.drop()
        await waiting(hub)  # the reply streamed on and finished while the account was away
        await sim.reconnect()
        await sim.wait_for(lambda: "The end is near!" in " ".join(sim.texts()), 15, "the rest")
        assert " ".join(sim.texts()) == "Momo: you said " + SLOW
        await eventually(lambda: _nothing_waiting(hub), 10, "the reply confirmed")
    finally:
        await sim.close()


async def _nothing_waiting(hub: Bridge) -> bool:
    assert hub.app.outbox is not None
    return await hub.app.outbox.pending_count(OWNER) == 0


async def test_a_send_cut_off_by_a_drop_is_sent_again(bridge_factory) -> None:
    hub = await make(bridge_factory, reply_mode="whole")
    sim = await impl(hub, answer_delay=1.0)
    try:
        await sim.private(ALICE, "hello whole world")
        await sim.wait_call("send_private_msg")  # in flight: the bridge never hears back
        await sim.drop()
        sim.answer_delay = 0
        await sim.reconnect()
        # At least once: QQ may have taken the first one, but the bridge cannot know.
        await sim.wait_sent(2)
        assert set(sim.texts()) == {"Momo: you said hello whole world"}
        await eventually(lambda: _nothing_waiting(hub), 10, "the reply confirmed")
    finally:
        await sim.close()


async def test_a_reconnect_while_pieces_are_paced_sends_nothing_twice(bridge_factory) -> None:
    hub = await make(bridge_factory, segment_interval=0.5)
    sim = await impl(hub)
    try:
        text = "First sentence is here. Second sentence is here. Third sentence is here."
        await sim.private(ALICE, text)
        await sim.wait_sent(1)  # the next piece waits for segment_interval
        await sim.drop()
        await sim.reconnect()
        await sim.wait_for(lambda: "Third" in " ".join(sim.texts()), 15, "every piece")
        await eventually(lambda: _nothing_waiting(hub), 10, "the reply confirmed")
        assert " ".join(sim.texts()) == "Momo: you said " + text
    finally:
        await sim.close()


async def test_a_replacing_connection_gets_what_the_old_one_had_queued(bridge_factory) -> None:
    hub = await make(bridge_factory, reply_mode="whole")
    one = await impl(hub, answer_delay=1.0)
    await one.private(ALICE, "hello there")
    await one.wait_call("send_private_msg")
    await one.private(ALICE, "/persona")  # its answer waits behind the reply being sent
    two = await impl(hub, first_id=9000)
    try:
        await one.wait_closed()
        await two.private(ALICE, "again")
        await two.wait_for(
            lambda: (
                any("persona" in t.lower() for t in two.texts())
                and "Momo: you said again" in two.texts()
            ),
            15,
            "the queued answer and the next reply",
        )
        await eventually(lambda: _nothing_waiting(hub), 10, "everything confirmed")
    finally:
        await two.close()
        await one.close()


async def test_a_restart_after_part_of_a_reply_went_out_sends_only_the_rest(
    bridge_factory,
) -> None:
    hub = await make(bridge_factory)
    sim = await impl(hub)
    await sim.private(ALICE, SLOW)
    await sim.wait_sent(1)
    first = sim.texts()[0]

    async def recorded() -> bool:
        # The bridge has QQ's answer to the first piece (its id) and noted how far it got: a
        # drop before that (a busy machine) rightly sends the piece again.
        assert hub.app.storage is not None
        row = await hub.app.storage.db.fetchone("SELECT COUNT(*) FROM qq_progress")
        return bool(row and row[0])

    await eventually(recorded, 15, "the first piece recorded")
    await sim.drop()
    await waiting(hub)
    await hub.restart()
    again = await impl(hub, first_id=7000)
    try:
        await again.wait_for(lambda: "The end is near!" in " ".join(again.texts()), 15, "rest")
        assert first not in again.texts()
        assert " ".join([first, *again.texts()]) == "Momo: you said " + SLOW
    finally:
        await again.close()


async def test_streamed_pieces_keep_to_max_message_chars(bridge_factory) -> None:
    hub = await make(bridge_factory, max_message_chars=100)
    sim = await impl(hub)
    try:
        long = " ".join(["word"] * 80) + ". And more follows here after it. Final bit."
        await sim.private(ALICE, long)
        await sim.wait_for(lambda: "Final bit." in " ".join(sim.texts()), 10, "all of it")
        assert all(len(t) <= 100 for t in sim.texts()), [len(t) for t in sim.texts()]
        assert " ".join(sim.texts()) == "Momo: you said " + long
    finally:
        await sim.close()


async def test_a_forward_sent_after_a_restart_carries_the_characters_name(bridge_factory) -> None:
    hub = await make(bridge_factory, reply_mode="whole", forward_threshold=100)
    sim = await impl(hub)
    sim.stall("send_private_forward_msg", times=None)
    await sim.private(ALICE, "x " * 80)
    await sim.wait_call("send_private_forward_msg")
    await sim.drop()
    await hub.restart()
    again = await impl(hub, first_id=7000)
    try:
        await again.wait_for(lambda: bool(again.forwards), 15, "the forward")
        assert again.forwards[0].nodes[0]["name"] == "Momo"
    finally:
        await again.close()


def refusing(sim: Any, word: str) -> None:
    """QQ refuses (retcode 1200, like its content filter) any private message containing
    ``word``; the rest go through as usual."""
    from tests.support.qq_impl import ActionFailed

    original = sim._act_send_private_msg

    def picky(params: dict, call: Any) -> Any:
        text = " ".join(str(s.get("data", {}).get("text", "")) for s in params.get("message", []))
        if word in text:
            raise ActionFailed(1200, "content refused")
        return original(params, call)

    sim._act_send_private_msg = picky


async def test_a_refused_piece_is_skipped_and_the_rest_still_goes(bridge_factory) -> None:
    hub = await make(bridge_factory)
    sim = await impl(hub)
    refusing(sim, "forbidden")
    try:
        text = "First sentence is fine. The forbidden sentence is here. Later one. The end is near!"
        await sim.private(ALICE, text)
        await sim.wait_for(lambda: "The end is near!" in " ".join(sim.texts()), 10, "the rest")
        assert not any("forbidden" in t for t in sim.texts())
        assert len(sim.texts()) == len(set(sim.texts()))
        await eventually(lambda: _nothing_waiting(hub), 10, "the reply confirmed")
    finally:
        await sim.close()


async def test_a_refused_long_piece_is_not_sent_again_and_again(bridge_factory) -> None:
    hub = await make(bridge_factory)
    sim = await impl(hub)
    refusing(sim, "forbidden")
    try:
        long = " ".join(f"w{i:03d}" for i in range(110)) + " forbidden tail"
        tail = " ".join(f"x{i}" for i in range(40))
        text = f"First sentence is fine. {long}. Later sentence one. More {tail}. The end is near!"
        await sim.private(ALICE, text)
        await sim.wait_for(lambda: "The end is near!" in " ".join(sim.texts()), 10, "the rest")
        texts = sim.texts()
        assert len(texts) == len(set(texts)), [t[:20] for t in texts]
    finally:
        await sim.close()


async def test_a_chat_that_refuses_everything_is_not_stormed(bridge_factory) -> None:
    hub = await make(bridge_factory)
    sim = await impl(hub)
    sim.refuse("send_private_msg", times=None)
    try:
        words = " ".join(f"word{i}." for i in range(60))
        await sim.private(ALICE, "First sentence is here. " + words + " The end.")
        await eventually(lambda: _stored_and_confirmed(hub), 15, "the reply given up and confirmed")
        # A few refused sends, then the reply is given up (it stays in /history).
        assert len(sim.calls_of("send_private_msg")) <= 6
    finally:
        await sim.close()


async def _stored_and_confirmed(hub: Bridge) -> bool:
    storage = hub.app.storage
    assert storage is not None and hub.app.outbox is not None
    rows = await storage.messages.recent(
        OWNER, "6d6f6d6f-0000-4000-8000-000000000001", "default", 5
    )
    replied = any(r.direction == "out" for r in rows)
    return replied and await hub.app.outbox.pending_count(OWNER) == 0


async def test_a_replacing_connection_does_not_repeat_the_send_in_flight(bridge_factory) -> None:
    hub = await make(bridge_factory)
    one = await impl(hub, answer_delay=1.0)
    try:
        await one.private(ALICE, SLOW)
        await one.wait_call("send_private_msg")
        two = await impl(hub, first_id=9000)  # NapCat back before the old socket is seen dead
        try:
            await two.wait_for(lambda: "The end is near!" in " ".join(two.texts()), 15, "rest")
            assert " ".join(one.texts() + two.texts()) == "Momo: you said " + SLOW
        finally:
            await two.close()
    finally:
        await one.close()
