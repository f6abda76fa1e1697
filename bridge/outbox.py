"""Pushes to users with confirmed delivery.

Every push is stored first and gets a per-user increasing ``seq``; it is offered to each live
connection of the user and leaves the store only when a peer confirms it (an explicit ack, or a
WebSocket pong that came back after the push was written). Whatever is unconfirmed when a
connection dies is offered again, in order and with the same seq, at the next login: delivery is
at least once, and clients drop duplicates by message id.

A per-user lock makes the order explicit: a login first replays the stored pushes and only then
joins the live set, and a push that races with it waits, so nothing is reordered or skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import structlog

from bridge.locks import KeyedLocks
from bridge.metrics import UNSCRAPED, Metrics
from storage.messages import MessageKind, MessageRepo
from storage.outbox import OutboxRepo

log = structlog.get_logger(__name__)

# A push waits this long for its user's lock (a login replaying a long backlog holds it).
LOCK_TIMEOUT = 30.0
# In a cluster: users whose offered pushes are tracked until confirmed (see Outbox._offered).
MAX_TRACKED_USERS = 100_000


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
    # A notice standing in for a reply that was cut short (the bridge stopped while it ran).
    interrupted: bool = False
    reply_to: int | None = None
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("seq")  # the store's own key is the seq
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], seq: int = 0) -> Push:
        p = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "seq"})
        p.seq = seq
        return p


class Sink(Protocol):
    """One live connection of a user."""

    def offer(self, push: Push) -> bool:
        """Queue the push for sending without waiting; False when the connection is gone."""
        ...

    def note(self, seq: int) -> None:
        """The connection already knows this push (it caused it): confirm it with the rest."""
        ...

    # Optional, for a connection with a bounded send queue: `backlogged() -> bool` (it should
    # take no more for now) and `async room() -> bool` (until it can; False once it is gone).


# Makes the sink that serves one user of a family (None: that user cannot be served now).
SinkFactory = Callable[[str], "Sink | None"]


class Outbox:
    def __init__(self, repo: OutboxRepo, limit_per_user: int) -> None:
        self._repo = repo
        self._limit = limit_per_user
        self._sinks: dict[str, set[Sink]] = {}
        self._locks = KeyedLocks()
        # Users served by an edge rather than by connections of their own (a QQ account serves
        # its private chats and groups): id prefix → the factory of their sinks.
        self._families: dict[str, SinkFactory] = {}
        # The app's (see App.start); counted into and never scraped when built alone.
        self.metrics: Metrics = UNSCRAPED
        # In a cluster: hands each stored push to the other nodes (bridge.cluster.pushes).
        self.fanout: Callable[[str, Push], Awaitable[None]] | None = None
        # In a cluster: the seqs offered here and not yet confirmed, per user. Another node's
        # push may reach this node after a later one of this node's (each node announces its
        # own), so "confirmed up to N" here covers only what was offered here; the rest waits
        # for its own confirmation or the next login. A user leaves it when everything offered
        # was confirmed (a confirmation may come just after the connection closed); bounded by
        # MAX_TRACKED_USERS and, per user, by the outbox's limit.
        self._offered: dict[str, set[int]] = {}

    def next_push_id(self) -> str:
        return f"s-{self._repo.next_id()}"

    def id_space(self, slot: int, stride: int) -> None:
        """In a cluster: this node's push ids are its own (see OutboxRepo.id_space)."""
        self._repo.id_space(slot, stride)

    def online(self, user_id: str) -> bool:
        return bool(self._sinks.get(user_id))

    def expects(self, user_id: str) -> bool:
        """Whether a push for this user may concern this node: a connection of the user is
        here, or is logging in (holding the user's lock), or an edge here serves the user."""
        return (
            bool(self._sinks.get(user_id))
            or user_id in self._locks
            or any(user_id.startswith(prefix) for prefix in self._families)
        )

    def connections(self, user_id: str) -> int:
        return len(self._sinks.get(user_id, ()))

    @property
    def tracked_users(self) -> int:
        return len(self._sinks) + len(self._locks)

    async def attach(self, user_id: str, sink: Sink) -> int:
        """Offer the unconfirmed pushes in order, then join the live set. Returns how many.

        A backlog longer than the sink's send queue goes out as the sink drains, without holding
        the user's lock while it waits: pushes stored meanwhile are read back from the store
        and follow in order, and the sink joins the live set only once it has them all.
        """
        backlogged = getattr(sink, "backlogged", None)
        after = 0  # the last seq offered
        offered = 0
        while True:
            async with self._locks.hold(user_id, LOCK_TIMEOUT):
                waiting = False
                for seq, data in await self._repo.pending(user_id):
                    if seq <= after:
                        continue
                    if backlogged is not None and backlogged():
                        waiting = True
                        break
                    if not sink.offer(Push.from_json(data, seq)):
                        return 0
                    self._mark(user_id, seq)
                    after = seq
                    offered += 1
                if not waiting:
                    self._sinks.setdefault(user_id, set()).add(sink)
                    self.metrics.push("offered", offered)
                    return offered
            if not await sink.room():  # type: ignore[attr-defined]
                return 0

    async def serve_family(self, prefix: str, factory: SinkFactory) -> int:
        """Serve every user whose id starts with ``prefix`` through ``factory``'s sinks: the
        pushes waiting for them now are offered at once, a later push to one of them without a
        sink gets one. Returns how many users had pushes waiting."""
        self._families[prefix] = factory
        users = await self._repo.users_with_prefix(prefix)
        for user_id in users:
            if not self._sinks.get(user_id) and (sink := factory(user_id)) is not None:
                await self.attach(user_id, sink)
        return len(users)

    def stop_family(self, prefix: str) -> None:
        """No more sinks for the family; those it has are the factory owner's to detach."""
        self._families.pop(prefix, None)

    def _family_sink(self, user_id: str) -> Sink | None:
        for prefix, factory in self._families.items():
            if user_id.startswith(prefix):
                return factory(user_id)
        return None

    def detach(self, user_id: str, sink: Sink) -> None:
        sinks = self._sinks.get(user_id)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self._sinks[user_id]

    def _mark(self, user_id: str, seq: int) -> None:
        if self.fanout is not None:
            offered = self._offered.get(user_id)
            if offered is None:
                if len(self._offered) >= MAX_TRACKED_USERS:
                    # The user tracked longest ago: its pushes stay stored, for the next login.
                    del self._offered[next(iter(self._offered))]
                offered = self._offered[user_id] = set()
            offered.add(seq)
            if len(offered) > 2 * self._limit:
                # Never confirmed and long trimmed from the store: forget the oldest.
                for old in sorted(offered)[: len(offered) - self._limit]:
                    offered.discard(old)

    async def push(self, user_id: str, push: Push, *, exclude: Sink | None = None) -> int:
        """Store the push, then offer it to every live connection of the user (on every node
        of a cluster: see ``fanout``).

        ``exclude`` (the connection that caused it) is not sent the push but confirms it like
        one it received. Returns how many connections of this node it was offered to.
        """
        if not push.push_id:
            push.push_id = self.next_push_id()
        async with self._locks.hold(user_id, LOCK_TIMEOUT):
            push.seq, dropped = await self._repo.push(user_id, push.to_json(), self._limit)
            self.metrics.push("stored")
            if dropped:
                log.warning("outbox.dropped_oldest", user=user_id, dropped=dropped)
            offered = await self._offer(user_id, push, exclude)
        if self.fanout is not None:
            # The user's connections on the other nodes; stored first, so a node that misses
            # this (a bus reconnecting) still has it for the user's next login.
            await self.fanout(user_id, push)
        return offered

    async def deliver(self, user_id: str, push: Push) -> int:
        """A push another node stored (``push.seq`` set): offer it to this node's connections
        of the user, in the order pushes come. A login replaying the store meanwhile is waited
        for, so the push is either in what it replayed or offered after it (at least once)."""
        async with self._locks.hold(user_id, LOCK_TIMEOUT):
            return await self._offer(user_id, push, None)

    async def _offer(self, user_id: str, push: Push, exclude: Sink | None) -> int:
        """Offer a stored push to the user's live connections here (the user's lock held)."""
        if not self._sinks.get(user_id) and (new := self._family_sink(user_id)) is not None:
            # Everything waiting for this user goes first, in order, then this push.
            for seq, data in await self._repo.pending(user_id):
                if not new.offer(push if seq == push.seq else Push.from_json(data, seq)):
                    return 0
                self._mark(user_id, seq)
            self._sinks.setdefault(user_id, set()).add(new)
            self.metrics.push("offered")
            return 1
        offered = 0
        sinks = list(self._sinks.get(user_id, ()))
        if sinks:
            self._mark(user_id, push.seq)
        for sink in sinks:
            if sink is exclude:
                sink.note(push.seq)
            elif sink.offer(push):
                offered += 1
        self.metrics.push("offered", offered)
        return offered

    async def catch_up(self) -> int:
        """In a cluster, after this node missed announcements (its bus reconnected): each push
        waiting for a user served here that was never offered here is offered now (late, but
        not only at the next login). Returns how many."""
        users = set(self._sinks)
        for prefix in list(self._families):
            users.update(await self._repo.users_with_prefix(prefix))
        caught = 0
        for user_id in users:
            async with self._locks.hold(user_id, LOCK_TIMEOUT):
                sinks = list(self._sinks.get(user_id, ()))
                if not sinks:
                    new = self._family_sink(user_id)
                    if new is None:
                        continue
                    self._sinks.setdefault(user_id, set()).add(new)
                    sinks = [new]
                offered = self._offered.get(user_id, set())
                for seq, data in await self._repo.pending(user_id):
                    if seq in offered:
                        continue
                    push = Push.from_json(data, seq)
                    for sink in sinks:
                        sink.offer(push)
                    self._mark(user_id, seq)
                    caught += 1
        self.metrics.push("offered", caught)
        return caught

    async def stored(self, user_id: str, seq: int) -> Push | None:
        """A push still waiting in the store (a node reads one too big for the bus)."""
        data = await self._repo.frame(user_id, seq)
        return None if data is None else Push.from_json(data, seq)

    async def confirm(self, user_id: str, seq: int, *, exact: bool = False) -> None:
        """A peer of this user has everything up to ``seq`` (that it was offered: in a cluster,
        only what this node offered is confirmed here). ``exact``: only ``seq`` itself (a
        peer handling pushes one by one, which in a cluster may come out of order)."""
        if self.fanout is None:
            if exact:
                await self._repo.ack_exactly(user_id, [seq])
            else:
                await self._repo.ack(user_id, seq)
        else:
            offered = self._offered.get(user_id, set())
            if exact:
                done = [seq] if seq in offered else []
            else:
                done = [s for s in offered if s <= seq]
            offered.difference_update(done)
            if not offered:
                self._offered.pop(user_id, None)
            await self._repo.ack_exactly(user_id, done)
        self.metrics.push("confirmed")

    async def pending_count(self, user_id: str) -> int:
        return await self._repo.count(user_id)


async def send_from_contact(
    messages: MessageRepo,
    outbox: Outbox,
    user_id: str,
    contact: str,
    segments: list[dict[str, Any]],
    *,
    sender_name: str,
    thread: str = "default",
    reply_to: int | None = None,
    interrupted: bool = False,
    kind: MessageKind = "message",
) -> int:
    """A message from ``contact`` to a user that no reply stream carries (a command's answer, a
    notice, a framework's or a broadcast's message): stored, then pushed. Returns its id.
    ``kind`` 'notice' keeps the bridge's own answers out of histories and model contexts."""
    row = await messages.add(
        user_id, contact, "out", segments, reply_to=reply_to, thread=thread, kind=kind
    )
    await outbox.push(
        user_id,
        Push(
            kind="message",
            contact=contact,
            message_id=row.id,
            segments=segments,
            time=int(row.time),
            sender_id=contact,
            sender_name=sender_name,
            interrupted=interrupted,
            reply_to=reply_to if interrupted else None,
        ),
    )
    return row.id
