"""A QQ chat's pushes on a cluster node: an older push offered after a newer one was sent (one
the node missed and caught up on, or another node's that came late) is still sent, and only
what was sent is confirmed, so nothing is deleted unsent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from adapters.onebot.qq_replies import Chat, QQWriter
from bridge.config import QQConfig
from bridge.outbox import Outbox, Push
from bridge.tasks import TaskSet
from storage import Storage
from tests.support.hub_client import eventually

OWNER = "qq:1:g42"
WAIT = 10.0


class Account:
    """The QQ account's connection: records what was sent."""

    self_id = 1
    connected = True
    messages_out = 0

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.changed = asyncio.Event()

    async def call(self, action: str, params: dict[str, Any], timeout: float | None = None) -> Any:
        self.sent.append(params["message"][-1]["data"]["text"])
        self.changed.set()
        return {"message_id": len(self.sent)}

    async def until_sent(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.sent) < n:
                self.changed.clear()
                await self.changed.wait()


def push(text: str) -> Push:
    return Push(
        kind="message",
        contact="momo",
        message_id=0,
        segments=[{"type": "text", "data": {"text": text}}],
    )


@contextlib.asynccontextmanager
async def cluster_node(
    tmp_path: Path, confirm: Callable[..., Any] | None = None
) -> AsyncIterator[tuple[Storage, Outbox, QQWriter, Account]]:
    """A cluster node's outbox (announcing to nobody here) serving the QQ chat through its
    writer; ``confirm`` stands between the writer and the outbox when given."""
    st = await Storage.open(str(tmp_path / "db.sqlite"))
    tasks = TaskSet("test")
    try:
        outbox = Outbox(st.outbox, 100)

        async def announce(user_id: str, p: Push) -> None:
            return None

        outbox.fanout = announce
        account = Account()
        writer = QQWriter(
            OWNER,
            Chat("group", 42),
            QQConfig(segment_interval=0),
            lambda: account,
            st,
            confirm or outbox.confirm,
            tasks,
            lambda _: "momo",
        )
        await outbox.serve_family("qq:1:", lambda u: writer if u == OWNER else None)
        yield st, outbox, writer, account
    finally:
        await tasks.cancel_all()
        await st.close()


async def test_an_older_push_offered_late_is_sent_and_not_deleted_unsent(tmp_path: Path) -> None:
    async with cluster_node(tmp_path) as (st, outbox, writer, account):
        await outbox.push(OWNER, push("first, from this node"))
        await account.until_sent(1)
        # Another node stores a push for the chat; this node misses its announcement.
        missed = push("missed, from another node")
        missed.seq, _ = await st.outbox.push(OWNER, missed.to_json(), 100)
        # This node's next push (a later seq) is sent and confirmed.
        await outbox.push(OWNER, push("newer, from this node"))
        await account.until_sent(2)
        await eventually(lambda: writer.idle, WAIT, "the writer done")
        assert [s for s, _ in await st.outbox.pending(OWNER)], "the missed push is still kept"
        # The bus came back: the node offers what it missed.
        assert await outbox.catch_up() == 1
        await account.until_sent(3)
        assert account.sent[-1] == "missed, from another node"
        await eventually(lambda: writer.idle, WAIT, "the writer done")
        assert await st.outbox.pending(OWNER) == []
        # Offered again (a late announcement of it), it is not sent twice.
        assert writer.offer(missed)
        await outbox.push(OWNER, push("last"))
        await account.until_sent(4)
        assert account.sent == [
            "first, from this node",
            "newer, from this node",
            "missed, from another node",
            "last",
        ]


async def test_a_sent_push_whose_confirmation_failed_is_confirmed_when_offered_again(
    tmp_path: Path,
) -> None:
    failing = [True]
    outboxes: list[Outbox] = []

    async def confirm(user_id: str, seq: int, *, exact: bool = False) -> None:
        if failing[0]:
            failing[0] = False
            raise OSError("the database did not answer")
        await outboxes[0].confirm(user_id, seq, exact=exact)

    async with cluster_node(tmp_path, confirm) as (st, outbox, writer, account):
        outboxes.append(outbox)
        await outbox.push(OWNER, push("once"))
        await account.until_sent(1)
        await eventually(lambda: writer.idle, WAIT, "the writer done")
        [(seq, data)] = await st.outbox.pending(OWNER)  # sent, but not confirmed
        # Offered again (a catch-up, a reconnect): confirmed this time, not sent twice.
        assert writer.offer(Push.from_json(data, seq))
        await eventually(lambda: writer.idle, WAIT, "the writer done")
        assert await st.outbox.pending(OWNER) == []
        assert account.sent == ["once"]
