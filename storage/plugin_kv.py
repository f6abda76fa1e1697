"""Each plugin's key-value store: JSON values under string keys, bounded per plugin.

A plugin keys things by user or conversation, so the store is bounded: a value's size
(`MAX_VALUE_BYTES`) and the keys one plugin may hold (`max_keys`); past them a write is
refused with KVFull rather than growing without end.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from storage.db import Database

MAX_VALUE_BYTES = 64 * 1024
MAX_KEY_CHARS = 256


class KVFull(Exception):
    """The write would pass the plugin's bounds."""


class PluginKVRepo:
    def __init__(self, db: Database, max_keys: int = 100_000) -> None:
        self._db = db
        self._max_keys = max_keys

    async def get(self, plugin: str, key: str, default: Any = None) -> Any:
        async with self._db.conn.execute(
            "SELECT value FROM plugin_kv WHERE plugin = ? AND key = ?", (plugin, key)
        ) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row is not None else default

    async def set(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (raises TypeError for anything else)."""
        if not key or len(key) > MAX_KEY_CHARS:
            raise KVFull(f"a key must have 1 to {MAX_KEY_CHARS} characters")
        data = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if len(data.encode()) > MAX_VALUE_BYTES:
            raise KVFull(f"a value may take at most {MAX_VALUE_BYTES} bytes as JSON")
        limit = self._max_keys

        def write(conn: sqlite3.Connection) -> int:
            try:
                # An update of an existing key always fits; a new key only below the cap. One
                # statement: concurrent writers cannot overshoot it.
                cur = conn.execute(
                    "INSERT INTO plugin_kv (plugin, key, value, updated) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM plugin_kv WHERE plugin = ? "
                    "AND key = ?) OR (SELECT COUNT(*) FROM plugin_kv WHERE plugin = ?) < ? "
                    "ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, "
                    "updated = excluded.updated",
                    (plugin, key, data, time.time(), plugin, key, plugin, limit),
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return cur.rowcount

        if await self._db.run(write) != 1:
            raise KVFull(f"plugin {plugin} holds {limit} keys already")

    async def delete(self, plugin: str, key: str) -> bool:
        def write(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "DELETE FROM plugin_kv WHERE plugin = ? AND key = ?", (plugin, key)
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return cur.rowcount

        return await self._db.run(write) == 1

    async def keys(self, plugin: str, prefix: str = "", limit: int = 1000) -> list[str]:
        """Keys of the plugin starting with ``prefix``, sorted, at most ``limit``."""
        escaped = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        async with self._db.conn.execute(
            "SELECT key FROM plugin_kv WHERE plugin = ? AND key LIKE ? ESCAPE '!' "
            "ORDER BY key LIMIT ?",
            (plugin, escaped + "%", limit),
        ) as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]
