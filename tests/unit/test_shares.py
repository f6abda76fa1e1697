"""Share limits without sockets: the rate limiter, client keys, and the share repository's
expiry and cap on both databases."""

from __future__ import annotations

import asyncio

import pytest

from adapters.miochat.http_routes import RateLimiter, client_key
from storage import Storage
from storage.shares import ShareStorageFull
from tests.support.storage import (  # noqa: F401 - fixtures (both databases)
    backend_fixture,
    location_fixture,
    st_fixture,
)

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_sliding_window() -> None:
    clock = Clock()
    lim = RateLimiter(3, window=60.0, clock=clock)
    assert [lim.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.hit("a") == pytest.approx(60.0)
    assert lim.hit("b") == 0.0  # another key has its own budget
    clock.now += 30
    assert lim.hit("a") == pytest.approx(30.0)
    clock.now += 20
    assert lim.hit("a") == pytest.approx(10.0)
    clock.now += 10  # the first three are a window old: room for three more
    assert [lim.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.hit("a") == pytest.approx(60.0)


def test_limiter_table_is_bounded() -> None:
    clock = Clock()
    lim = RateLimiter(1, max_keys=100, clock=clock)
    for i in range(10_000):
        lim.hit(f"10.0.{i // 256}.{i % 256}")
    assert len(lim) == 100
    # The most recently seen are kept (still limited); the oldest were forgotten.
    assert lim.hit("10.0.39.15") > 0  # i = 9999
    assert lim.hit("10.0.0.0") == 0.0


def test_client_keys() -> None:
    assert client_key("127.0.0.1:5555") == "127.0.0.1"
    assert client_key("::1:5555") == "::/64"
    assert client_key("2001:db8::1:40000") == client_key("2001:db8::ffff:1:2") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1:40000") != client_key("2001:db8::1:40000")
    assert client_key("::ffff:10.1.2.3:80") == "10.1.2.3"
    assert client_key("[2001:db8::1]:443") == "2001:db8::/64"
    assert client_key("") == ""


async def test_expired_shares_are_not_served_and_go_on_write(st: Storage) -> None:
    shares = st.shares
    old = await shares.create({"name": "old"}, ttl=30 * DAY, now=1000.0)
    assert await shares.get(old, ttl=30 * DAY, now=1000.0 + 29 * DAY) == {"name": "old"}
    assert await shares.get(old, ttl=30 * DAY, now=1000.0 + 31 * DAY) is None
    assert await shares.count() == 1  # not served, but still there until a write
    new = await shares.create({"name": "new"}, ttl=30 * DAY, now=1000.0 + 31 * DAY)
    assert await shares.count() == 1
    assert await shares.get(new, ttl=30 * DAY, now=1000.0 + 31 * DAY) == {"name": "new"}
    assert await shares.purge_expired(30 * DAY, now=1000.0 + 62 * DAY) == 1
    assert await shares.count() == 0


async def test_cap_drops_expired_first_then_refuses(st: Storage) -> None:
    shares = st.shares
    kept = [await shares.create({"n": i}, ttl=DAY, max_total=3, now=float(i)) for i in range(3)]
    with pytest.raises(ShareStorageFull):
        await shares.create({"n": 3}, ttl=DAY, max_total=3, now=10.0)
    assert await shares.count() == 3
    # A day later the first has expired: it makes room, the other two stay.
    later = 0.5 + DAY
    fresh = await shares.create({"n": 4}, ttl=DAY, max_total=3, now=later)
    assert await shares.count() == 3
    assert await shares.get(kept[0], ttl=DAY, now=later) is None
    for sid in (*kept[1:], fresh):
        assert await shares.get(sid, ttl=DAY, now=later) is not None
    # Without limits the repository behaves as before.
    plain = await shares.create({"name": "plain"})
    assert await shares.get(plain) == {"name": "plain"}


async def test_concurrent_creates_never_pass_the_cap(st: Storage) -> None:
    # On PostgreSQL the writers run side by side: each must count what the others inserted.
    creates = [st.shares.create({"n": i}, ttl=DAY, max_total=5) for i in range(20)]
    results = await asyncio.gather(*creates, return_exceptions=True)
    made = [r for r in results if isinstance(r, str)]
    assert len(made) == 5 and len(set(made)) == 5
    assert all(isinstance(r, ShareStorageFull) for r in results if not isinstance(r, str))
    assert await st.shares.count() == 5
