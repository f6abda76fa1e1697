"""Pushes across a cluster: a push stored by one node reaches the user's connections on every
node.

The push is in the shared outbox (PostgreSQL) before it is announced, so the bus only has to
say "offer this": each node hands it to its own connections of that user (bridge.outbox
`deliver`), or drops it when it has none. Pub/sub is at most once; a node that missed an
announcement (its bus reconnecting) loses nothing, the push waits in the store for the user's
next login. A push too big for the bus is announced by its seq and read from the store.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from bridge.cluster.bus import MAX_PAYLOAD, Bus
from bridge.cluster.client import ClusterError
from bridge.outbox import Outbox, Push

log = structlog.get_logger(__name__)

CHANNEL = "pushes"


class PushFanout:
    def __init__(self, bus: Bus, outbox: Outbox) -> None:
        self._bus = bus
        self._outbox = outbox

    async def start(self) -> None:
        await self._bus.subscribe(CHANNEL, self._arrived)
        self._outbox.fanout = self.announce

    def stop(self) -> None:
        self._outbox.fanout = None

    async def announce(self, user_id: str, push: Push) -> None:
        """Tell the other nodes about a stored push. A Redis out of reach is logged: the push
        is stored, the user's other tabs get it at their next login."""
        message: dict[str, Any] = {"o": self._bus.node_id, "u": user_id, "s": push.seq}
        payload = orjson.dumps({**message, "p": push.to_json()})
        if len(payload) > MAX_PAYLOAD:
            payload = orjson.dumps(message)
        try:
            await self._bus.publish(CHANNEL, payload)
        except ClusterError as e:
            log.warning("cluster.push_not_announced", user=user_id, seq=push.seq, error=str(e))

    async def _arrived(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            origin, user_id, seq = message["o"], message["u"], int(message["s"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.push_unreadable", size=len(payload))
            return
        if origin == self._bus.node_id or not isinstance(user_id, str):
            return
        if not self._outbox.expects(user_id):
            return  # nobody of this user here: the common case, decided without the store
        data = message.get("p")
        push = (
            Push.from_json(data, seq)
            if isinstance(data, dict)
            else await self._outbox.stored(user_id, seq)
        )
        if push is not None:
            await self._outbox.deliver(user_id, push)
