"""Recall: a stored message removed everywhere it lives (storage, the target upstream, every tab
of its user), and the turn it started stopped if it has not finished."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from bridge.engine import Engine, Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey, RecallRequest, Segment, UserRef
from bridge.outbox import Outbox, Push, Sink
from bridge.router import ContactTarget, Router
from storage import Storage
from storage.messages import MessageRow

log = structlog.get_logger(__name__)

# The upstream cleanup of a recalled turn that was cut short: how long a recall waits for it.
CLEANUP_WAIT = 30.0

# Told when a recall stopped a message's turn (message id, whether it never started): the
# reply's watcher is let go, and a turn that never started has its stream ended.
Stopped = Callable[[int, bool], Awaitable[None]]


class Recall:
    def __init__(
        self, storage: Storage, router: Router, outbox: Outbox, engine: Engine, stopped: Stopped
    ) -> None:
        self._storage = storage
        self._router = router
        self._outbox = outbox
        self._engine = engine
        self._stopped = stopped

    async def recall(
        self, user: UserRef, message_id: int, *, exclude_sink: Sink | None = None
    ) -> str:
        """Recall a message everywhere; recalling a user's message also recalls its replies and
        stops a reply still queued or being generated. Returns the contact it belonged to."""
        row = await self._storage.messages.get(message_id)
        if row is None or row.user_id != user.id or row.deleted:
            raise BridgeError(ErrorCode.NOT_FOUND, f"no message {message_id} to recall")
        # Claimed atomically: a recall of the same message from another tab gets NOT_FOUND.
        if not await self._storage.messages.mark_deleted(row.id):
            raise BridgeError(ErrorCode.NOT_FOUND, f"message {message_id} was already recalled")
        key = ConversationKey(row.user_id, row.contact, row.thread)
        try:
            target: ContactTarget | None = self._router.contact_target(row.contact)
        except BridgeError:
            target = None

        async def upstream(r: MessageRow, *, unresolved: bool = False) -> None:
            if target is None:
                return
            request = RecallRequest(
                user=user,
                conversation=key,
                message_id=r.id,
                segments=[Segment(s["type"], s.get("data", {})) for s in r.content],
                outgoing=r.direction == "out",
                refs=await self._storage.messages.refs(r.id),
                unresolved=unresolved,
            )
            try:
                await target.recall(request)
            except BridgeError as e:
                log.warning("recall.upstream_failed", message_id=r.id, reason=e.reason)

        rows = [row]
        settled = False  # the message's own upstream part was recalled with its stopped turn
        if row.direction == "in":
            settled = await self._stop_turn(key, row, upstream)
            for r in await self._storage.messages.replies_to(row.id):
                if await self._storage.messages.mark_deleted(r.id):
                    rows.append(r)
        for r in rows:
            if not (r is row and settled):
                await upstream(r)
            await self._outbox.push(
                user.id,
                Push(kind="recall", contact=r.contact, message_id=r.id),
                # The connection that asked knows about its own message; replies it may not.
                exclude=exclude_sink if r.id == message_id else None,
            )
        return row.contact

    async def _stop_turn(
        self,
        key: ConversationKey,
        row: MessageRow,
        upstream: Callable[..., Awaitable[None]],
    ) -> bool:
        """Stop the turn of a recalled message. A turn cut short while running never learned its
        upstream ids: the target finds them from the conversation's state, so that happens
        before the conversation's next turn changes it (a turn of its own, ahead of the queue).
        Returns whether that was done."""
        decided: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def cleanup(turn: Turn) -> None:
            async with asyncio.timeout(CLEANUP_WAIT):
                cut_short = await asyncio.shield(decided)
            if cut_short:
                await upstream(row, unresolved=True)

        running = self._engine.find(key, row.id)
        after = None
        if running is not None and running.state == "running":
            after = self._engine.submit_next(key, cleanup)
        try:
            outcome = await self._engine.recall(key, row.id)
        except BaseException:
            decided.set_result(False)  # the cleanup turn must not hold the conversation
            raise
        decided.set_result(outcome == "cancelled")
        if outcome != "finished":
            await self._storage.inflight.remove(row.id)
        await self._stopped(row.id, outcome == "dropped")
        if outcome != "cancelled":
            return False
        if after is None:  # stopped by then on its own: nothing overtakes a cleanup done now
            await upstream(row, unresolved=True)
            return True
        try:
            await after.wait(CLEANUP_WAIT)
        except TimeoutError:
            log.warning("recall.cleanup_slow", message_id=row.id)
        return True
