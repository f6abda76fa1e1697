"""Pushes to users: fan out to every live connection, or keep them until the next login.

A push is neutral (a message or a recall to one user); each edge renders it in its own format.
Per-user locking makes the order explicit: a login first drains the stored pushes and only then
joins the live set, and a push that races with it waits, so nothing is reordered or sent twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import structlog

from storage.outbox import OutboxRepo

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Push:
    kind: Literal["message", "recall"]
    contact: str
    message_id: int
    segments: list[dict[str, Any]] = field(default_factory=list)
    time: int = 0
    sender_id: str = ""
    sender_name: str = ""
    stream_request_id: str | int | float | None = None
    push_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Push:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Sink(Protocol):
    """One live connection of a user."""

    async def deliver(self, push: Push) -> bool:
        """Send the push; False when the connection is gone (the push must not be lost)."""
        ...


class Outbox:
    def __init__(self, repo: OutboxRepo, limit_per_user: int) -> None:
        self._repo = repo
        self._limit = limit_per_user
        self._sinks: dict[str, set[Sink]] = defaultdict(set)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Seeded from the clock so push ids stay unique across restarts (stored pushes keep theirs).
        self._ids = itertools.count(int(time.time() * 1000))

    def next_push_id(self) -> str:
        return f"s-{next(self._ids)}"

    def online(self, user_id: str) -> bool:
        return bool(self._sinks.get(user_id))

    def connections(self, user_id: str) -> int:
        return len(self._sinks.get(user_id, ()))

    async def attach(self, user_id: str, sink: Sink) -> int:
        """Deliver stored pushes in order, then join the live set. Returns how many were sent."""
        async with self._locks[user_id]:
            sent = 0
            pending = await self._repo.pending(user_id)
            last_seq = 0
            for seq, data in pending:
                if not await sink.deliver(Push.from_json(data)):
                    break
                last_seq = seq
                sent += 1
            if last_seq:
                await self._repo.ack(user_id, last_seq)
            if sent == len(pending):
                self._sinks[user_id].add(sink)
            return sent

    def detach(self, user_id: str, sink: Sink) -> None:
        sinks = self._sinks.get(user_id)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                # The user's lock stays: a push may already be waiting on it, and a second lock
                # for the same user would let that push slip past the next login's drain.
                del self._sinks[user_id]

    async def push(self, user_id: str, push: Push, *, exclude: Sink | None = None) -> int:
        """Deliver to every live connection (but ``exclude``); store it if none took it.

        Returns the number of connections that received it (0 means it went to the outbox).
        """
        if not push.push_id:
            push.push_id = self.next_push_id()
        async with self._locks[user_id]:
            targets = [s for s in self._sinks.get(user_id, ()) if s is not exclude]
            delivered = 0
            if targets:
                results = await asyncio.gather(*(s.deliver(push) for s in targets))
                delivered = sum(1 for r in results if r)
            if delivered == 0 and not (exclude is not None and self.online(user_id)):
                dropped = await self._repo.push(user_id, push.to_json(), self._limit)
                if dropped:
                    log.warning("outbox.dropped_oldest", user=user_id, dropped=dropped)
            return delivered
