"""Bot-framework links in a cluster: each link is dialed by exactly one node at a time.

Two nodes dialing one framework as the same account would each hear every action and each send
every event (a framework answers a message twice, or drops one of the two bots as a duplicate).
So a link runs only on the node holding the lease ``framework:<url>:<self_id>``
(bridge.cluster.leases): the holder dials and keeps renewing; the other nodes are standbys that
try to take the lease every TRY_EVERY seconds. A holder that stops releases the lease (a standby
links within about TRY_EVERY); one that dies loses it by expiry (LEASE_TTL). A holder whose lease
is lost (a renewal refused, or none confirmed while Redis is out of reach) hangs up at once,
before the lease can expire on the server, so its successor never dials while it still does.

A hub message to the bot that reaches a standby is relayed to the holder over the cluster bus
(`Relay`): the holder sends the event on its link and confirms, so the standby answers the hub
as if the link were its own. The framework's answers are actions on the holder's link; they are
stored in the shared database and pushed to the user's connections on every node
(bridge.cluster.pushes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from adapters.onebot.framework_link import FrameworkLink
from bridge.cluster import Bus, ClusterError, LeaseBusy, Leases
from bridge.tasks import TaskSet

if TYPE_CHECKING:
    from bridge.cluster.node import ClusterNode

log = structlog.get_logger(__name__)

# Seconds a lease lasts without renewal (renewed every third of it): how long a dead node's link
# stays unclaimed. Short, since the framework hears nobody meanwhile; long enough that a Redis
# hiccup of a second or so does not move the link.
LEASE_TTL = 3.0
# How often a standby tries to take a lease nobody renews any more.
TRY_EVERY = LEASE_TTL / 2
# Stopping a holding: the link's close handshake (close_timeout 2 s) and the lease's release
# (one Redis call, 5 s at most).
STOP_TIMEOUT = 10.0
# A relayed event waits this much beyond the link's own send deadline for the holder's answer.
RELAY_SLACK = 5.0
CHANNEL = "frameworks:"  # + node id: where a node hears relayed events and their answers


def lease_name(link: FrameworkLink) -> str:
    # The URL without credentials (a token may ride in its query): the name is a Redis key and
    # appears in logs. Links that differ only in their token are one framework anyway.
    return f"framework:{link.name}:{link.self_id}"


class LinkOwner:
    """Runs one link while this node holds its lease; tracks who holds it otherwise."""

    def __init__(
        self,
        link: FrameworkLink,
        leases: Leases,
        on_change: Callable[[], None],
        *,
        ttl: float = LEASE_TTL,
        try_every: float = TRY_EVERY,
    ) -> None:
        self.link = link
        self.lease_name = lease_name(link)
        self._leases = leases
        self._on_change = on_change
        self.ttl = ttl
        self.try_every = try_every
        self.holding = False  # the link runs here, under the lease
        self.holder: str | None = None  # the holding node as last seen; None: nobody (or unknown)
        self.error = ""  # why the holder is unknown (Redis out of reach)
        self._stopping = asyncio.Event()
        self._tasks = TaskSet(f"onebot-link-owner {link.name}")
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._runner is None:
            self._runner = self._tasks.spawn(
                self._run(), name=f"onebot-link-owner {self.link.name}"
            )

    async def close(self) -> None:
        """Hang up and release the lease (a standby takes over within TRY_EVERY)."""
        self._stopping.set()
        if self._runner is not None:
            # Let the holding end in order (link down, then lease released) ...
            await asyncio.wait([self._runner], timeout=STOP_TIMEOUT)
        # ... and cut it short if Redis does not answer: the lease then expires by itself.
        await self._tasks.cancel_all()
        self._runner = None
        await self.link.close()

    def _seen(self, holder: str | None, error: str = "") -> None:
        changed = (holder, error) != (self.holder, self.error)
        self.holder, self.error = holder, error
        if changed:
            self._on_change()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._hold_once()
            if self._stopping.is_set():
                return
            try:
                async with asyncio.timeout(self.try_every):
                    await self._stopping.wait()
            except TimeoutError:
                pass  # time for the next try

    async def _hold_once(self) -> None:
        """Take the lease and run the link until the lease is lost or the owner stops; or note
        who holds it instead."""
        try:
            async with self._leases.hold(self.lease_name, self.ttl) as kept:
                log.info("onebot.link_lease_taken", url=self.link.name, token=kept.token)
                self.holding = True
                self._seen(self._leases.node_id)
                try:
                    if not self._stopping.is_set():  # close() came while the lease was taken
                        self.link.start()
                        await self._until_lost_or_stopped(kept.lost)
                finally:
                    # Inside the lease's block: the link is down before the lease is released,
                    # so the next holder never dials while this one still does.
                    self.holding = False
                    lost = kept.lost.is_set()
                    await self.link.close(
                        "this node lost the link's lease" if lost else "bridge shutting down"
                    )
                    if lost:
                        log.warning("onebot.link_lease_lost", url=self.link.name)
                    self._seen(None)
        except LeaseBusy as e:
            self._seen(e.holder[0] if e.holder else None)
        except ClusterError as e:
            self._seen(None, f"Redis: {e}")

    async def _until_lost_or_stopped(self, lost: asyncio.Event) -> None:
        # No deadline of its own: the lease's renewal sets `lost` within its ttl if Redis stops
        # answering, and close() sets `_stopping`.
        waits = [
            self._tasks.spawn(lost.wait(), name=f"onebot-lease-lost {self.link.name}"),
            self._tasks.spawn(self._stopping.wait(), name=f"onebot-owner-stop {self.link.name}"),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


class Relay:
    """Hub events for a link held by another node go to that node over the bus; it sends them on
    its link and answers whether that worked.

    Pub/sub is at most once: a request or answer lost on the way (a bus reconnecting) ends in the
    sender's timeout, and the hub is told to send again, as when a local link drops mid-send.
    """

    def __init__(self, bus: Bus, leases: Leases, owners: dict[str, LinkOwner]) -> None:
        self._bus = bus
        self._leases = leases
        self._owners = owners  # by lease name
        self.node_id = leases.node_id
        self._pending: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._tasks = TaskSet("onebot-relay")
        self._subscribed = False

    async def start(self) -> None:
        try:
            await self._bus.subscribe(CHANNEL + self.node_id, self._arrived)
            self._subscribed = True
        except ClusterError as e:
            # Relayed events cannot reach this node until it is subscribed: keep trying.
            log.warning("onebot.relay_not_subscribed", error=str(e))
            self._tasks.spawn(self._subscribe_later(), name="onebot-relay-subscribe")

    async def _subscribe_later(self) -> None:
        while not self._subscribed:
            await asyncio.sleep(TRY_EVERY)
            try:
                await self._bus.subscribe(CHANNEL + self.node_id, self._arrived)
                self._subscribed = True
            except ClusterError as e:
                log.debug("onebot.relay_not_subscribed", error=str(e))

    async def close(self) -> None:
        await self._tasks.cancel_all()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result((False, "this node is shutting down"))
        if self._subscribed:
            await self._bus.unsubscribe(CHANNEL + self.node_id)
            self._subscribed = False

    async def forward(self, owner: LinkOwner, event: dict[str, Any]) -> tuple[bool, str]:
        """Send ``event`` on the link wherever it runs: (sent, why not)."""
        try:
            held = await self._leases.holder(owner.lease_name)
        except ClusterError as e:
            return False, f"Redis: {e}"
        if held is None:
            return False, "no node holds the link"
        node = held[0]
        if node == self.node_id:
            # Ours, but not running yet (just taken) or any more (just lost).
            return False, owner.link.last_error or "not linked yet"
        request = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        self._pending[request] = answer
        message = {"k": "event", "i": request, "o": self.node_id, "l": owner.lease_name}
        try:
            receivers = await self._bus.publish(
                CHANNEL + node, orjson.dumps({**message, "e": event})
            )
            if not receivers:
                return False, f"linked on node {node}, which does not answer"
            async with asyncio.timeout(owner.link.config.action_timeout + RELAY_SLACK):
                ok, why = await answer
        except ClusterError as e:
            return False, f"cannot reach node {node}: {e}"
        except TimeoutError:
            return False, f"linked on node {node}, which did not confirm the send in time"
        finally:
            self._pending.pop(request, None)
        return ok, "" if ok else f"linked on node {node}: {why}"

    def _arrived(self, payload: bytes) -> None:
        # Synchronous: the bus reader (every node's pushes too) must never wait on a framework.
        try:
            message = orjson.loads(payload)
            kind, request = message["k"], str(message["i"])
        except (ValueError, KeyError, TypeError):
            log.warning("onebot.relay_unreadable", size=len(payload))
            return
        if kind == "ack":
            answer = self._pending.get(request)
            if answer is not None and not answer.done():
                answer.set_result((bool(message.get("ok")), str(message.get("w", ""))))
        elif kind == "event":
            # Tasks start in the order spawned and a send is queued on the socket before its
            # first wait: relayed events keep the order they were published in.
            self._tasks.spawn(self._send(message), name="onebot-relay-send")

    async def _send(self, message: dict[str, Any]) -> None:
        owner = self._owners.get(str(message.get("l")))
        event = message.get("e")
        if owner is None or not isinstance(event, dict):
            ok, why = False, "no such link here"
        elif not owner.holding:
            ok, why = False, "the link moved to another node"
        else:
            ok = await owner.link.send_event(dict(event, self_id=owner.link.self_id))
            why = "" if ok else owner.link.last_error or "not connected to the framework"
        reply = {"k": "ack", "i": message["i"], "ok": ok, "w": why}
        try:
            await self._bus.publish(CHANNEL + str(message.get("o")), orjson.dumps(reply))
        except ClusterError as e:
            # The sender times out and tells the hub to send again.
            log.warning("onebot.relay_ack_lost", error=str(e))


class ClusterLinks:
    """The links of one FrameworkTarget in a cluster: an owner per link and the relay."""

    def __init__(
        self, cluster: ClusterNode, links: list[FrameworkLink], on_change: Callable[[], None]
    ) -> None:
        self.node_id = cluster.node_id
        self._leases = leases = Leases(cluster.redis, cluster.node_id, prefix=cluster.config.prefix)
        self._owners = {id(link): LinkOwner(link, leases, on_change) for link in links}
        by_name = {o.lease_name: o for o in self._owners.values()}
        self.relay = Relay(cluster.bus, leases, by_name)

    def owner(self, link: FrameworkLink) -> LinkOwner:
        return self._owners[id(link)]

    async def start(self) -> None:
        # Subscribed first: a node is reachable for relayed events before it can hold a link.
        await self.relay.start()
        for owner in self._owners.values():
            owner.start()

    async def close(self) -> None:
        await asyncio.gather(*(owner.close() for owner in self._owners.values()))
        await self.relay.close()

    async def send(self, link: FrameworkLink, event: dict[str, Any]) -> tuple[bool, str]:
        owner = self.owner(link)
        if owner.holding:
            ok = await link.send_event(dict(event, self_id=link.self_id))
            return ok, "" if ok else link.last_error or "not connected to the framework"
        return await self.relay.forward(owner, event)

    def state(self, link: FrameworkLink) -> tuple[bool, str]:
        """A standby's view of a link for /readyz: (healthy, detail)."""
        owner = self.owner(link)
        if owner.holder:
            return True, f"linked on node {owner.holder}"
        why = owner.error or "the link's lease is free; a node takes it within seconds"
        return False, f"no node holds the link ({why})"

    async def available(self) -> bool:
        """Whether some link runs, here or on another node (read afresh from Redis where the
        last try saw nobody: a standby that just started has not looked yet)."""
        for owner in self._owners.values():
            if owner.holding and owner.link.connected:
                return True
            if owner.holder and owner.holder != self.node_id:
                return True
        for owner in self._owners.values():
            try:
                held = await self._leases.holder(owner.lease_name)
            except ClusterError:
                continue
            if held is not None and held[0] != self.node_id:
                return True
        return False
