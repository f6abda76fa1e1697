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
