"""The plugins' key-value store on both databases (a temp SQLite file, a real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from storage import Storage
from storage.plugin_kv import MAX_VALUE_BYTES, KVFull, PluginKVRepo
from tests.support.storage import (  # noqa: F401 - fixtures (both databases)
    backend_fixture,
    location_fixture,
    st_fixture,
)


async def test_values_round_trip_per_plugin(st: Storage) -> None:
    kv = st.plugin_kv
    assert await kv.get("dice", "missing", "fallback") == "fallback"
    await kv.set("dice", "u1", {"rolls": [3, 5], "name": "Zoë"})
    await kv.set("other", "u1", 7)
    assert await kv.get("dice", "u1") == {"rolls": [3, 5], "name": "Zoë"}
    assert await kv.get("other", "u1") == 7
    await kv.set("dice", "u1", "replaced")
    assert await kv.get("dice", "u1") == "replaced"
    assert await kv.delete("dice", "u1") is True
    assert await kv.delete("dice", "u1") is False
    assert await kv.get("dice", "u1") is None


async def test_survives_reopening(location: str) -> None:
    s = await Storage.open(location)
    try:
        await s.plugin_kv.set("persona", "conv", "be brief")
    finally:
        await s.close()
    s = await Storage.open(location)
    try:
        assert await s.plugin_kv.get("persona", "conv") == "be brief"
    finally:
        await s.close()


async def test_keys_by_prefix_treat_wildcards_literally(st: Storage) -> None:
    kv = st.plugin_kv
    for key in ("a_1", "ab", "a%x", "a!y", "b"):
        await kv.set("p", key, 1)
    assert await kv.keys("p", "a_") == ["a_1"]
    assert await kv.keys("p", "a%") == ["a%x"]
    assert await kv.keys("p", "a!") == ["a!y"]
    assert await kv.keys("p") == sorted(["a_1", "ab", "a%x", "a!y", "b"])
    assert await kv.keys("p", limit=2) == sorted(["a_1", "ab", "a%x", "a!y", "b"])[:2]


async def test_keys_are_case_sensitive_and_sorted_by_code_point(st: Storage) -> None:
    kv = st.plugin_kv
    # Whatever the database's collation: upper case before lower, then beyond ASCII.
    keys = ["apple", "Apple", "APPLE", "apfel", "äpfel", "b", "a\U0010ffff", "a"]
    for key in keys:
        await kv.set("p", key, 1)
    assert await kv.keys("p") == sorted(keys)
    assert await kv.keys("p", "A") == ["APPLE", "Apple"]
    assert await kv.keys("p", "ap") == ["apfel", "apple"]
    # All that start with "a" but the one going on with U+10FFFF itself (the range's end).
    assert await kv.keys("p", "a") == ["a", "apfel", "apple"]
    assert await kv.keys("p", "ä") == ["äpfel"]
    assert await kv.keys("other") == []


async def test_bounds_refuse_rather_than_grow(st: Storage) -> None:
    kv = PluginKVRepo(st.db, max_keys=3)
    for i in range(3):
        await kv.set("p", f"k{i}", i)
    with pytest.raises(KVFull, match="3 keys"):
        await kv.set("p", "k3", 3)
    await kv.set("p", "k0", "an existing key may change")  # updates always fit
    await kv.set("q", "k0", "another plugin has its own room")
    with pytest.raises(KVFull, match="at most"):
        await kv.set("p", "k1", "x" * MAX_VALUE_BYTES)
    with pytest.raises(KVFull):
        await kv.set("p", "", 1)
    with pytest.raises(ValueError):
        await kv.set("p", "k1", float("nan"))
    assert await kv.get("p", "k1") == 1  # nothing refused was half written


async def test_concurrent_new_keys_never_pass_the_cap(st: Storage) -> None:
    kv = PluginKVRepo(st.db, max_keys=10)
    results = await asyncio.gather(
        *(kv.set("p", f"k{i}", i) for i in range(25)), return_exceptions=True
    )
    assert sum(1 for r in results if r is None) == 10
    assert all(isinstance(r, KVFull) for r in results if r is not None)
    assert len(await kv.keys("p")) == 10


async def test_concurrent_writes_of_two_plugins_each_keep_their_own_cap(st: Storage) -> None:
    kv = PluginKVRepo(st.db, max_keys=4)
    writes = [kv.set(p, f"k{i}", i) for i in range(10) for p in ("p", "q")]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert sum(1 for r in results if r is None) == 8
    assert len(await kv.keys("p")) == 4 and len(await kv.keys("q")) == 4
