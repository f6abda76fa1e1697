"""After a crash: the replies a previous run left in flight.

A turn is recorded as in flight when its message is stored, and cleared once its reply is safely
in the outbox. Whatever is still recorded at start was cut short. Each is settled once: a reply
that was stored is pushed again, one the upstream finished is fetched, stored and pushed, and
anything else is answered with an explicit "interrupted" notice, so no user is left in silence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from bridge.engine import Engine, Turn
from bridge.errors import BridgeError
from bridge.models import ConversationKey, Segment
from bridge.outbox import Outbox, Push, send_from_contact
from bridge.router import Router
from storage import Storage
from storage.inflight import InflightRow

log = structlog.get_logger(__name__)

REPLY_CUT = (
    "The reply to this message was interrupted: the bridge stopped before it finished. "
    "Send the message again to get a reply."
)
COMMAND_NOT_RUN = (
    "This command may not have been carried out: the bridge stopped before it answered. "
    "Send it again if it is still needed."
)


class Recovery:
    def __init__(self, storage: Storage, router: Router, outbox: Outbox) -> None:
        self._storage = storage
        self._router = router
        self._outbox = outbox

    async def schedule(
        self,
        engine: Engine,
        *,
        attempts: int = 5,
        backoff: float = 2.0,
        nodes: set[str] | None = None,
    ) -> list[Turn]:
        """Queue one recovery turn per reply left in flight, in its own conversation, so the
        conversation's new turns wait behind it (one owner per conversation, also here).

        Each turn recovers a reply whose upstream finished (stored and pushed) or turns it into
        an explicit notice; it retries while the target is unreachable, then gives up on it.
        ``nodes``: only the replies these cluster nodes (gone) left; None: all of them."""
        turns = []
        inflight = self._storage.inflight
        for row in await inflight.all(nodes):
            key = ConversationKey(row.user_id, row.contact, row.thread)

            async def job(turn: Turn, row: InflightRow = row) -> None:
                try:
                    turn.admit()
                except BridgeError as e:
                    # Left in flight: the next start (or, in a cluster, the next look at the
                    # gone node's replies) settles it.
                    log.warning("recover.not_ordered", message_id=row.message_id, reason=e.reason)
                    return
                if nodes is None:
                    await self._settle(row, attempts, backoff)
                    return
                # A cluster: the record is claimed first, so two nodes never settle the same
                # one; cut short here (a recall, a stop), it goes back to the gone node's run.
                if not await inflight.claim(row.message_id, row.node, inflight.node):
                    return
                try:
                    await self._settle(row, attempts, backoff)
                except BaseException:
                    await asyncio.shield(inflight.claim(row.message_id, inflight.node, row.node))
                    raise

            turns.append(engine.submit(key, job, message_id=row.message_id))
        if turns:
            log.info("recover.scheduled", count=len(turns))
        return turns

    async def _settle(self, row: InflightRow, attempts: int, backoff: float) -> None:
        for attempt in range(attempts):
            try:
                await self._recover_one(row)
                break
            except BridgeError as e:
                log.warning("recover.retry", message_id=row.message_id, reason=e.reason)
                if attempt + 1 < attempts:
                    await asyncio.sleep(backoff * (attempt + 1))
        else:
            await self._interrupted(row.user_id, row.contact, row.thread, row.message_id)
        await self._storage.inflight.remove(row.message_id)

    async def _recover_one(self, row: InflightRow) -> None:
        msg = await self._storage.messages.get(row.message_id)
        if msg is None or msg.deleted:
            return
        if row.kind == "command":
            # It never went upstream: nothing to fetch, and what it did is unknown.
            await self._interrupted(
                row.user_id, row.contact, row.thread, msg.id, what=COMMAND_NOT_RUN
            )
            return
        key = ConversationKey(row.user_id, row.contact, row.thread)
        stored = [r for r in await self._storage.messages.replies_to(msg.id) if not r.deleted]
        if stored:
            # The reply was stored; its push may not have been. Push again (at least once).
            for r in stored:
                await self._push_message(key, r.id, r.content, r.time, "", row.stream_request_id)
            return
        try:
            target = self._router.contact_target(row.contact)
        except BridgeError:
            target = None
        recover = getattr(target, "recover", None)
        done = await recover(key) if recover is not None else None
        if done is None:
            await self._interrupted(row.user_id, row.contact, row.thread, msg.id)
            return
        segs = [Segment.text(done.text).to_json()] if done.text else []
        reply = await self._storage.messages.add(
            key.user_id, key.contact, "out", segs, reply_to=msg.id, thread=key.thread
        )
        if done.ref_system:
            if done.request_ref:
                await self._storage.messages.link(msg.id, done.ref_system, done.request_ref)
            if done.reply_ref:
                await self._storage.messages.link(reply.id, done.ref_system, done.reply_ref)
        await self._push_message(
            key, reply.id, segs, reply.time, done.sender_name, row.stream_request_id
        )
        log.info("recover.reply_recovered", message_id=msg.id, reply=reply.id)

    async def _interrupted(
        self, user_id: str, contact: str, thread: str, message_id: int, what: str = REPLY_CUT
    ) -> None:
        notice = await send_from_contact(
            self._storage.messages,
            self._outbox,
            user_id,
            contact,
            [Segment.text(what).to_json()],
            sender_name=contact,
            thread=thread,
            reply_to=message_id,
            interrupted=True,
            kind="notice",
        )
        log.info("recover.reply_interrupted", message_id=message_id, notice=notice)

    async def _push_message(
        self,
        key: ConversationKey,
        message_id: int,
        segments: list[dict[str, Any]],
        at: float,
        sender_name: str,
        stream_request_id: str | None,
    ) -> None:
        await self._outbox.push(
            key.user_id,
            Push(
                kind="message",
                contact=key.contact,
                message_id=message_id,
                segments=segments,
                time=int(at),
                sender_id=key.contact,
                sender_name=sender_name or key.contact,
                stream_request_id=stream_request_id,
            ),
        )
