"""The Outbox: every push stored first, offered to live connections, kept until confirmed.

Delivery is at least once: a push leaves the store only on ``confirm``; whatever is unconfirmed
is offered again, in order and with the same seq and push_id, at the next login.

Against the real repository, on both databases (tests/support/storage.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import structlog

import bridge.outbox as outbox_mod
from bridge.outbox import Outbox, Push
from storage import Storage
from storage.db import Database
from storage.outbox import OutboxRepo
from storage.postgres import PostgresDatabase
from tests.support.storage import (  # noqa: F401 - fixtures (both databases)
    backend_fixture,
    location_fixture,
    st_fixture,
)

WAIT = 5.0

Log = list[tuple[str, str, int]]


class Sink:
    """A fake connection: ``offer`` queues without waiting, False once the connection is gone."""

    def __init__(self, name: str = "sink", *, fail_at: int | None = None, log: Log | None = None):
        self.name = name
        self.got: list[Push] = []
        self.notes: list[int] = []
        self.alive = True
        self.fail_at = fail_at  # offers accepted before the connection dies
        self.log = log

    def offer(self, push: Push) -> bool:
        if self.fail_at is not None and len(self.got) >= self.fail_at:
            self.alive = False
        if not self.alive:
            return False
        self.got.append(push)
        if self.log is not None:
            self.log.append(("offered", self.name, push.seq))
        return True

    def note(self, seq: int) -> None:
        self.notes.append(seq)

    def ids(self) -> list[int]:
        return [p.message_id for p in self.got]

    def seqs(self) -> list[int]:
        return [p.seq for p in self.got]

    def __repr__(self) -> str:
        return f"Sink({self.name})"


class Repo(OutboxRepo):
    """The real repository, recording each store; ``gate`` can hold a login's replay.

    The gate sits after the stored rows were read, under the user's lock: the point where a
    push that did not wait for the lock would be stored and offered behind the login's back.
    """

    def __init__(self, db: Database | PostgresDatabase) -> None:
        super().__init__(db)
        self.log: Log = []
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def push(self, user_id: str, frame: dict[str, Any], limit: int) -> tuple[int, int]:
        if self.fail is not None:
            raise self.fail
        seq, dropped = await super().push(user_id, frame, limit)
        self.log.append(("stored", user_id, seq))
        return seq, dropped

    async def pending(self, user_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = await super().pending(user_id)
        self.reading.set()
        await self.gate.wait()
        return rows


def msg(i: int, contact: str = "momo") -> Push:
    return Push(
        kind="message",
        contact=contact,
        message_id=i,
        segments=[{"type": "text", "data": {"text": f"m{i}"}}],
        time=1700000000 + i,
        sender_id=contact,
        sender_name="Momo",
    )


@pytest.fixture
def repo(st: Storage) -> Repo:
    return Repo(st.db)


@pytest.fixture
def outbox(repo: Repo) -> Outbox:
    return Outbox(repo, limit_per_user=100)


async def stored(repo: OutboxRepo, user: str) -> list[Push]:
    return [Push.from_json(d, seq) for seq, d in await repo.pending(user)]


async def stored_ids(repo: OutboxRepo, user: str) -> list[int]:
    return [p.message_id for p in await stored(repo, user)]


def increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(seqs)) and all(s > 0 for s in seqs)


# ----- Push ---------------------------------------------------------------------------------------


def test_push_json_round_trip_leaves_the_seq_to_the_store() -> None:
    p = msg(3)
    p.stream_request_id = 17
    p.push_id = "s-9"
    p.seq = 42
    d = p.to_json()
    assert "seq" not in d  # the store's own key is the seq
    assert Push.from_json(d, 42) == p
    assert Push.from_json(d).seq == 0
    assert Push.from_json({**d, "unknown": 1, "seq": 7}, 42) == p  # tolerant; seq from the store
    r = Push.from_json({"kind": "recall", "contact": "c", "message_id": 2})
    assert r == Push(kind="recall", contact="c", message_id=2)


def test_push_ids_are_unique_server_ids() -> None:
    outbox = Outbox(OutboxRepo(None), limit_per_user=100)  # type: ignore[arg-type] - no storage
    ids = [outbox.next_push_id() for _ in range(100)]
    assert len(set(ids)) == 100 and all(i.startswith("s-") for i in ids)


# ----- store, then offer ------------------------------------------------------------------------


async def test_push_is_stored_before_it_is_offered(outbox: Outbox, repo: Repo) -> None:
    a, b = Sink("a", log=repo.log), Sink("b", log=repo.log)
    assert await outbox.attach("u", a) == 0
    assert await outbox.attach("u", b) == 0
    p = msg(1)
    assert await outbox.push("u", p) == 2
    assert p.seq > 0 and p.push_id.startswith("s-")
    assert repo.log[0] == ("stored", "u", p.seq)
    assert sorted(repo.log[1:]) == [("offered", "a", p.seq), ("offered", "b", p.seq)]
    assert a.got == [p] and b.got == [p]
    # Offered is not confirmed: it stays until a peer confirms it.
    assert await stored(repo, "u") == [p]
    assert await outbox.pending_count("u") == 1


async def test_push_is_stored_with_no_live_connection(outbox: Outbox, repo: Repo) -> None:
    assert not outbox.online("u") and outbox.connections("u") == 0
    assert await outbox.push("u", msg(1)) == 0
    dead = Sink("dead")
    await outbox.attach("v", dead)  # nothing stored for v yet: joins at once
    dead.alive = False
    assert await outbox.push("v", msg(2)) == 0  # offered to nobody: the connection is gone
    assert dead.got == []
    assert await stored_ids(repo, "u") == [1] and await stored_ids(repo, "v") == [2]


async def test_a_failed_store_offers_nothing(outbox: Outbox, repo: Repo) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    repo.fail = RuntimeError("disk full")
    p = msg(1)
    with pytest.raises(RuntimeError, match="disk full"):
        await outbox.push("u", p)
    assert a.got == [] and p.seq == 0 and await repo.count("u") == 0
    repo.fail = None
    assert await outbox.push("u", msg(2)) == 1 and a.ids() == [2]
    outbox.detach("u", a)
    assert outbox.tracked_users == 0  # the failed push released its lock


async def test_seq_increases_per_user_and_is_carried_on_the_push(
    outbox: Outbox, repo: Repo
) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    pushes = {"u": [msg(i) for i in range(5)], "v": [msg(100 + i) for i in range(5)]}
    for pu, pv in zip(pushes["u"], pushes["v"], strict=True):
        await outbox.push("u", pu)
        await outbox.push("v", pv)
    for user, ps in pushes.items():
        assert increasing([p.seq for p in ps])
        # The seq on the Push is the stored row's seq.
        assert [seq for seq, _ in await repo.pending(user)] == [p.seq for p in ps]
    assert a.seqs() == [p.seq for p in pushes["u"]]
    # Never reused, even once everything before was confirmed and deleted.
    last = pushes["u"][-1].seq
    await outbox.confirm("u", last)
    again = msg(5)
    await outbox.push("u", again)
    assert again.seq > last and a.seqs()[-1] == again.seq


async def test_push_id_is_assigned_once_and_kept(outbox: Outbox, repo: Repo) -> None:
    a = Sink()
    await outbox.attach("u", a)
    p = msg(1)
    p.push_id = "s-own"
    await outbox.push("u", p)
    await outbox.push("u", msg(2))
    assert a.got[0].push_id == "s-own"
    assert a.got[1].push_id.startswith("s-") and a.got[1].push_id != "s-own"
    assert [q.push_id for q in await stored(repo, "u")] == [q.push_id for q in a.got]


# ----- confirm ------------------------------------------------------------------------------------


async def test_confirm_removes_up_to_seq_only_for_that_user(outbox: Outbox, repo: Repo) -> None:
    u = [msg(i) for i in range(1, 6)]
    v = [msg(i) for i in range(1, 4)]
    for p in u:
        await outbox.push("u", p)
    for p in v:
        await outbox.push("v", p)
    await outbox.confirm("u", u[2].seq)
    assert await stored(repo, "u") == u[3:]
    assert await stored(repo, "v") == v  # another user's pushes stay
    await outbox.confirm("u", u[1].seq)  # an older confirmation changes nothing
    assert await outbox.pending_count("u") == 2
    await outbox.confirm("nobody", u[-1].seq)
    assert await outbox.pending_count("u") == 2 and await outbox.pending_count("v") == 3
    await outbox.confirm("u", u[-1].seq)
    assert await outbox.pending_count("u") == 0 and await stored(repo, "v") == v


async def test_confirmed_pushes_are_not_replayed(outbox: Outbox, repo: Repo) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    for i in range(1, 5):
        await outbox.push("u", msg(i))
    await outbox.confirm("u", a.got[1].seq)
    outbox.detach("u", a)
    b = Sink("b")
    assert await outbox.attach("u", b) == 2
    assert b.got == a.got[2:]


# ----- replay at attach ---------------------------------------------------------------------------


async def test_unconfirmed_pushes_replayed_at_attach_in_order_same_seq_and_push_id(
    outbox: Outbox, repo: Repo
) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    recall = Push(kind="recall", contact="momo", message_id=2)
    for p in (msg(1), msg(2), recall):
        await outbox.push("u", p)
    # The tab dies before confirming; more arrive while the user is offline.
    outbox.detach("u", a)
    assert not outbox.online("u")
    assert await outbox.push("u", msg(3)) == 0
    b = Sink("b")
    assert await outbox.attach("u", b) == 4
    assert [(p.kind, p.message_id) for p in b.got] == [
        ("message", 1),
        ("message", 2),
        ("recall", 2),
        ("message", 3),
    ]
    # At least once: the same pushes again, identical down to seq and push_id.
    assert b.got[:3] == a.got and increasing(b.seqs())
    assert b.got == await stored(repo, "u")
    # Then live: b has joined.
    assert outbox.online("u") and await outbox.push("u", msg(4)) == 1
    assert b.ids() == [1, 2, 2, 3, 4]
    # Nothing was confirmed, so another tab gets all of it again (clients drop duplicates).
    c = Sink("c")
    assert await outbox.attach("u", c) == 5 and c.got == b.got


async def test_attach_with_nothing_stored_joins_at_once(outbox: Outbox) -> None:
    a = Sink()
    assert await outbox.attach("u", a) == 0
    assert a.got == [] and outbox.online("u") and outbox.connections("u") == 1


async def test_sink_failing_mid_replay_does_not_join(outbox: Outbox, repo: Repo) -> None:
    for i in range(1, 6):
        await outbox.push("u", msg(i))
    flaky = Sink("flaky", fail_at=2)
    assert await outbox.attach("u", flaky) == 0
    assert flaky.ids() == [1, 2]
    assert not outbox.online("u") and outbox.connections("u") == 0
    assert outbox.tracked_users == 0
    # Nothing was confirmed: everything stays, and the dead sink is offered no more.
    assert await stored_ids(repo, "u") == [1, 2, 3, 4, 5]
    assert await outbox.push("u", msg(6)) == 0 and flaky.ids() == [1, 2]
    s = Sink("next")
    assert await outbox.attach("u", s) == 6
    assert s.ids() == [1, 2, 3, 4, 5, 6] and s.got[:2] == flaky.got


async def test_sink_dead_from_the_start_keeps_everything(outbox: Outbox, repo: Repo) -> None:
    for i in range(1, 4):
        await outbox.push("u", msg(i))
    dead = Sink("dead")
    dead.alive = False
    assert await outbox.attach("u", dead) == 0
    assert dead.got == [] and not outbox.online("u")
    assert await stored_ids(repo, "u") == [1, 2, 3]


# ----- exclude ------------------------------------------------------------------------------------


async def test_exclude_gets_note_not_offer(outbox: Outbox, repo: Repo) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    p = msg(1)
    assert await outbox.push("u", p, exclude=a) == 1
    assert a.got == [] and a.notes == [p.seq]
    assert b.got == [p] and b.notes == []
    assert await stored(repo, "u") == [p]  # kept until confirmed, like any push


async def test_exclude_the_only_connection_still_stores(outbox: Outbox, repo: Repo) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    p = msg(1)
    assert await outbox.push("u", p, exclude=a) == 0
    assert a.got == [] and a.notes == [p.seq]
    assert await stored(repo, "u") == [p]
    # If the tab dies before confirming, its next login gets the push like any other.
    outbox.detach("u", a)
    b = Sink("b")
    assert await outbox.attach("u", b) == 1 and b.got == [p]
    await outbox.confirm("u", p.seq)
    assert await repo.count("u") == 0


async def test_exclude_not_attached_is_not_noted(outbox: Outbox, repo: Repo) -> None:
    gone = Sink("gone")
    assert await outbox.push("u", msg(1), exclude=gone) == 0
    assert gone.notes == [] and gone.got == []
    assert await stored_ids(repo, "u") == [1]


# ----- limit --------------------------------------------------------------------------------------


async def test_limit_trims_the_oldest(repo: Repo) -> None:
    small = Outbox(repo, limit_per_user=3)
    live = Sink("live")
    await small.attach("u", live)
    with structlog.testing.capture_logs() as logs:
        for i in range(1, 7):
            assert await small.push("u", msg(i)) == 1
        await small.push("v", msg(99))
    assert live.ids() == [1, 2, 3, 4, 5, 6]  # offered live regardless
    dropped = [e for e in logs if e["event"] == "outbox.dropped_oldest"]
    assert [(e["user"], e["dropped"]) for e in dropped] == [("u", 1)] * 3
    small.detach("u", live)
    s = Sink()
    assert await small.attach("u", s) == 3
    assert s.got == live.got[3:]  # the newest three, with their original seqs
    assert await stored_ids(repo, "v") == [99]  # another user's pushes are not trimmed


# ----- detach -------------------------------------------------------------------------------------


async def test_detach(outbox: Outbox, repo: Repo) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    outbox.detach("u", a)
    assert outbox.connections("u") == 1
    assert await outbox.push("u", msg(1)) == 1 and a.got == [] and b.ids() == [1]
    outbox.detach("u", b)
    outbox.detach("u", b)  # twice is harmless
    outbox.detach("nobody", b)
    assert not outbox.online("u") and outbox.tracked_users == 0
    assert await outbox.push("u", msg(2)) == 0
    assert a.got == [] and b.ids() == [1]
    assert await stored_ids(repo, "u") == [1, 2]


# ----- races --------------------------------------------------------------------------------------


async def test_pushes_racing_with_attach_are_not_lost_reordered_or_duplicated(
    outbox: Outbox, repo: Repo
) -> None:
    for i in range(10):
        await outbox.push("u", msg(i))
    s = Sink()
    before = [outbox.push("u", msg(i)) for i in range(10, 30)]
    after = [outbox.push("u", msg(i)) for i in range(30, 60)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*before, outbox.attach("u", s), *after)
    assert s.ids() == list(range(60)) and increasing(s.seqs())
    assert s.got == await stored(repo, "u")


async def test_push_during_a_replay_waits_for_it(outbox: Outbox, repo: Repo) -> None:
    for i in range(3):
        await outbox.push("u", msg(i))
    s = Sink("s")
    repo.gate.clear()
    repo.reading.clear()
    login = asyncio.create_task(outbox.attach("u", s))
    async with asyncio.timeout(WAIT):
        await repo.reading.wait()  # the replay has read the store and holds u's lock
    racing = [asyncio.create_task(outbox.push("u", msg(i))) for i in range(3, 6)]
    # Another user is not held up; and by the time its push is stored (the database runs
    # requests in order), u's pushes would have been stored too had they not waited.
    async with asyncio.timeout(WAIT):
        assert await outbox.push("v", msg(99)) == 0
    assert await repo.count("u") == 3
    assert not login.done() and not any(t.done() for t in racing)
    assert outbox.tracked_users == 1  # u's lock
    repo.gate.set()
    async with asyncio.timeout(WAIT):
        assert await login == 3
        assert await asyncio.gather(*racing) == [1, 1, 1]
    assert s.ids() == [0, 1, 2, 3, 4, 5] and increasing(s.seqs())
    outbox.detach("u", s)
    assert outbox.tracked_users == 0


async def test_concurrent_live_pushes_keep_order_on_every_sink(outbox: Outbox, repo: Repo) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    async with asyncio.timeout(WAIT):
        offered = await asyncio.gather(*(outbox.push("u", msg(i)) for i in range(50)))
    assert offered == [2] * 50
    assert a.ids() == list(range(50)) and a.got == b.got
    assert increasing(a.seqs()) and a.got == await stored(repo, "u")


async def test_two_tabs_attaching_while_pushes_race(outbox: Outbox, repo: Repo) -> None:
    for i in range(5):
        await outbox.push("u", msg(i))
    a, b = Sink("a"), Sink("b")
    async with asyncio.timeout(WAIT):
        await asyncio.gather(
            outbox.attach("u", a),
            *(outbox.push("u", msg(i)) for i in range(5, 15)),
            outbox.attach("u", b),
            *(outbox.push("u", msg(i)) for i in range(15, 25)),
        )
    # Nothing was confirmed, so each tab gets everything: replayed, then live; once, in order.
    assert a.ids() == list(range(25)) and increasing(a.seqs())
    assert b.got == a.got
    assert await stored(repo, "u") == a.got
    assert outbox.connections("u") == 2


async def test_a_push_gives_up_on_a_lock_held_too_long(
    outbox: Outbox, repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_mod, "LOCK_TIMEOUT", 0.05)
    s = Sink("s")
    repo.gate.clear()
    repo.reading.clear()
    login = asyncio.create_task(outbox.attach("u", s))
    async with asyncio.timeout(WAIT):
        await repo.reading.wait()
        with pytest.raises(TimeoutError):
            await outbox.push("u", msg(1))
    assert await repo.count("u") == 0 and outbox.tracked_users == 1
    repo.gate.set()
    async with asyncio.timeout(WAIT):
        assert await login == 0
    outbox.detach("u", s)
    assert outbox.tracked_users == 0


# ----- nothing grows per user ----------------------------------------------------------------------


async def test_tracked_users_return_to_zero(outbox: Outbox, repo: Repo) -> None:
    assert outbox.tracked_users == 0
    users = [f"u{i}" for i in range(30)]
    for u in users:
        await outbox.push(u, msg(1))  # offline: stored, nothing kept in memory
    assert outbox.tracked_users == 0
    sinks = {u: Sink(u) for u in users}
    async with asyncio.timeout(WAIT):
        await asyncio.gather(
            *(outbox.attach(u, s) for u, s in sinks.items()),
            *(outbox.push(u, msg(2)) for u in users),
        )
    assert outbox.tracked_users == len(users)  # one live set each, no locks left
    for u, s in sinks.items():
        assert s.ids() == [1, 2]
        await outbox.confirm(u, s.got[-1].seq)
        outbox.detach(u, s)
    assert outbox.tracked_users == 0
    # A failed login and a push to nobody leave nothing either.
    await outbox.push("w", msg(1))
    assert await outbox.attach("w", Sink("w", fail_at=0)) == 0
    await outbox.confirm("w", 10**9)
    assert outbox.tracked_users == 0


# ----- restart ------------------------------------------------------------------------------------


async def test_pushes_survive_closing_and_reopening_the_database(location: str) -> None:
    st = await Storage.open(location)
    try:
        ob = Outbox(st.outbox, limit_per_user=100)
        a = Sink("a")
        await ob.attach("u", a)
        for i in range(1, 4):
            await ob.push("u", msg(i))
        await ob.confirm("u", a.got[0].seq)
        ob.detach("u", a)
        await ob.push("u", msg(4))
        await ob.push("v", msg(5))
        before = await stored(st.outbox, "u")
    finally:
        await st.close()
    assert before[:2] == a.got[1:] and len(before) == 3

    st = await Storage.open(location)
    try:
        ob = Outbox(st.outbox, limit_per_user=100)
        b = Sink("b")
        assert await ob.attach("u", b) == 3
        assert b.got == before  # same order, seq and push_id as before the restart
        p = msg(6)
        assert await ob.push("u", p) == 1
        assert p.seq > before[-1].seq and b.got[-1] is p
        await ob.confirm("u", p.seq)
        assert await stored_ids(st.outbox, "v") == [5]
    finally:
        await st.close()

    st = await Storage.open(location)
    try:
        assert await st.outbox.count("u") == 0 and await st.outbox.count("v") == 1
        q = msg(7)
        await Outbox(st.outbox, limit_per_user=100).push("u", q)
        assert q.seq > p.seq  # seqs are not reused after a restart either
    finally:
        await st.close()


# ----- in a cluster: confirming covers only what this node offered -------------------------------


async def test_in_a_cluster_a_confirmation_covers_only_what_this_node_offered(
    outbox: Outbox, repo: Repo
) -> None:
    announced: list[int] = []

    async def fanout(user_id: str, push: Push) -> None:
        announced.append(push.seq)

    outbox.fanout = fanout
    tab = Sink("tab")
    await outbox.attach("u", tab)
    # Another node stored seq N (its announcement not here yet); this node then stores N+1.
    other_seq, _ = await repo.push("u", msg(1).to_json(), 100)
    await outbox.push("u", msg(2))
    assert tab.ids() == [2] and announced == [tab.seqs()[0]]
    await outbox.confirm("u", tab.seqs()[0])
    # The other node's push was never offered here: it stays for its own confirmation.
    assert await stored_ids(repo, "u") == [1]
    # Once it arrives and is offered, confirming covers it.
    await outbox.deliver("u", Push.from_json(msg(1).to_json(), other_seq))
    assert tab.ids() == [2, 1]
    await outbox.confirm("u", tab.seqs()[0])  # "up to" an older seq than the newest: no matter
    assert await stored_ids(repo, "u") == []
    assert "u" not in outbox._offered  # everything offered was confirmed


async def test_alone_a_confirmation_covers_everything_up_to_its_seq(
    outbox: Outbox, repo: Repo
) -> None:
    tab = Sink("tab")
    await outbox.attach("u", tab)
    await repo.push("u", msg(1).to_json(), 100)
    await outbox.push("u", msg(2))
    await outbox.confirm("u", tab.seqs()[0])
    assert await stored_ids(repo, "u") == []


async def test_a_stored_push_is_read_back_by_its_seq(outbox: Outbox, repo: Repo) -> None:
    seq, _ = await repo.push("u", msg(7).to_json(), 100)
    await repo.push("u", msg(8).to_json(), 100)
    found = await outbox.stored("u", seq)
    assert found is not None and found.message_id == 7 and found.seq == seq
    assert await outbox.stored("someone-else", seq) is None
    await repo.ack("u", seq)
    assert await outbox.stored("u", seq) is None
