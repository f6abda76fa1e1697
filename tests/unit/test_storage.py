"""The storage repositories on both databases (tests/support/storage.py: a temp SQLite file and a
real PostgreSQL), and what is SQLite's own (WAL, its migrations, its file) on SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import types
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import storage.users as users_mod
from storage import Storage
from storage.client_replies import StoredReply
from storage.db import Database
from storage.messages import INT32_MAX
from storage.migrations import MIGRATIONS
from storage.users import MAPPED_FLOOR, UserRepo
from tests.support.storage import (  # noqa: F401 - fixtures
    INTEGRITY_ERRORS,
    backend_fixture,
    execute,
    location_fixture,
    scalar,
    schema_version,
    st_fixture,
)

SPAN = INT32_MAX - MAPPED_FLOOR


def hashed(user_id: str) -> int:
    """Where number_for starts probing for a non-numeric id."""
    return MAPPED_FLOOR + zlib.crc32(user_id.encode()) % SPAN


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file for the tests of SQLite itself; the folder does not exist yet."""
    return tmp_path / "sub" / "dir" / "test.db"


@pytest.fixture
async def lite(db_path: Path) -> AsyncIterator[Storage]:
    """A Storage on SQLite, for the tests of SQLite itself."""
    s = await Storage.open(str(db_path))
    yield s
    await s.close()


# ----- database and migrations: both --------------------------------------------------------------


async def test_reopen_keeps_data_and_does_not_remigrate(location: str) -> None:
    s = await Storage.open(location)
    try:
        assert await schema_version(s) == len(MIGRATIONS)
        await s.users.touch("alice", False)
        m = await s.messages.add("alice", "momo", "in", [{"type": "text", "data": {"text": "hi"}}])
    finally:
        await s.close()
    s = await Storage.open(location)  # would fail with "table exists" if migrated twice
    try:
        assert await schema_version(s) == len(MIGRATIONS)
        assert (await s.users.get("alice")) is not None
        assert await s.messages.get(m.id) == m
    finally:
        await s.close()


# ----- SQLite's own: its file, WAL, PRAGMAs, user_version, its migrations ---------------------------


async def test_open_creates_folder_migrates_and_uses_wal(lite: Storage, db_path: Path) -> None:
    st = lite
    assert await asyncio.to_thread(db_path.is_file)
    assert await scalar(st, "PRAGMA user_version") == len(MIGRATIONS)
    assert str(await scalar(st, "PRAGMA journal_mode")).lower() == "wal"
    assert await scalar(st, "PRAGMA foreign_keys") == 1
    tables = {r[0] for r in await st.db.fetch("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "users",
        "user_numbers",
        "messages",
        "message_refs",
        "outbox",
        "shares",
        "conversations",
    } <= tables


async def test_written_data_is_committed_to_the_file(db_path: Path) -> None:
    s = await Storage.open(str(db_path))
    try:
        await s.users.touch("alice", False)
    finally:
        await s.close()
    # Visible to a plain sqlite3 client: the data was committed, not just cached.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [("alice",)]


async def test_newer_database_is_refused_with_a_clear_message(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(RuntimeError) as ei:
        await Database.open(str(db_path))
    msg = str(ei.value)
    assert str(db_path) in msg
    assert f"schema version {len(MIGRATIONS) + 5}" in msg and "newer than this build" in msg
    # The refused database is left untouched.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 5
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_failed_migration_is_not_half_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(str(db_path))  # at the build's version now
    await db.close()
    broken = "CREATE TABLE extra (a INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr("storage.db.MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        await Database.open(str(db_path))
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchall() == []
    fixed = "CREATE TABLE extra (a INTEGER);"
    monkeypatch.setattr("storage.db.MIGRATIONS", [*MIGRATIONS, fixed])
    db = await Database.open(str(db_path))
    try:
        assert await scalar(db, "PRAGMA user_version") == len(MIGRATIONS) + 1
        assert await scalar(db, "SELECT count(*) FROM extra") == 0
    finally:
        await db.close()


def rebuild_messages(columns: list[str]) -> str:
    """A migration that changes `messages` the way SQLite has to: a new table, the rows copied,
    the old one dropped, the new one renamed. `message_refs` refers to it ON DELETE CASCADE."""
    cols = ", ".join(columns)
    rest = ", ".join(c for c in columns if c != "id")
    return (
        f"CREATE TABLE messages_new (id INTEGER PRIMARY KEY AUTOINCREMENT, {rest});\n"
        f"INSERT INTO messages_new ({cols}) SELECT {cols} FROM messages;\n"
        "DROP TABLE messages;\n"
        "ALTER TABLE messages_new RENAME TO messages;"
    )


async def test_a_table_rebuilding_migration_keeps_the_rows_referring_to_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await Storage.open(str(db_path))
    m = await s.messages.add("alice", "momo", "in", [{"type": "text", "data": {"text": "hi"}}])
    await execute(
        s, "INSERT INTO message_refs (message_id, system, external_id) VALUES (?, 'qq', 'x1')", m.id
    )
    columns = [r[1] for r in await s.db.fetch("PRAGMA table_info(messages)")]
    await s.close()

    monkeypatch.setattr("storage.db.MIGRATIONS", [*MIGRATIONS, rebuild_messages(columns)])
    db = await Database.open(str(db_path))
    try:
        assert await scalar(db, "PRAGMA user_version") == len(MIGRATIONS) + 1
        # With foreign keys on, the DROP would have deleted the reference by cascade.
        assert await scalar(db, "SELECT count(*) FROM message_refs") == 1
        assert await scalar(db, "SELECT count(*) FROM messages WHERE id = ?", m.id) == 1
        assert await scalar(db, "PRAGMA foreign_keys") == 1  # on again for the server
    finally:
        await db.close()


async def test_a_migration_that_breaks_a_reference_is_not_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(str(db_path))
    await db.close()
    dangling = (
        "CREATE TABLE extra (a INTEGER);\n"
        "INSERT INTO message_refs (message_id, system, external_id) VALUES (999, 'qq', 'gone');"
    )
    monkeypatch.setattr("storage.db.MIGRATIONS", [*MIGRATIONS, dangling])
    with pytest.raises(RuntimeError, match="row\\(s\\) referring to missing ones") as ei:
        await Database.open(str(db_path))
    assert f"schema version {len(MIGRATIONS) + 1}" in str(ei.value)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchall() == []
        assert conn.execute("SELECT count(*) FROM message_refs").fetchone()[0] == 0


# ----- users (both databases from here on) -------------------------------------------------------


async def test_users_touch_and_get(st: Storage) -> None:
    assert await st.users.get("alice") is None
    await st.users.touch("alice", False)
    first = await st.users.get("alice")
    assert first is not None
    assert first.id == "alice" and first.is_admin is False
    assert first.first_seen == first.last_seen
    await st.users.touch("alice", True)
    again = await st.users.get("alice")
    assert again is not None
    assert again.is_admin is True
    assert again.first_seen == first.first_seen
    assert again.last_seen >= first.last_seen
    await st.users.touch("alice", False)
    assert (await st.users.get("alice")).is_admin is False  # type: ignore[union-attr]
    assert await st.users.get("bob") is None


@pytest.mark.parametrize("user_id", ["1", "10086", "999999999", str(INT32_MAX)])
async def test_numeric_ids_are_their_own_number(st: Storage, user_id: str) -> None:
    assert await st.users.number_for(user_id) == int(user_id)
    # Recorded, so a mapped id can never be given the same number later.
    assert await st.users.user_for_number(int(user_id)) == user_id
    assert await scalar(st, "SELECT count(*) FROM user_numbers") == 1


@pytest.mark.parametrize("user_id", ["alice", "0", str(INT32_MAX + 1), "12345678901234", "-5"])
async def test_other_ids_are_mapped_into_the_high_range(st: Storage, user_id: str) -> None:
    n = await st.users.number_for(user_id)
    assert MAPPED_FLOOR <= n <= INT32_MAX
    assert n == hashed(user_id)
    assert await st.users.number_for(user_id) == n  # stable
    assert await st.users.user_for_number(n) == user_id


async def test_mapped_numbers_are_distinct_and_persist_across_reopen(location: str) -> None:
    names = [f"user-{i}" for i in range(50)]
    s = await Storage.open(location)
    try:
        numbers = {name: await s.users.number_for(name) for name in names}
    finally:
        await s.close()
    assert len(set(numbers.values())) == len(names)
    s = await Storage.open(location)
    try:
        for name in reversed(names):  # a different order must not change anything
            assert await s.users.number_for(name) == numbers[name]
            assert await s.users.user_for_number(numbers[name]) == name
    finally:
        await s.close()


async def test_collision_probes_to_the_next_free_number(st: Storage) -> None:
    start = hashed("bob")
    await execute(
        st,
        "INSERT INTO user_numbers (number, user_id) VALUES (?, ?), (?, ?)",
        *(start, "squatter-1", start + 1, "squatter-2"),
    )
    n = await st.users.number_for("bob")
    assert n == start + 2
    assert await st.users.user_for_number(start) == "squatter-1"
    assert await st.users.user_for_number(n) == "bob"


async def test_collision_probing_wraps_around_to_the_floor(
    st: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every id hashes to the top of the range; the top is taken, so probing wraps to the floor.
    monkeypatch.setattr(users_mod, "zlib", types.SimpleNamespace(crc32=lambda b: SPAN - 1))
    top = MAPPED_FLOOR + SPAN - 1
    assert await st.users.number_for("first") == top
    assert await st.users.number_for("second") == MAPPED_FLOOR
    assert await st.users.number_for("third") == MAPPED_FLOOR + 1


async def test_user_for_number_both_ways(st: Storage) -> None:
    assert await st.users.user_for_number(10086) is None  # nobody with that numeric id yet
    await st.users.touch("10086", False)
    assert await st.users.user_for_number(10086) == "10086"
    n = await st.users.number_for("carol")
    assert await st.users.user_for_number(n) == "carol"
    assert await st.users.user_for_number(n + 1) is None
    assert await st.users.user_for_number(0) is None
    assert await st.users.user_for_number(-1) is None


async def test_leading_zero_numeric_id_does_not_share_a_number(st: Storage) -> None:
    await st.users.touch("123", False)
    await st.users.touch("0123", False)
    a = await st.users.number_for("123")
    b = await st.users.number_for("0123")
    assert a != b
    assert await st.users.user_for_number(b) == "0123"


async def test_numeric_id_in_mapped_range_does_not_share_a_number(st: Storage) -> None:
    await st.users.touch("alice", False)
    n = await st.users.number_for("alice")
    await st.users.touch(str(n), False)
    assert await st.users.number_for(str(n)) != n
    assert await st.users.user_for_number(n) == "alice"


async def test_reserved_numbers_are_never_a_users_number(st: Storage) -> None:
    # The bridge's own identities (admin_qq, bot_qq): a hub user with such an id is mapped.
    st.users.reserve(10000, "10001")
    assert st.users.reserved == {10000, 10001}
    for user_id in ("10001", "10000"):
        await st.users.touch(user_id, False)
        n = await st.users.number_for(user_id)
        assert n == hashed(user_id) and n >= MAPPED_FLOOR
        assert await st.users.number_for(user_id) == n
        assert await st.users.user_for_number(n) == user_id
        # The reserved number names nobody, even though a user with that very id exists.
        assert await st.users.user_for_number(int(user_id)) is None
    assert await st.users.number_for("10002") == 10002  # other numeric ids are still their own


async def test_reserved_numbers_given_to_the_repo_at_construction(st: Storage) -> None:
    repo = UserRepo(st.db, reserved={"777", 778})
    assert repo.reserved == {777, 778}
    assert await repo.number_for("777") == hashed("777")
    assert await repo.number_for("779") == 779


async def test_a_number_given_out_before_it_was_reserved_is_taken_back(location: str) -> None:
    # An older bridge (or an admin_qq changed since) gave user "10001" the number 10001.
    s = await Storage.open(location)
    try:
        assert await s.users.number_for("10001") == 10001
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        s.users.reserve(10001)
        assert await s.users.user_for_number(10001) is None
        n = await s.users.number_for("10001")
        assert n == hashed("10001")
        assert await scalar(s.db, "SELECT count(*) FROM user_numbers WHERE number = 10001") == 0
        assert await s.users.user_for_number(n) == "10001"
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        s.users.reserve(10001)
        assert await s.users.number_for("10001") == n  # moved once, then stable
    finally:
        await s.close()


async def test_concurrent_first_numbers_agree_and_never_collide(st: Storage) -> None:
    # Two tabs of one new user send their first messages at once, many users at a time.
    st.users.reserve(10001)
    users = ["alice", "bob", "4242", "10001", "0123", "123", *(f"u{i}" for i in range(20))]
    calls = [u for u in users for _ in range(8)]
    got = await asyncio.gather(*(st.users.number_for(u) for u in calls))
    numbers: dict[str, int] = {}
    for user, n in zip(calls, got, strict=True):
        assert numbers.setdefault(user, n) == n, user
    assert len(set(numbers.values())) == len(users)
    assert 10001 not in numbers.values() and numbers["4242"] == 4242
    assert await scalar(st, "SELECT count(*) FROM user_numbers") == len(users)
    for user, n in numbers.items():
        assert await st.users.user_for_number(n) == user


async def test_concurrent_first_numbers_agree_across_connections(location: str) -> None:
    # Two connections to one database (two bridges: no shared lock): the INSERT ... ON
    # CONFLICT settles it (on PostgreSQL the two pools' transactions really run side by side).
    a = await Storage.open(location)
    b = await Storage.open(location)
    try:
        users = [f"user-{i}" for i in range(10)]
        got = await asyncio.gather(
            *(repo.number_for(u) for u in users for repo in (a.users, b.users))
        )
        pairs = list(zip(got[::2], got[1::2], strict=True))
        assert all(x == y for x, y in pairs)
        assert len({x for x, _ in pairs}) == len(users)
    finally:
        await a.close()
        await b.close()


# ----- messages -----------------------------------------------------------------------------------

TEXT = [{"type": "text", "data": {"text": "你好"}}]


async def test_message_ids_positive_increasing_unique(st: Storage) -> None:
    ids = []
    for i in range(20):
        row = await st.messages.add(f"u{i % 3}", "momo", "in" if i % 2 else "out", TEXT)
        ids.append(row.id)
    assert all(0 < i <= INT32_MAX for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_message_add_and_get_round_trip(st: Storage) -> None:
    q = await st.messages.add("alice", "momo", "in", TEXT, at=1700000000.5)
    a = await st.messages.add(
        "alice", "momo", "out", [{"type": "image", "data": {}}], reply_to=q.id
    )
    assert q.time == 1700000000.5 and q.reply_to is None and q.deleted is False
    assert q.direction == "in" and q.content == TEXT
    assert await st.messages.get(q.id) == q
    got = await st.messages.get(a.id)
    assert got == a and got.reply_to == q.id and got.direction == "out"
    assert await st.messages.get(a.id + 1000) is None


async def test_message_ids_never_reused_after_reopen(location: str) -> None:
    s = await Storage.open(location)
    try:
        first = await s.messages.add("u", "c", "in", TEXT)
        await execute(s, "DELETE FROM messages")
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        assert (await s.messages.add("u", "c", "in", TEXT)).id > first.id
    finally:
        await s.close()


async def test_message_id_space_exhaustion_is_refused(st: Storage) -> None:
    await st.messages.add("u", "c", "in", TEXT)
    # The last id given out is now the highest int32 (SQLite: AUTOINCREMENT's counter;
    # PostgreSQL: the identity column's sequence).
    await execute(
        st,
        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'messages'",
        INT32_MAX,
        pg="SELECT setval(pg_get_serial_sequence('messages', 'id'), ?)",
    )
    with pytest.raises(RuntimeError, match="int32"):
        await st.messages.add("u", "c", "in", TEXT)
    assert await scalar(st, "SELECT count(*) FROM messages") == 1  # rolled back


async def test_message_direction_is_checked(st: Storage) -> None:
    with pytest.raises(INTEGRITY_ERRORS):
        await st.messages.add("u", "c", "sideways", TEXT)  # type: ignore[arg-type]
    assert await scalar(st, "SELECT count(*) FROM messages") == 0
    assert (await st.messages.add("u", "c", "in", TEXT)).id > 0  # the database is still usable


async def test_replies_to(st: Storage) -> None:
    q = await st.messages.add("u", "c", "in", TEXT)
    other = await st.messages.add("u", "c", "in", TEXT)
    r1 = await st.messages.add("u", "c", "out", TEXT, reply_to=q.id)
    await st.messages.add("u", "c", "out", TEXT, reply_to=other.id)
    r2 = await st.messages.add("u", "c", "out", TEXT, reply_to=q.id)
    assert await st.messages.replies_to(q.id) == [r1, r2]
    assert await st.messages.replies_to(r1.id) == []


async def test_mark_deleted_is_idempotent(st: Storage) -> None:
    m = await st.messages.add("u", "c", "in", TEXT)
    keep = await st.messages.add("u", "c", "in", TEXT)
    assert await st.messages.mark_deleted(m.id) is True
    assert await st.messages.mark_deleted(m.id) is False
    assert await st.messages.mark_deleted(99999) is False
    assert (await st.messages.get(m.id)).deleted is True  # type: ignore[union-attr]
    assert (await st.messages.get(keep.id)).deleted is False  # type: ignore[union-attr]


async def test_external_links(st: Storage) -> None:
    m = await st.messages.add("u", "c", "in", TEXT)
    n = await st.messages.add("u", "c", "out", TEXT)
    assert await st.messages.external_ids(m.id, "momohub") == []
    assert await st.messages.by_external("momohub", "x1") is None
    await st.messages.link(m.id, "momohub", "x1")
    await st.messages.link(m.id, "momohub", "x2")
    await st.messages.link(m.id, "onebot", "x1")
    await st.messages.link(m.id, "momohub", "x1")  # same link again is harmless
    assert sorted(await st.messages.external_ids(m.id, "momohub")) == ["x1", "x2"]
    assert await st.messages.external_ids(m.id, "onebot") == ["x1"]
    assert await st.messages.external_ids(n.id, "momohub") == []
    assert await st.messages.by_external("momohub", "x2") == m
    assert await st.messages.by_external("onebot", "x1") == m
    assert await st.messages.by_external("other", "x1") is None
    # An external id names one hub message per system: relinking moves it.
    await st.messages.link(n.id, "momohub", "x2")
    assert await st.messages.by_external("momohub", "x2") == n
    assert await st.messages.external_ids(m.id, "momohub") == ["x1"]


# ----- outbox -------------------------------------------------------------------------------------


def f(i: int) -> dict[str, object]:
    return {"kind": "message", "message_id": i, "text": f"消息 {i}"}


def increasing(seqs: list[int]) -> bool:
    return seqs == sorted(set(seqs)) and all(s > 0 for s in seqs)


async def test_outbox_push_pending_in_order_and_per_user(st: Storage) -> None:
    seqs: dict[str, list[int]] = {"alice": [], "bob": []}
    for i in range(5):
        seq, dropped = await st.outbox.push("alice", f(i), limit=10)
        assert dropped == 0
        seqs["alice"].append(seq)
        seq, dropped = await st.outbox.push("bob", f(100 + i), limit=10)
        assert dropped == 0
        seqs["bob"].append(seq)
    # The seq push returns is the row's key: pending gives it back with the frame, in order.
    assert await st.outbox.pending("alice") == [(s, f(i)) for i, s in enumerate(seqs["alice"])]
    assert await st.outbox.pending("bob") == [(s, f(100 + i)) for i, s in enumerate(seqs["bob"])]
    assert increasing(seqs["alice"]) and increasing(seqs["bob"])
    assert not set(seqs["alice"]) & set(seqs["bob"])
    assert await st.outbox.count("alice") == 5 and await st.outbox.count("bob") == 5
    assert await st.outbox.pending("nobody") == [] and await st.outbox.count("nobody") == 0


async def test_outbox_trim_drops_oldest_beyond_limit(st: Storage) -> None:
    pushed = [await st.outbox.push("alice", f(i), limit=3) for i in range(6)]
    await st.outbox.push("bob", f(99), limit=3)
    assert [dropped for _, dropped in pushed] == [0, 0, 0, 1, 1, 1]
    kept = [(seq, f(i)) for i, (seq, _) in enumerate(pushed)][3:]
    assert await st.outbox.pending("alice") == kept  # the survivors keep their seqs
    assert await st.outbox.count("bob") == 1  # other users are not trimmed
    # A smaller limit later trims several at once.
    seq, dropped = await st.outbox.push("alice", f(6), limit=2)
    assert dropped == 2 and seq > kept[-1][0]
    assert await st.outbox.pending("alice") == [kept[-1], (seq, f(6))]
    seq, dropped = await st.outbox.push("alice", f(7), limit=1)
    assert dropped == 2 and await st.outbox.pending("alice") == [(seq, f(7))]


async def test_outbox_ack_up_to_seq_only_for_that_user(st: Storage) -> None:
    alice, bob = [], []
    for i in range(4):
        alice.append((await st.outbox.push("alice", f(i), limit=10))[0])
        bob.append((await st.outbox.push("bob", f(i), limit=10))[0])
    await st.outbox.ack("alice", alice[1])
    assert await st.outbox.pending("alice") == [(alice[2], f(2)), (alice[3], f(3))]
    assert await st.outbox.count("bob") == 4  # acking one user leaves others alone
    await st.outbox.ack("alice", alice[1])  # again: nothing more goes
    await st.outbox.ack("alice", 0)
    await st.outbox.ack("nobody", alice[-1] + bob[-1])
    assert await st.outbox.count("alice") == 2 and await st.outbox.count("bob") == 4
    await st.outbox.ack("alice", alice[-1])
    assert await st.outbox.count("alice") == 0
    assert [seq for seq, _ in await st.outbox.pending("bob")] == bob


async def test_outbox_seqs_are_never_reused(location: str) -> None:
    s = await Storage.open(location)
    try:
        first, _ = await s.outbox.push("alice", f(1), limit=5)
        await s.outbox.ack("alice", first)
        second, _ = await s.outbox.push("alice", f(2), limit=1)
        third, dropped = await s.outbox.push("alice", f(3), limit=1)
        assert dropped == 1 and first < second < third
        await s.outbox.ack("alice", third)
        assert await s.outbox.count("alice") == 0
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        # The table is empty, yet the next seq still follows the last one given out.
        fourth, _ = await s.outbox.push("alice", f(4), limit=5)
        assert fourth > third
    finally:
        await s.close()


async def test_outbox_concurrent_pushes_unique_seqs_and_exact_trim(st: Storage) -> None:
    users = ("alice", "bob")
    calls = [(u, i) for i in range(20) for u in users]
    results = await asyncio.gather(*(st.outbox.push(u, f(i), limit=5) for u, i in calls))
    assert len({seq for seq, _ in results}) == len(calls)
    for user in users:
        mine = [r for (u, _), r in zip(calls, results, strict=True) if u == user]
        assert sum(dropped for _, dropped in mine) == 15  # each row dropped exactly once
        newest = sorted(seq for seq, _ in mine)[-5:]
        assert [seq for seq, _ in await st.outbox.pending(user)] == newest
        assert await st.outbox.count(user) == 5


async def test_outbox_next_id_increasing_and_clock_seeded(st: Storage) -> None:
    import time

    start = int(time.time() * 1000)
    ids = [st.outbox.next_id() for _ in range(1000)]
    assert ids == sorted(set(ids)) and ids[0] >= start
    # A new repository (a restart) starts from the clock, not from 1.
    assert type(st.outbox)(st.db).next_id() >= start


async def test_outbox_survives_reopen(location: str) -> None:
    s = await Storage.open(location)
    try:
        first, _ = await s.outbox.push("alice", f(1), limit=5)
        second, _ = await s.outbox.push("alice", f(2), limit=5)
        await s.outbox.push("bob", f(3), limit=5)
        await s.outbox.ack("alice", first)
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        assert await s.outbox.pending("alice") == [(second, f(2))]
        assert await s.outbox.count("bob") == 1
    finally:
        await s.close()


# ----- shares and conversations -----------------------------------------------------------------


async def test_shares_create_and_get(st: Storage) -> None:
    card = {"name": "桃子", "bio": "a <cat>", "avatar": None, "nested": {"n": [1, 2]}}
    a = await st.shares.create(card)
    b = await st.shares.create({"name": "other"})
    assert a != b
    assert len(a) >= 12 and all(c.isalnum() or c in "-_" for c in a)  # URL-safe
    assert await st.shares.get(a) == card
    assert await st.shares.get(b) == {"name": "other"}
    assert await st.shares.get("missing") is None


async def test_conversations_get_set_forget(st: Storage) -> None:
    assert await st.conversations.get("u", "c", "default") is None
    await st.conversations.set("u", "c", "default", "chat-1")
    await st.conversations.set("u", "c", "work", "chat-2")
    await st.conversations.set("v", "c", "default", "chat-3")
    assert await st.conversations.get("u", "c", "default") == "chat-1"
    assert await st.conversations.get("u", "c", "work") == "chat-2"
    assert await st.conversations.get("v", "c", "default") == "chat-3"
    assert await st.conversations.get("u", "other", "default") is None
    await st.conversations.set("u", "c", "default", "chat-4")  # replaces
    assert await st.conversations.get("u", "c", "default") == "chat-4"
    await st.conversations.forget("u", "c", "default")
    assert await st.conversations.get("u", "c", "default") is None
    assert await st.conversations.get("u", "c", "work") == "chat-2"
    assert await st.conversations.get("v", "c", "default") == "chat-3"
    await st.conversations.forget("u", "c", "default")  # forgetting twice is fine


async def test_conversation_anchor_is_reset_with_a_new_chat_and_counts_skip_defaults(
    st: Storage,
) -> None:
    await st.conversations.set("u", "c", "default", "chat-1")
    await st.conversations.set_anchor("u", "c", "default", "m1", "2024-01-01T00:00:00")
    assert await st.conversations.anchor("u", "c", "default") == ("m1", "2024-01-01T00:00:00")
    await st.conversations.set("u", "c", "default", "chat-2")  # a new upstream chat: no anchor
    assert await st.conversations.anchor("u", "c", "default") is None
    await st.conversations.set_anchor("u", "none", "default", "m2", "x")  # no row: nothing
    assert await st.conversations.anchor("u", "none", "default") is None
    await st.conversations.set("u", "c", "work", "chat-3")
    await st.conversations.set("u", "model:gpt", "named", "mark")
    await st.conversations.set("v", "c", "other", "chat-4")
    assert await st.conversations.count("u") == 1  # "work" only
    assert await st.conversations.count("nobody") == 0


# ----- inflight -----------------------------------------------------------------------------------


async def test_inflight_add_replace_remove_and_list_in_order(st: Storage) -> None:
    q1 = await st.messages.add("u", "c", "in", TEXT, inflight=True, stream_request_id="s1")
    q2 = await st.messages.add(
        "v", "d", "in", TEXT, thread="t", inflight=True, inflight_kind="command"
    )
    rows = await st.inflight.all()
    assert [(r.message_id, r.user_id, r.contact, r.thread, r.kind) for r in rows] == [
        (q1.id, "u", "c", "default", "reply"),
        (q2.id, "v", "d", "t", "command"),
    ]
    assert rows[0].stream_request_id == "s1" and rows[1].stream_request_id is None
    assert rows[0].started == q1.time
    # Added again (a retry): the row is all new, and a reply again.
    await st.inflight.add(q2.id, "v", "d", "t2", "s2")
    again = (await st.inflight.all())[1]
    assert (again.thread, again.stream_request_id, again.kind) == ("t2", "s2", "reply")
    assert again.started >= rows[1].started
    await st.inflight.remove(q1.id)
    await st.inflight.remove(q1.id)  # twice is harmless
    assert [r.message_id for r in await st.inflight.all()] == [q2.id]


async def test_withdraw_deletes_the_message_and_its_inflight_record(st: Storage) -> None:
    q = await st.messages.add("u", "c", "in", TEXT, inflight=True)
    other = await st.messages.add("u", "c", "in", TEXT, inflight=True)
    await st.withdraw(q.id)
    assert (await st.messages.get(q.id)).deleted is True  # type: ignore[union-attr]
    assert [r.message_id for r in await st.inflight.all()] == [other.id]
    await st.withdraw(q.id)  # again: nothing more happens
    assert await st.messages.recent("u", "c", "default", 10) == [other]


# ----- messages: the console's reads ------------------------------------------------------------


async def test_console_reads_conversations_activity_and_latest_id(st: Storage) -> None:
    assert await st.messages.latest_id() == 0
    assert await st.messages.conversations(10, 1000) == []
    q = await st.messages.add("u", "c", "in", TEXT, at=1000.0)
    await st.messages.add("u", "c", "out", TEXT, at=1002.5, reply_to=q.id)
    gone = await st.messages.add("u", "c", "in", TEXT, at=1003.0)
    await st.messages.mark_deleted(gone.id)
    w = await st.messages.add("v", "d", "in", TEXT, at=1004.0, thread="work")
    assert await st.messages.latest_id() == w.id
    assert await st.messages.conversations(10, 1000) == [
        ("v", "d", "work", w.id, 1004.0, 1),
        ("u", "c", "default", gone.id, 1003.0, 2),
    ]
    assert await st.messages.conversations(1, 1000) == [("v", "d", "work", w.id, 1004.0, 1)]
    # Only the newest `scan` messages are read.
    assert await st.messages.conversations(10, 2) == [
        ("v", "d", "work", w.id, 1004.0, 1),
        ("u", "c", "default", gone.id, 1003.0, 0),
    ]
    assert sorted(await st.messages.activity(1001.0, 1000)) == [
        ("in", 1003.0, None),
        ("in", 1004.0, None),
        ("out", 1002.5, 1000.0),
    ]
    assert await st.messages.activity(1001.0, 1) == [("in", 1004.0, None)]
    assert await st.messages.refs(q.id) == []
    await st.messages.link(q.id, "qq", "9")
    assert await st.messages.refs(q.id) == ["9"]


# ----- users: lists -------------------------------------------------------------------------------


async def test_users_list_newest_first_and_admins(st: Storage) -> None:
    for name, admin in (("a", False), ("b", True), ("c", False)):
        await st.users.touch(name, admin)
        await asyncio.sleep(0.002)  # distinct last_seen
    assert [u.id for u in await st.users.list()] == ["c", "b", "a"]
    assert [u.id for u in await st.users.list(limit=2)] == ["c", "b"]
    assert await st.users.admins() == ["b"]


# ----- outbox: totals and prefixes --------------------------------------------------------------


async def test_outbox_total_and_users_with_prefix(st: Storage) -> None:
    for user in ("qq:1", "qq:2", "qq:2", "Qq:3", "qqx", "web:1", "qq:é"):
        await st.outbox.push(user, f(1), limit=10)
    assert await st.outbox.total() == 7
    assert sorted(await st.outbox.users_with_prefix("qq:")) == ["qq:1", "qq:2", "qq:é"]
    assert sorted(await st.outbox.users_with_prefix("qq")) == ["qq:1", "qq:2", "qq:é", "qqx"]
    assert await st.outbox.users_with_prefix("none") == []
    assert len(await st.outbox.users_with_prefix("qq:", limit=2)) == 2
    assert len(await st.outbox.users_with_prefix("")) == 6


# ----- qq -----------------------------------------------------------------------------------------


async def test_qq_links_find_ids_and_accounts(st: Storage) -> None:
    m = await st.messages.add("u", "c", "out", TEXT)
    n = await st.messages.add("u", "c", "in", TEXT)
    assert await st.qq.find(10001, 1) is None and await st.qq.accounts() == []
    await st.qq.link(10001, [1, 2, 3], m.id, outgoing=True)
    await st.qq.link(10001, [4], n.id, outgoing=False)
    await st.qq.link(20002, [1], n.id, outgoing=False)
    await st.qq.link(10001, [], m.id, outgoing=True)  # nothing to link
    # Big QQ ids (64-bit) round-trip.
    await st.qq.link(20002, [2**40 + 7], m.id, outgoing=True)
    assert await st.qq.find(10001, 2) == (m.id, True)
    assert await st.qq.find(10001, 4) == (n.id, False)
    assert await st.qq.find(20002, 1) == (n.id, False)
    assert await st.qq.find(20002, 2**40 + 7) == (m.id, True)
    assert await st.qq.find(30003, 1) is None
    assert sorted(await st.qq.qq_ids(10001, m.id)) == [1, 2, 3]
    assert await st.qq.qq_ids(10001, n.id) == []  # not sent by the bridge
    assert await st.qq.qq_ids(20002, m.id) == [2**40 + 7]
    assert sorted(await st.qq.accounts()) == [10001, 20002]
    # Linked again: the row is replaced.
    await st.qq.link(10001, [4], m.id, outgoing=True)
    assert await st.qq.find(10001, 4) == (m.id, True)


async def test_qq_progress_bindings_and_purge(st: Storage) -> None:
    import time

    assert await st.qq.progress("t1") is None
    await st.qq.save_progress("t1", 10, [5, 6], "abc")
    assert await st.qq.progress("t1") == (10, [5, 6], "abc")
    await st.qq.save_progress("t1", 20, [5, 6, 7], "abcd")  # replaces
    assert await st.qq.progress("t1") == (20, [5, 6, 7], "abcd")
    # Written before fingerprints: a bare list of ids.
    await execute(
        st, "INSERT INTO qq_progress (token, sent, qq_ids, time) VALUES (?, ?, ?, ?)",
        "old", 3, "[8, 9]", time.time(),
    )  # fmt: skip
    assert await st.qq.progress("old") == (3, [8, 9], "")
    await st.qq.drop_progress("t1")
    await st.qq.drop_progress("t1")
    assert await st.qq.progress("t1") is None

    assert await st.qq.binding("s1") is None
    await st.qq.bind("s1", "momo")
    await st.qq.bind("s1", "peach")
    await st.qq.bind("s2", "momo")
    assert await st.qq.binding("s1") == "peach" and await st.qq.binding("s2") == "momo"

    m = await st.messages.add("u", "c", "out", TEXT)
    await st.qq.link(1, [1, 2], m.id, outgoing=True)
    cut = time.time() + 1  # everything so far is older
    await execute(st, "UPDATE qq_messages SET time = ? WHERE qq_id = 2", cut + 100)
    assert await st.qq.purge(cut) == 1
    assert await st.qq.find(1, 1) is None and await st.qq.find(1, 2) == (m.id, True)
    assert await st.qq.progress("old") is None  # older progress goes too
    assert await st.qq.binding("s1") == "peach"  # bindings are kept


# ----- client replies -----------------------------------------------------------------------------


def reply(user: str, mid: str, contactor: str = "momo", **kw: object) -> StoredReply:
    fields: dict[str, object] = {
        "status": "streaming",
        "chunks": [{"text": "你"}],
        "error": None,
        "meta": {"model": "m"},
        "updated": 1000.0,
    }
    fields.update(kw)
    return StoredReply(user_id=user, message_id=mid, contactor_id=contactor, **fields)  # type: ignore[arg-type]


async def test_client_replies_save_replace_read_and_delete(st: Storage) -> None:
    cr = st.client_replies
    a = reply("u", "m1", updated=1000.0)
    b = reply("u", "m2", "peach", updated=1001.0)
    await cr.save(a, limit=10)
    await cr.save(b, limit=10)
    await cr.save(reply("v", "m1", updated=999.0), limit=10)
    assert await cr.of_contactor("u", "momo") == [a]
    assert await cr.contactors("u") == ["momo", "peach"]
    done = reply("u", "m1", status="completed", chunks=[{"text": "你好"}], updated=1002.0)
    await cr.save(done, limit=10)  # a retry or the end: replaces
    assert await cr.of_contactor("u", "momo") == [done]
    assert await cr.contactors("u") == ["peach", "momo"]
    assert await cr.delete("u", "m1") is True
    assert await cr.delete("u", "m1") is False
    assert await cr.of_contactor("u", "momo") == []
    assert [r.message_id for r in await cr.of_contactor("v", "momo")] == ["m1"]


async def test_client_replies_trim_expire_and_interrupt(st: Storage) -> None:
    cr = st.client_replies
    for i in range(5):
        await cr.save(reply("u", f"m{i}", updated=1000.0 + i), limit=3)
    await cr.save(reply("v", "x", updated=1.0), limit=3)
    assert [r.message_id for r in await cr.of_contactor("u", "momo")] == ["m2", "m3", "m4"]
    failed = reply("u", "m5", status="failed", error={"code": 1}, updated=1010.0)
    await cr.save(failed, limit=3)
    assert await cr.interrupted({"message": "restarted"}) == 3  # m3, m4 and v's x
    rows = {r.message_id: r for r in await cr.of_contactor("u", "momo")}
    assert sorted(rows) == ["m3", "m4", "m5"]
    assert rows["m3"].status == "failed" and rows["m3"].error == {"message": "restarted"}
    assert rows["m5"].error == {"code": 1}
    assert await cr.interrupted("again") == 0
    assert await cr.expire(500.0) == 0
    # `interrupted` stamps what it fails with the time: none is old now but v's, made so.
    await execute(st, "UPDATE client_replies SET updated = ? WHERE user_id = 'v'", 1.0)
    assert await cr.expire(500.0) == 1
    assert await cr.contactors("v") == []


async def test_client_replies_concurrent_saves_keep_to_the_limit(st: Storage) -> None:
    cr = st.client_replies
    saves = [cr.save(reply("u", f"m{i}", updated=1000.0 + i), limit=3) for i in range(20)]
    await asyncio.gather(*saves)
    assert [r.message_id for r in await cr.of_contactor("u", "momo")] == ["m17", "m18", "m19"]
