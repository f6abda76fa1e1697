"""Persistent state behind small repositories, one per table family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.client_replies import ClientReplyRepo
from storage.conversations import ConversationRepo
from storage.db import Database
from storage.inflight import InflightRepo
from storage.messages import MessageRepo
from storage.outbox import OutboxRepo
from storage.plugin_kv import PluginKVRepo
from storage.qq import QQRepo
from storage.shares import ShareRepo
from storage.uploads import UploadRepo
from storage.users import UserRepo


@dataclass
class Storage:
    db: Any  # storage.db.Database (SQLite) or storage.postgres.PostgresDatabase
    users: UserRepo
    messages: MessageRepo
    outbox: OutboxRepo
    shares: ShareRepo
    conversations: ConversationRepo
    inflight: InflightRepo
    plugin_kv: PluginKVRepo
    qq: QQRepo
    client_replies: ClientReplyRepo
    uploads: UploadRepo

    @classmethod
    async def open(cls, location: str, *, exclusive: bool = False) -> Storage:
        """``location``: a SQLite file path, or a ``postgresql://`` URL. ``exclusive``: a server
        on its own claims the database (SQLite: one server per file, see `Database.open`;
        PostgreSQL: no other server on it); a cluster node opens PostgreSQL with
        ``exclusive=False`` and claims it shared with the other nodes (`PostgresDatabase`)."""
        db: Any
        if location.startswith(("postgresql://", "postgres://")):
            from storage.postgres import PostgresDatabase

            db = await PostgresDatabase.open(location, claim="alone" if exclusive else "shared")
        else:
            db = await Database.open(location, exclusive=exclusive)
        return cls(
            db=db,
            users=UserRepo(db),
            messages=MessageRepo(db),
            outbox=OutboxRepo(db),
            shares=ShareRepo(db),
            conversations=ConversationRepo(db),
            inflight=InflightRepo(db),
            plugin_kv=PluginKVRepo(db),
            qq=QQRepo(db),
            client_replies=ClientReplyRepo(db),
            uploads=UploadRepo(db),
        )

    def set_node(self, node: str) -> None:
        """The cluster node this process is: its replies in flight are recorded as its own, so
        a survivor settles them when it dies and a live node's are left alone."""
        self.messages.node = self.inflight.node = self.client_replies.node = node

    async def withdraw(self, message_id: int) -> None:
        """A stored message whose turn was refused (busy, shutting down): deleted, with
        nothing of it left in flight, so nothing is half-delivered (one commit)."""
        await self.messages.withdraw(message_id)

    async def close(self) -> None:
        await self.db.close()
