"""Each plugin's key-value store: JSON values under string keys, bounded per plugin.

A plugin keys things by user or conversation, so the store is bounded: a value's size
(`MAX_VALUE_BYTES`) and the keys one plugin may hold (`max_keys`); past them a write is
refused with KVFull rather than growing without end.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from storage.sql import Execute, Fetch, Unit, single, take_turns

if TYPE_CHECKING:
    from storage.db import Database
    from storage.postgres import PostgresDatabase

MAX_VALUE_BYTES = 64 * 1024
MAX_KEY_CHARS = 256


class KVFull(Exception):
    """The write would pass the plugin's bounds."""


class PluginKVRepo:
    def __init__(self, db: Database | PostgresDatabase, max_keys: int = 100_000) -> None:
        self._db = db
        self._max_keys = max_keys

    async def get(self, plugin: str, key: str, default: Any = None) -> Any:
        row = await self._db.fetchone(
            "SELECT value FROM plugin_kv WHERE plugin = ? AND key = ?", (plugin, key)
        )
        return json.loads(row[0]) if row is not None else default

    async def set(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (raises TypeError for anything else)."""
        if not key or len(key) > MAX_KEY_CHARS:
            raise KVFull(f"a key must have 1 to {MAX_KEY_CHARS} characters")
        data = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if len(data.encode()) > MAX_VALUE_BYTES:
            raise KVFull(f"a value may take at most {MAX_VALUE_BYTES} bytes as JSON")
        limit = int(self._max_keys)
        if await self._db.unit(_set(plugin, key, data, time.time(), limit)) != 1:
            raise KVFull(f"plugin {plugin} holds {limit} keys already")

    async def delete(self, plugin: str, key: str) -> bool:
        deleted = await self._db.unit(
            single(Execute("DELETE FROM plugin_kv WHERE plugin = ? AND key = ?", (plugin, key)))
        )
        return bool(deleted == 1)

    async def keys(self, plugin: str, prefix: str = "", limit: int = 1000) -> list[str]:
        """Keys of the plugin starting with ``prefix`` (case matters), sorted by code point, at
        most ``limit``."""
        if not prefix:
            rows = await self._db.unit(
                single(
                    Fetch(
                        "SELECT key FROM plugin_kv WHERE plugin = ? ORDER BY key LIMIT ?",
                        (plugin, int(limit)),
                        pg='SELECT key FROM plugin_kv WHERE plugin = ? ORDER BY key COLLATE "C" '
                        "LIMIT ?",
                    )
                )
            )
        else:
            # A range both databases take from the index, case-sensitive (unlike SQLite's LIKE):
            # the texts starting with the prefix sort from it up to the prefix followed by the
            # highest code point (all but those going on with that noncharacter itself). SQLite
            # compares code points; on PostgreSQL the "C" collation does, whatever the
            # database's own.
            rows = await self._db.unit(
                single(
                    Fetch(
                        "SELECT key FROM plugin_kv WHERE plugin = ? AND key >= ? AND key < ? "
                        "ORDER BY key LIMIT ?",
                        (plugin, prefix, prefix + "\U0010ffff", int(limit)),
                        pg='SELECT key FROM plugin_kv WHERE plugin = ? AND key COLLATE "C" >= ? '
                        'AND key COLLATE "C" < ? ORDER BY key COLLATE "C" LIMIT ?',
                    )
                )
            )
        return [str(r[0]) for r in rows]


# SQLite has one writer at a time, so counting and inserting in one statement keeps to the cap.
# PostgreSQL runs writers side by side, each counting before any of the others inserted: there
# the writes of one plugin take turns, on a lock held until the transaction ends (keyed by this
# table and the plugin's name). SQLite just selects the same parameters.
_KV_LOCKS = 0x6B76  # the advisory locks' first key: this table's


def _set(plugin: str, key: str, data: str, now: float, limit: int) -> Unit[int]:
    """Insert or update a key; a new key only while the plugin holds fewer than ``limit``."""
    yield take_turns(_KV_LOCKS, plugin)
    # An update of an existing key always fits; a new key only below the cap. One statement
    # (taking turns on PostgreSQL): concurrent writers cannot overshoot it.
    changed = yield Execute(
        "INSERT INTO plugin_kv (plugin, key, value, updated) "
        "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM plugin_kv WHERE plugin = ? "
        "AND key = ?) OR (SELECT COUNT(*) FROM plugin_kv WHERE plugin = ?) < ? "
        "ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, "
        "updated = excluded.updated",
        (plugin, key, data, now, plugin, key, plugin, limit),
    )
    return int(changed)
