"""The conversation engine with plain coroutines as jobs: no sockets, no storage.

Nothing here sleeps for a fixed time: jobs park on events the test controls, and every wait is
bounded by a generous timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bridge.engine import Engine, Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey
from tests.support.hub_client import eventually

WAIT = 5.0
A = ConversationKey("ann", "momo")
B = ConversationKey("bob", "momo")


class Jobs:
    """Jobs that record what happened to them and park until released."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()

    def job(self, name: str, *, park: bool = True) -> Callable[[Turn], Awaitable[None]]:
        gate = self.gates.setdefault(name, asyncio.Event())
        started = self.started.setdefault(name, asyncio.Event())
        if not park:
            gate.set()

        async def run(turn: Turn) -> None:
            self.log.append(f"start {name}")
            started.set()
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.add(name)
                self.log.append(f"cancelled {name}")
                raise
            self.log.append(f"end {name}")

        return run

    def release(self, name: str) -> None:
        self.gates[name].set()

    async def wait_started(self, name: str) -> None:
        async with asyncio.timeout(WAIT):
            await self.started[name].wait()


@pytest.fixture
async def engine() -> Engine:
    e = Engine(max_queued=4, cancel_timeout=WAIT)
    yield e
    await e.close()


async def idle(engine: Engine) -> None:
    """Until the engine holds no owner (an owner goes in the step its last turn ends)."""
    await eventually(lambda: len(engine) == 0, WAIT, what="the engine to drop its owners")


async def test_turns_of_one_key_run_one_at_a_time_in_arrival_order(engine: Engine) -> None:
    jobs = Jobs()
    turns = [engine.submit(A, jobs.job(f"t{i}"), message_id=i + 1) for i in range(4)]
    for i in range(4):
        await jobs.wait_started(f"t{i}")
        # Only the running one has started; the rest are still queued behind it.
        assert [t.state for t in turns] == ["done"] * i + ["running"] + ["queued"] * (3 - i)
        jobs.release(f"t{i}")
        await turns[i].wait(WAIT)
    assert jobs.log == [f"{w} t{i}" for i in range(4) for w in ("start", "end")]
    await idle(engine)


async def test_different_keys_run_concurrently(engine: Engine) -> None:
    jobs = Jobs()
    ta = engine.submit(A, jobs.job("a"), message_id=1)
    tb = engine.submit(B, jobs.job("b"), message_id=2)
    # Both start although neither has finished.
    await jobs.wait_started("a")
    await jobs.wait_started("b")
    assert ta.state == tb.state == "running"
    assert len(engine) == 2
    assert engine.live_keys("ann") == 1 and engine.live_keys("bob") == 1
    jobs.release("b")
    jobs.release("a")
    await ta.wait(WAIT)
    await tb.wait(WAIT)
    await idle(engine)


async def test_recall_of_a_queued_turn_drops_it_and_its_job_never_runs(engine: Engine) -> None:
    jobs = Jobs()
    first = engine.submit(A, jobs.job("first"), message_id=1)
    second = engine.submit(A, jobs.job("second"), message_id=2)
    third = engine.submit(A, jobs.job("third", park=False), message_id=3)
    await jobs.wait_started("first")
    assert await engine.recall(A, 2, "recalled by test") == "dropped"
    assert second.state == "dropped" and second.stop_reason == "recalled by test"
    assert second.finished.is_set()  # a waiter on it is released at once
    jobs.release("first")
    await first.wait(WAIT)
    await third.wait(WAIT)
    assert jobs.log == ["start first", "end first", "start third", "end third"]
    assert not jobs.started["second"].is_set()
    await idle(engine)


async def test_recall_of_the_running_turn_cancels_it_and_waits(engine: Engine) -> None:
    jobs = Jobs()
    first = engine.submit(A, jobs.job("first"), message_id=1)
    after = engine.submit(A, jobs.job("after", park=False), message_id=2)
    await jobs.wait_started("first")
    outcome = await engine.recall(A, 1, "recalled by test")
    assert outcome == "cancelled"
    # recall() returned only once the job had unwound.
    assert "cancelled first" in jobs.log
    assert first.task is not None and first.task.done() and first.task.cancelled()
    assert first.stop_reason == "recalled by test"
    await after.wait(WAIT)
    assert jobs.log == ["start first", "cancelled first", "start after", "end after"]
    await idle(engine)


async def test_recall_of_unknown_or_finished_turns_is_finished(engine: Engine) -> None:
    jobs = Jobs()
    assert await engine.recall(A, 99) == "finished"  # no owner at all
    t = engine.submit(A, jobs.job("t"), message_id=1)
    await jobs.wait_started("t")
    assert await engine.recall(A, 2) == "finished"  # an owner, but not this message
    assert await engine.recall(B, 1) == "finished"  # this message id, another conversation
    jobs.release("t")
    await t.wait(WAIT)
    assert await engine.recall(A, 1) == "finished"  # it ran to the end
    assert engine.stop_nowait(t, "late") == "finished"
    await idle(engine)


async def test_owner_is_dropped_from_memory_when_idle(engine: Engine) -> None:
    jobs = Jobs()
    assert len(engine) == 0
    turns = [
        engine.submit(ConversationKey(f"u{i}", "momo", f"th{j}"), jobs.job(f"{i}.{j}", park=False))
        for i in range(5)
        for j in range(3)
    ]
    assert len(engine) == 15
    for t in turns:
        await t.wait(WAIT)
    await idle(engine)
    assert engine.live_keys("u0") == 0
    # A key used again later gets a fresh owner, and it goes again.
    again = engine.submit(A, jobs.job("again", park=False))
    assert len(engine) == 1
    await again.wait(WAIT)
    # Gone in the same step that ended its last turn: no window for a stale owner.
    assert len(engine) == 0


async def test_a_failing_job_is_recorded_and_the_next_turn_still_runs(engine: Engine) -> None:
    jobs = Jobs()

    async def boom(turn: Turn) -> None:
        raise BridgeError(ErrorCode.UPSTREAM_ERROR, "boom")

    bad = engine.submit(A, boom, message_id=1)
    good = engine.submit(A, jobs.job("good", park=False), message_id=2)
    await bad.wait(WAIT)
    await good.wait(WAIT)
    assert isinstance(bad.error, BridgeError) and bad.error.reason == "boom"
    assert good.error is None and jobs.log == ["start good", "end good"]
    await idle(engine)


async def test_max_queued_answers_busy(engine: Engine) -> None:
    jobs = Jobs()
    running = engine.submit(A, jobs.job("running"), message_id=1)
    await jobs.wait_started("running")
    queued = [engine.submit(A, jobs.job(f"q{i}"), message_id=10 + i) for i in range(4)]
    with pytest.raises(BridgeError) as e:
        engine.submit(A, jobs.job("one too many"), message_id=99)
    assert e.value.code == ErrorCode.BUSY
    # The limit is per conversation: another key is unaffected.
    other = engine.submit(B, jobs.job("other", park=False))
    await other.wait(WAIT)
    # Room again once a queued turn is recalled.
    assert await engine.recall(A, 10) == "dropped"
    extra = engine.submit(A, jobs.job("extra", park=False), message_id=20)
    for name in ("running", "q1", "q2", "q3"):
        jobs.release(name)
    for t in [running, *queued[1:], extra]:
        await t.wait(WAIT)
    assert not jobs.started["q0"].is_set()
    await idle(engine)


async def test_stop_nowait_cancels_without_waiting(engine: Engine) -> None:
    jobs = Jobs()
    unwound = asyncio.Event()
    release_unwind = asyncio.Event()

    started = jobs.started["s"] = asyncio.Event()

    async def stubborn(turn: Turn) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            # Slow to unwind: stop_nowait must not wait for this.
            unwound.set()
            await release_unwind.wait()

    t = engine.submit(A, stubborn, message_id=1)
    queued = engine.submit(A, jobs.job("queued"), message_id=2)
    await jobs.wait_started("s")
    assert engine.stop_nowait(t, "aborted") == "cancelled"
    assert t.stop_reason == "aborted"
    assert t.task is not None and not t.task.done()
    async with asyncio.timeout(WAIT):
        await unwound.wait()
    assert t.state == "running"  # still unwinding
    assert engine.stop_nowait(queued, "aborted too") == "dropped"
    release_unwind.set()
    await t.wait(WAIT)
    assert t.state == "done" and t.task.cancelled()
    await idle(engine)


async def test_close_cancels_everything_and_refuses_new_turns() -> None:
    engine = Engine(cancel_timeout=WAIT)
    jobs = Jobs()
    running = [
        engine.submit(ConversationKey(f"u{i}", "momo"), jobs.job(f"r{i}"), message_id=i + 1)
        for i in range(3)
    ]
    queued = engine.submit(ConversationKey("u0", "momo"), jobs.job("q"), message_id=100)
    for i in range(3):
        await jobs.wait_started(f"r{i}")
    async with asyncio.timeout(WAIT):
        await engine.close()
    assert jobs.cancelled == {"r0", "r1", "r2"}
    assert all(t.finished.is_set() and t.state == "done" for t in running)
    assert queued.state == "dropped" and queued.finished.is_set()
    assert not jobs.started["q"].is_set()
    assert len(engine) == 0
    with pytest.raises(BridgeError) as e:
        engine.submit(A, jobs.job("late"))
    assert e.value.code == ErrorCode.UNAVAILABLE


async def test_recall_right_as_a_turn_is_handed_the_conversation(engine: Engine) -> None:
    """The owner marks the next turn running and spawns its task in one step; a recall landing
    before that task's first step must still leave the turn consistent: either its job ran and
    saw the cancellation (so it could end its stream), or it never ran and the turn counts as
    dropped (so the caller ends the stream)."""
    jobs = Jobs()
    first = engine.submit(A, jobs.job("first"), message_id=1)
    second = engine.submit(A, jobs.job("second"), message_id=2)
    await jobs.wait_started("first")
    jobs.release("first")
    # Wakes in the same step that hands the conversation to `second`, before its task runs.
    await first.wait(WAIT)
    assert second.state == "running"
    outcome = await engine.recall(A, 2, "recalled")
    await second.wait(WAIT)
    started = jobs.started["second"].is_set()
    assert (outcome, started) in {("dropped", False), ("cancelled", True)}, (outcome, started)
    if outcome == "cancelled":
        assert "second" in jobs.cancelled
    else:
        assert second.state == "dropped"
    await idle(engine)


async def test_wait_times_out_without_stopping_the_turn(engine: Engine) -> None:
    jobs = Jobs()
    t = engine.submit(A, jobs.job("slow"), message_id=1)
    await jobs.wait_started("slow")
    with pytest.raises(TimeoutError):
        await t.wait(0.05)
    assert t.state == "running"
    jobs.release("slow")
    await t.wait(WAIT)
    await idle(engine)


async def test_submit_next_runs_right_after_the_running_turn_ahead_of_the_queue(
    engine: Engine,
) -> None:
    jobs = Jobs()
    first = engine.submit(A, jobs.job("first"), message_id=1)
    engine.submit(A, jobs.job("queued", park=False), message_id=2)
    await jobs.wait_started("first")
    cleanup = engine.submit_next(A, jobs.job("cleanup", park=False))
    assert await engine.recall(A, 1) == "cancelled"
    await cleanup.wait(WAIT)
    await idle(engine)
    assert jobs.log == [
        "start first",
        "cancelled first",
        "start cleanup",
        "end cleanup",
        "start queued",
        "end queued",
    ]
    assert first.state == "done"
    # With nothing running it is an ordinary submit: it runs at once.
    alone = engine.submit_next(B, jobs.job("alone", park=False))
    await alone.wait(WAIT)
    assert alone.state == "done"
