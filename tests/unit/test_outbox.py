"""The Outbox: fan-out to live connections, storage for offline users, ordered drain on attach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.outbox import Outbox, Push
from storage import Storage
from storage.outbox import OutboxRepo

WAIT = 5.0


class Sink:
    """A fake connection that records what it was given; ``alive=False`` means closed."""

    def __init__(self, name: str = "sink", *, fail_after: int | None = None) -> None:
        self.name = name
        self.got: list[Push] = []
        self.alive = True
        self.fail_after = fail_after  # deliveries that succeed before the connection dies

    async def deliver(self, push: Push) -> bool:
        await asyncio.sleep(0)  # a real send yields to the loop
        if self.fail_after is not None and len(self.got) >= self.fail_after:
            self.alive = False
        if not self.alive:
            return False
        self.got.append(push)
        return True

    def ids(self) -> list[int]:
        return [p.message_id for p in self.got]

    def __repr__(self) -> str:
        return f"Sink({self.name})"


class GatedSink(Sink):
    """Blocks inside deliver until released, to hold the per-user lock on purpose."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def deliver(self, push: Push) -> bool:
        self.entered.set()
        await self.gate.wait()
        return await super().deliver(push)


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
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    s = await Storage.open(str(tmp_path / "outbox.db"))
    yield s
    await s.close()


@pytest.fixture
def repo(storage: Storage) -> OutboxRepo:
    return storage.outbox


@pytest.fixture
def outbox(repo: OutboxRepo) -> Outbox:
    return Outbox(repo, limit_per_user=100)


async def stored_ids(repo: OutboxRepo, user: str) -> list[int]:
    return [d["message_id"] for _, d in await repo.pending(user)]


# ----- Push ---------------------------------------------------------------------------------------


def test_push_json_round_trip() -> None:
    p = msg(3)
    p.stream_request_id = 17
    p.push_id = "s-9"
    assert Push.from_json(p.to_json()) == p
    assert Push.from_json({**p.to_json(), "unknown": 1}) == p  # tolerant of newer fields
    r = Push.from_json({"kind": "recall", "contact": "c", "message_id": 2})
    assert r == Push(kind="recall", contact="c", message_id=2)


def test_push_ids_are_unique_server_ids(outbox: Outbox) -> None:
    ids = [outbox.next_push_id() for _ in range(100)]
    assert len(set(ids)) == 100 and all(i.startswith("s-") for i in ids)


# ----- live fan-out -----------------------------------------------------------------------------


async def test_fan_out_to_every_sink_of_the_user(outbox: Outbox, repo: OutboxRepo) -> None:
    a, b, other = Sink("a"), Sink("b"), Sink("other")
    assert await outbox.attach("u", a) == 0
    assert await outbox.attach("u", b) == 0
    await outbox.attach("v", other)
    assert outbox.online("u") and outbox.connections("u") == 2
    assert await outbox.push("u", msg(1)) == 2
    assert a.ids() == [1] and b.ids() == [1] and other.got == []
    assert a.got[0] is b.got[0] and a.got[0].push_id.startswith("s-")
    assert await repo.count("u") == 0


async def test_push_id_is_assigned_once_and_kept(outbox: Outbox) -> None:
    a = Sink()
    await outbox.attach("u", a)
    p = msg(1)
    p.push_id = "s-own"
    await outbox.push("u", p)
    await outbox.push("u", msg(2))
    assert a.got[0].push_id == "s-own"
    assert a.got[1].push_id.startswith("s-") and a.got[1].push_id != "s-own"


async def test_exclude_skips_that_sink(outbox: Outbox, repo: OutboxRepo) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    assert await outbox.push("u", msg(1), exclude=a) == 1
    assert a.got == [] and b.ids() == [1]
    assert await repo.count("u") == 0


async def test_exclude_the_only_connection_stores_nothing(outbox: Outbox, repo: OutboxRepo) -> None:
    # The excluded connection made the change itself; it is online, so nothing is kept for later.
    a = Sink("a")
    await outbox.attach("u", a)
    assert await outbox.push("u", msg(1), exclude=a) == 0
    assert a.got == [] and await repo.count("u") == 0


async def test_exclude_while_offline_stores(outbox: Outbox, repo: OutboxRepo) -> None:
    assert await outbox.push("u", msg(1), exclude=Sink("gone")) == 0
    assert await stored_ids(repo, "u") == [1]


async def test_partial_delivery_is_not_stored(outbox: Outbox, repo: OutboxRepo) -> None:
    a, dead = Sink("a"), Sink("dead")
    await outbox.attach("u", a)
    await outbox.attach("u", dead)
    dead.alive = False
    assert await outbox.push("u", msg(1)) == 1
    assert a.ids() == [1] and await repo.count("u") == 0


async def test_all_sinks_closed_means_stored(outbox: Outbox, repo: OutboxRepo) -> None:
    a = Sink("a")
    await outbox.attach("u", a)
    a.alive = False
    assert await outbox.push("u", msg(1)) == 0
    assert await stored_ids(repo, "u") == [1]


# ----- offline and attach ---------------------------------------------------------------------------


async def test_offline_pushes_are_stored_in_order(outbox: Outbox, repo: OutboxRepo) -> None:
    for i in range(1, 6):
        assert await outbox.push("u", msg(i)) == 0
    await outbox.push("v", msg(99))
    assert not outbox.online("u") and outbox.connections("u") == 0
    assert await stored_ids(repo, "u") == [1, 2, 3, 4, 5]
    stored = await repo.pending("u")
    assert Push.from_json(stored[0][1]).push_id.startswith("s-")


async def test_attach_drains_in_order_then_goes_live(outbox: Outbox, repo: OutboxRepo) -> None:
    recall = Push(kind="recall", contact="momo", message_id=2)
    for p in (msg(1), msg(2), recall, msg(3)):
        await outbox.push("u", p)
    s = Sink()
    assert await outbox.attach("u", s) == 4
    assert [(p.kind, p.message_id) for p in s.got] == [
        ("message", 1),
        ("message", 2),
        ("recall", 2),
        ("message", 3),
    ]
    assert s.got[0] == Push.from_json(msg(1).to_json() | {"push_id": s.got[0].push_id})
    assert await repo.count("u") == 0 and outbox.online("u")
    assert await outbox.push("u", msg(4)) == 1
    assert s.ids() == [1, 2, 2, 3, 4]
    # Delivered once: a second connection does not get the drained pushes again.
    t = Sink("t")
    assert await outbox.attach("u", t) == 0 and t.got == []
    assert await repo.count("v") == 0


async def test_sink_failing_mid_drain_leaves_the_rest_stored(
    outbox: Outbox, repo: OutboxRepo
) -> None:
    for i in range(1, 6):
        await outbox.push("u", msg(i))
    flaky = Sink("flaky", fail_after=2)
    assert await outbox.attach("u", flaky) == 2
    assert flaky.ids() == [1, 2]
    assert await stored_ids(repo, "u") == [3, 4, 5]
    assert not outbox.online("u")  # a dead connection does not join the live set
    assert await outbox.push("u", msg(6)) == 0
    s = Sink("next")
    assert await outbox.attach("u", s) == 4
    assert s.ids() == [3, 4, 5, 6]
    assert await repo.count("u") == 0


async def test_sink_dead_from_the_start_keeps_everything(outbox: Outbox, repo: OutboxRepo) -> None:
    for i in range(1, 4):
        await outbox.push("u", msg(i))
    dead = Sink("dead")
    dead.alive = False
    assert await outbox.attach("u", dead) == 0
    assert await stored_ids(repo, "u") == [1, 2, 3] and not outbox.online("u")


async def test_detach_goes_offline(outbox: Outbox, repo: OutboxRepo) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    outbox.detach("u", a)
    assert outbox.connections("u") == 1
    assert await outbox.push("u", msg(1)) == 1 and a.got == [] and b.ids() == [1]
    outbox.detach("u", b)
    outbox.detach("u", b)  # twice is harmless
    outbox.detach("nobody", b)
    assert not outbox.online("u")
    assert await outbox.push("u", msg(2)) == 0
    assert await stored_ids(repo, "u") == [2]


async def test_limit_drops_the_oldest(repo: OutboxRepo) -> None:
    small = Outbox(repo, limit_per_user=3)
    for i in range(1, 7):
        await small.push("u", msg(i))
    s = Sink()
    assert await small.attach("u", s) == 3
    assert s.ids() == [4, 5, 6]


# ----- races ------------------------------------------------------------------------------------------


async def test_pushes_racing_with_attach_are_not_lost_reordered_or_duplicated(
    outbox: Outbox, repo: OutboxRepo
) -> None:
    for i in range(10):
        await outbox.push("u", msg(i))
    s = Sink()
    before = [outbox.push("u", msg(i)) for i in range(10, 30)]
    after = [outbox.push("u", msg(i)) for i in range(30, 60)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*before, outbox.attach("u", s), *after)
    assert s.ids() == list(range(60))
    assert await repo.count("u") == 0


async def test_concurrent_live_pushes_keep_order_on_every_sink(outbox: Outbox) -> None:
    a, b = Sink("a"), Sink("b")
    await outbox.attach("u", a)
    await outbox.attach("u", b)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(outbox.push("u", msg(i)) for i in range(50)))
    assert a.ids() == list(range(50)) and b.ids() == list(range(50))


async def test_two_tabs_attaching_while_pushes_race(outbox: Outbox, repo: OutboxRepo) -> None:
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
    # The first tab gets everything once and in order; the second everything after it joined.
    assert a.ids() == list(range(25))
    assert b.ids() == list(range(15, 25))
    assert await repo.count("u") == 0


async def test_push_waits_for_a_slow_delivery_in_progress(outbox: Outbox) -> None:
    g = GatedSink()
    await outbox.attach("u", g)
    first = asyncio.create_task(outbox.push("u", msg(1)))
    async with asyncio.timeout(WAIT):
        await g.entered.wait()
    second = asyncio.create_task(outbox.push("u", msg(2)))
    await asyncio.sleep(0)
    assert not second.done() and g.got == []
    g.gate.set()
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(first, second) == [1, 1]
    assert g.ids() == [1, 2]


async def test_detach_while_a_push_waits_does_not_strand_the_push(
    outbox: Outbox, repo: OutboxRepo
) -> None:
    old = GatedSink("old")
    await outbox.attach("u", old)
    first = asyncio.create_task(outbox.push("u", msg(1)))
    async with asyncio.timeout(WAIT):
        await old.entered.wait()
    second = asyncio.create_task(outbox.push("u", msg(2)))  # queued behind the first
    await asyncio.sleep(0)
    old.gate.set()
    # The old tab closes right after the first push finished (its cleanup runs before the
    # waiting push resumes), and the user reconnects at once.
    async with asyncio.timeout(WAIT):
        # Spin one loop step at a time: the detach must land before the queued push resumes.
        while not first.done():  # noqa: ASYNC110
            await asyncio.sleep(0)
    outbox.detach("u", old)
    new = Sink("new")
    async with asyncio.timeout(WAIT):
        await outbox.attach("u", new)
        await second
    await outbox.push("u", msg(3))
    assert old.ids() == [1]
    assert new.ids() == [2, 3]
    assert await repo.count("u") == 0
