"""What `Sessions` does for plugins: a command line answered as a turn of its conversation, a
message an input filter stopped, and a message from the contact (a command's answer).

Kept apart from `bridge.sessions`, which is about a message's trip to its target and back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.engine import Engine, Turn
from bridge.errors import BridgeError
from bridge.models import ConversationKey, Segment, UserRef
from bridge.outbox import Outbox, send_from_contact
from bridge.router import Router
from storage import Storage

if TYPE_CHECKING:
    from bridge.plugins import PluginHost


def with_text(segments: list[Segment], text: str) -> list[Segment]:
    """The message with its text (all text segments, filtered as one) replaced by ``text``,
    where the first text segment was; images and the rest keep their places."""
    out: list[Segment] = []
    placed = False
    for seg in segments:
        if seg.type != "text":
            out.append(seg)
        elif not placed:
            placed = True
            if text:
                out.append(Segment.text(text))
    return out


class PluginGlue:
    def __init__(self, storage: Storage, router: Router, outbox: Outbox, engine: Engine) -> None:
        self._storage = storage
        self._router = router
        self._outbox = outbox
        self._engine = engine

    async def command(
        self,
        plugins: PluginHost,
        user: UserRef,
        key: ConversationKey,
        segments: list[Segment],
        text: str,
    ) -> int:
        """A command line: stored like any message, answered by its handler as a turn of the
        conversation (so it comes after a reply still running), never sent upstream. Returns
        the stored message's id."""

        async def job(turn: Turn) -> None:
            try:
                try:
                    turn.admit()
                except BridgeError as e:
                    await self.say(key, f"This command was not run: {e.reason}")
                    return
                await plugins.run_command(key, user, text, self.say, row.id)
            finally:
                # Answered (or refused, or cancelled by a recall): no longer owed. A crash
                # before this leaves the record, and the next start tells the user.
                await self._storage.inflight.remove(row.id)

        content = [s.to_json() for s in segments]
        row = await self._storage.messages.add(
            key.user_id,
            key.contact,
            "in",
            content,
            thread=key.thread,
            inflight=True,
            inflight_kind="command",
            kind="command",
        )
        try:
            self._engine.submit(key, job, message_id=row.id)
        except BaseException:
            await self._storage.withdraw(row.id)
            raise
        return row.id

    async def settled(self, key: ConversationKey, segments: list[Segment]) -> int:
        """A message an input filter stopped: stored (the sender sees it acknowledged), not
        sent on. Returns its id."""
        content = [s.to_json() for s in segments]
        row = await self._storage.messages.add(
            key.user_id, key.contact, "in", content, thread=key.thread, kind="held"
        )
        return row.id

    async def say(self, key: ConversationKey, text: str) -> None:
        """A message from the conversation's contact to its user: stored, then pushed (a
        command's answer, a filter's notice)."""
        name = self._router.contact_name(UserRef(key.user_id), key.contact)
        await send_from_contact(
            self._storage.messages,
            self._outbox,
            key.user_id,
            key.contact,
            [Segment.text(text).to_json()],
            sender_name=name,
            thread=key.thread,
            kind="notice",
        )
