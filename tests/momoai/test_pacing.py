"""The MOMO AI pacer with a hand-driven clock: slots per rolling minute, Retry-After pauses,
refusals past max_wait, and a cancelled waiter giving its slot back."""

from __future__ import annotations

import asyncio

import pytest

from adapters.momoai.pacing import Pacer, rate_for
from bridge.errors import BridgeError, ErrorCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tiers_and_override() -> None:
    assert rate_for("free", None) == 10
    assert rate_for("basic", None) == 60
    assert rate_for("pro", None) == 300
    assert rate_for("enterprise", None) == 0
    assert rate_for("free", 0) == 0
    assert rate_for("pro", 7) == 7


async def test_a_full_minute_refuses_past_max_wait_and_frees_as_it_rolls() -> None:
    clock = Clock()
    pacer = Pacer(3, max_wait=0.0, clock=clock)
    for _ in range(3):
        await pacer.acquire()
    with pytest.raises(BridgeError) as e:
        await pacer.acquire()
    assert e.value.code == ErrorCode.RATE_LIMITED
    assert "at most 3 a minute" in e.value.reason and "retry in 60 s" in e.value.reason
    clock.now += 59.5
    with pytest.raises(BridgeError) as e:
        await pacer.acquire()
    assert "retry in 1 s" in e.value.reason
    clock.now += 0.5
    await pacer.acquire()  # the first start is a minute old: its slot is free again
    assert pacer.next_start() == pytest.approx(1060.0)


async def test_unpaced_never_waits() -> None:
    pacer = Pacer(0, max_wait=0.0, clock=Clock())
    for _ in range(1000):
        await pacer.acquire()
    assert pacer.next_start() == 1000.0


async def test_retry_after_pauses_everyone() -> None:
    clock = Clock()
    pacer = Pacer(0, max_wait=5.0, clock=clock)
    pacer.pause(30)
    with pytest.raises(BridgeError) as e:
        await pacer.acquire()
    assert e.value.code == ErrorCode.RATE_LIMITED
    assert "asked for a pause" in e.value.reason and "retry in 30 s" in e.value.reason
    # A shorter pause never shortens a longer one.
    pacer.pause(1)
    assert pacer.next_start() == pytest.approx(1030.0)
    clock.now += 30
    await pacer.acquire()


async def test_waiters_book_slots_in_order_and_a_cancelled_one_gives_its_slot_back() -> None:
    clock = Clock()
    pacer = Pacer(1, max_wait=600.0, clock=clock)
    await pacer.acquire()
    # The second waits for the minute to roll (real sleep of 60 s: it is cancelled first).
    waiter = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0)  # the waiter runs up to its sleep, booking its slot on the way
    # The third is booked after the second.
    assert pacer.next_start() == pytest.approx(1120.0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pacer.next_start() == pytest.approx(1060.0)


async def test_a_pause_that_comes_while_waiting_holds_the_waiter_too() -> None:
    clock = Clock()
    pacer = Pacer(1, max_wait=1.0, clock=clock)
    await pacer.acquire()
    clock.now += 59.95  # the next slot is 0.05 s away (slept for real)
    waiter = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0)  # the waiter books its slot and sleeps
    assert pacer.next_start() == pytest.approx(1120.0)
    pacer.pause(30)
    with pytest.raises(BridgeError) as e:
        async with asyncio.timeout(5):
            await waiter
    assert e.value.code == ErrorCode.RATE_LIMITED and "asked for a pause" in e.value.reason
    # Its booking went with it: after the pause the slot is free.
    clock.now += 30
    await pacer.acquire()


async def test_a_pause_moves_booked_slots_in_their_order() -> None:
    clock = Clock()
    pacer = Pacer(1, max_wait=200.0, clock=clock)
    await pacer.acquire()  # A at 1000
    clock.now = 1059.9
    b = asyncio.create_task(pacer.acquire())  # booked at 1060 (0.1 s of real sleep)
    await asyncio.sleep(0)
    c = asyncio.create_task(pacer.acquire())  # booked at 1120
    await asyncio.sleep(0)
    pacer.pause(0.2)  # until 1060.1: B moves to 1060.1, C after it at 1120.1
    clock.now = 1060.2
    async with asyncio.timeout(5):
        await b
    assert not c.done()
    assert pacer.next_start() == pytest.approx(1180.1)  # C's slot plus a minute
    c.cancel()
    with pytest.raises(asyncio.CancelledError):
        await c
    assert pacer.next_start() == pytest.approx(1120.1)  # B's slot plus a minute


async def test_unpaced_requests_wait_out_a_pause() -> None:
    clock = Clock()
    pacer = Pacer(0, max_wait=10.0, clock=clock)
    pacer.pause(0.05)
    waiter = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.now += 0.05
    async with asyncio.timeout(5):
        await waiter
