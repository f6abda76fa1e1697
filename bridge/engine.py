"""The conversation engine: one owner per conversation key runs that conversation's turns.

Every edge hands its turns here, keyed by an edge-neutral `ConversationKey`. The owner runs them
one at a time in arrival order and knows each queued and running turn by its message id, so a
recall can act on exactly that turn: a queued one is dropped before it reaches the upstream, the
running one is cancelled. An owner with nothing left to run is dropped from memory.

In a cluster a gate (`TurnGate`, see `bridge.cluster.turns`) extends the order across nodes:
each turn takes its place in the conversation's cluster-wide order as it is submitted and
starts only when every earlier turn, on any node, is finished.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

TurnState = Literal["queued", "running", "done", "dropped"]
Job = Callable[["Turn"], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Turn:
    """One message's trip to the target and back."""

    key: ConversationKey
    job: Job
    # 0 until the message is stored; a turn may be queued (and even start) before that.
    message_id: int = 0
    state: TurnState = "queued"
    # Why the turn was stopped early (set before it is cancelled), for the reply's failure.
    stop_reason: str = ""
    task: asyncio.Task[None] | None = None
    # Whether the job has been called: a task cancelled before its first step never runs it.
    started: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    # The cluster's place of this turn (the gate's), and why the turn could not have it.
    ticket: Any = None
    refusal: BridgeError | None = None
    # Runs in the place of the turn before it (the cleanup of a turn being stopped).
    inherits: bool = False

    def admit(self) -> None:
        """Raises the BridgeError that kept this turn from its place in the cluster's order (a
        job calls it where its own failures are reported, so the user is told)."""
        if self.refusal is not None:
            raise self.refusal

    async def wait(self, timeout: float) -> None:
        """Until the turn has run (or was dropped); TimeoutError past ``timeout``."""
        async with asyncio.timeout(timeout):
            await self.finished.wait()


@dataclass(eq=False, slots=True)
class _Owner:
    key: ConversationKey
    queue: deque[Turn] = field(default_factory=deque)
    running: Turn | None = None


RecallOutcome = Literal["dropped", "cancelled", "finished"]


class TurnGate(Protocol):
    """The order of a conversation's turns beyond this process (a cluster)."""

    def take(self, key: ConversationKey) -> Any:
        """The turn's place, taken now (in submit order), without waiting."""
        ...

    async def enter(self, turn: Turn) -> None:
        """Until the turn's place comes; BridgeError when it cannot."""
        ...

    def leave(self, turn: Turn) -> None:
        """The turn is over (ran, dropped or refused): the next place may come."""
        ...


class Engine:
    def __init__(self, *, max_queued: int = 32, cancel_timeout: float = 10.0) -> None:
        self._owners: dict[ConversationKey, _Owner] = {}
        self._tasks = TaskSet("engine")
        self._max_queued = max_queued
        self._cancel_timeout = cancel_timeout
        self._closing = False
        self.gate: TurnGate | None = None

    def __len__(self) -> int:
        """Owners in memory (conversations with a queued or running turn)."""
        return len(self._owners)

    def live_keys(self, user_id: str) -> int:
        return sum(1 for k in self._owners if k.user_id == user_id)

    def submit(self, key: ConversationKey, job: Job, *, message_id: int = 0) -> Turn:
        """Queue a turn behind the conversation's others; it starts when they are done."""
        if self._closing:
            raise BridgeError(ErrorCode.UNAVAILABLE, "the bridge is shutting down")
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(key)
        elif len(owner.queue) >= self._max_queued:
            raise BridgeError(
                ErrorCode.BUSY,
                f"{self._max_queued} messages are already waiting in this conversation",
            )
        turn = Turn(key, job, message_id=message_id)
        if self.gate is not None:
            turn.ticket = self.gate.take(key)
        if owner.running is None:
            # An idle conversation: the turn starts now, not a scheduling step later.
            self._start(owner, turn)
        else:
            owner.queue.append(turn)
        return turn

    def submit_next(self, key: ConversationKey, job: Job) -> Turn:
        """Queue a turn to run right after the running one, ahead of those waiting (the upstream
        cleanup of a turn being stopped, which the next turn must not overtake)."""
        owner = self._owners.get(key)
        if owner is None or owner.running is None:
            return self.submit(key, job)
        turn = Turn(key, job, inherits=True)
        owner.queue.appendleft(turn)
        return turn

    def _start(self, owner: _Owner, turn: Turn) -> None:
        owner.running = turn
        turn.state = "running"
        task = turn.task = self._tasks.spawn(self._call(turn), name=f"turn-{turn.message_id}")
        # The next turn starts from the running one's done callback: an owner task of its own
        # per conversation would cost a task and a wait on every turn (a stream start).
        task.add_done_callback(lambda t: self._ended(owner, turn, t))

    def _ended(self, owner: _Owner, turn: Turn, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            turn.error = task.exception()
        if turn.state == "running":
            turn.state = "done"
        turn.finished.set()
        owner.running = None
        if owner.queue and not self._closing:
            after = owner.queue.popleft()
            if after.inherits:  # it runs in this turn's place, which it gives up when done
                after.ticket, turn.ticket = turn.ticket, None
            self._leave(turn)
            self._start(owner, after)
            return
        self._leave(turn)
        # Nothing left to run: the owner goes from memory (queued turns only on shutdown).
        if self._owners.get(owner.key) is owner:
            del self._owners[owner.key]
        while owner.queue:
            left = owner.queue.popleft()
            left.state = "dropped"
            left.finished.set()
            self._leave(left)

    def _leave(self, turn: Turn) -> None:
        if self.gate is not None:
            self.gate.leave(turn)  # also a turn whose place went on to the one after it

    def find(self, key: ConversationKey, message_id: int) -> Turn | None:
        owner = self._owners.get(key)
        if owner is None:
            return None
        if owner.running is not None and owner.running.message_id == message_id:
            return owner.running
        return next((t for t in owner.queue if t.message_id == message_id), None)

    async def recall(
        self, key: ConversationKey, message_id: int, reason: str = "the message was recalled"
    ) -> RecallOutcome:
        """Stop the turn of ``message_id`` if it has not finished.

        ``dropped``: it was still queued and never reached the target. ``cancelled``: it was
        running and has now unwound (its upstream request is closed). ``finished``: the engine
        no longer knows it; whatever it produced is recorded with the message.
        """
        turn = self.find(key, message_id)
        if turn is None:
            return "finished"
        return await self.stop(turn, reason)

    async def stop(self, turn: Turn, reason: str) -> RecallOutcome:
        """Drop ``turn`` if queued, cancel it (and wait for it to unwind) if running."""
        task = turn.task
        outcome = self.stop_nowait(turn, reason)
        if outcome == "cancelled" and task is not None and not task.done():
            done, _ = await asyncio.wait([task], timeout=self._cancel_timeout)
            if not done:
                log.warning("engine.cancel_slow", conversation=str(turn.key), turn=turn.message_id)
        return outcome

    def stop_nowait(self, turn: Turn, reason: str) -> RecallOutcome:
        """Like stop(), without waiting for a running turn to unwind."""
        owner = self._owners.get(turn.key)
        if turn.state == "queued" and owner is not None and turn in owner.queue:
            owner.queue.remove(turn)
            turn.state = "dropped"
            turn.stop_reason = reason
            turn.finished.set()
            self._leave(turn)
            return "dropped"
        if turn.state != "running":
            return "finished"
        turn.stop_reason = reason
        if turn.task is not None:
            turn.task.cancel()
        if not turn.started:
            # Handed the conversation, but its task has not taken a step: the job will never
            # run (nor its cleanup, which would end the reply), so it counts as dropped.
            turn.state = "dropped"
            turn.finished.set()
            return "dropped"
        return "cancelled"

    async def _call(self, turn: Turn) -> None:
        if self.gate is not None and turn.ticket is not None:
            try:
                await self.gate.enter(turn)
            except BridgeError as e:
                turn.refusal = e  # the job reports it (Turn.admit) rather than run out of order
        turn.started = True
        await turn.job(turn)

    async def close(self) -> None:
        self._closing = True
        await self._tasks.cancel_all()
