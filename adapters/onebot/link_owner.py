"""Bot-framework links in a cluster: each link is dialed by exactly one node at a time.

Two nodes dialing one framework as the same account would each hear every action and each send
every event (a framework answers a message twice, or drops one of the two bots as a duplicate).
So a link runs only on the node holding the lease ``framework:<url>:<self_id>``
(bridge.cluster.leases): the holder dials and keeps renewing; the other nodes are standbys that
try to take the lease every TRY_EVERY seconds. A holder that stops releases the lease (a standby
links within about TRY_EVERY); one that dies loses it by expiry (LEASE_TTL). A holder whose lease
is lost (a renewal refused, or none confirmed while Redis is out of reach) hangs up at once,
before the lease can expire on the server, so its successor never dials while it still does.

A hub message to the bot that reaches a standby is relayed to the holder as a NodeCalls call
(bridge.cluster.calls, named FORWARD_CALL): the holder sends the event on its link and answers
whether that worked, so the standby answers the hub as if the link were its own. The holder
starts the calls' handlers in the order the requests arrived and each queues its event on the
socket before its first wait, so relayed events reach the framework in the order they were
relayed. A call lost on the bus ends in the caller's timeout, and the hub is told to send again,
as when a local link drops mid-send.

The framework's answers are actions on the holder's link, not replies to the relayed event: they
are stored in the shared database and pushed to the user's connections on every node
(bridge.cluster.pushes), so nothing flows back through this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from adapters.onebot.framework_link import FrameworkLink
from bridge.cluster import ClusterError, ClusterTimeout, LeaseBusy, Leases
from bridge.cluster.calls import CallFailed, NodeUnreachable
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
FORWARD_CALL = "onebot.framework_event"  # the NodeCalls handler that sends a relayed event


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
    ) -> None:
        self.link = link
        self.lease_name = lease_name(link)
        self._leases = leases
        self._on_change = on_change
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
                async with asyncio.timeout(TRY_EVERY):
                    await self._stopping.wait()
            except TimeoutError:
                pass  # time for the next try

    async def _hold_once(self) -> None:
        """Take the lease and run the link until the lease is lost or the owner stops; or note
        who holds it instead."""
        try:
            async with self._leases.hold(self.lease_name, LEASE_TTL) as kept:
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


class ClusterLinks:
    """The links of one FrameworkTarget in a cluster: an owner per link, and events for links
    held elsewhere relayed to their holders (FORWARD_CALL)."""

    def __init__(
        self, cluster: ClusterNode, links: list[FrameworkLink], on_change: Callable[[], None]
    ) -> None:
        self.node_id = cluster.node_id
        self._calls = cluster.calls
        self._leases = leases = Leases(cluster.redis, cluster.node_id, prefix=cluster.config.prefix)
        self._owners = {id(link): LinkOwner(link, leases, on_change) for link in links}
        self._by_lease = {o.lease_name: o for o in self._owners.values()}

    def owner(self, link: FrameworkLink) -> LinkOwner:
        return self._owners[id(link)]

    async def start(self) -> None:
        # Registered first: a node answers relayed events before it can hold a link.
        self._calls.register(FORWARD_CALL, self._serve)
        for owner in self._owners.values():
            owner.start()

    async def close(self) -> None:
        await asyncio.gather(*(owner.close() for owner in self._owners.values()))
        self._calls.unregister(FORWARD_CALL)

    async def send(self, link: FrameworkLink, event: dict[str, Any]) -> tuple[bool, str]:
        """Send ``event`` on the link wherever it runs: (sent, why not)."""
        owner = self.owner(link)
        if owner.holding:
            return await _send_here(owner, event)
        try:
            held = await self._leases.holder(owner.lease_name)
        except ClusterError as e:
            return False, f"Redis: {e}"
        if held is None:
            return False, "no node holds the link"
        node = held[0]
        if node == self.node_id:
            # Ours, but not running yet (just taken) or any more (just lost).
            return False, link.last_error or "not linked yet"
        request = {"link": owner.lease_name, "event": event}
        try:
            answer = await self._calls.call(
                node, FORWARD_CALL, request, link.config.action_timeout + RELAY_SLACK
            )
        except NodeUnreachable:
            return False, f"linked on node {node}, which does not answer"
        except ClusterTimeout:
            return False, f"linked on node {node}, which did not confirm the send in time"
        except CallFailed as e:  # no handler there (yet), busy, or it raised
            return False, f"linked on node {node}: {e}"
        except ClusterError as e:  # Redis out of reach, this node closing
            return False, f"cannot reach node {node}: {e}"
        if not isinstance(answer, dict):
            return False, f"linked on node {node}: an unreadable answer"
        if answer.get("ok"):
            return True, ""
        return False, f"linked on node {node}: {answer.get('why') or 'not sent'}"

    async def _serve(self, request: Any) -> dict[str, Any]:
        """Another node's event for a link held here. No await before the send: handlers start
        in the order the calls arrived, and so their events go out in that order."""
        if not isinstance(request, dict):
            return {"ok": False, "why": "a malformed relayed event"}
        owner, event = self._by_lease.get(str(request.get("link"))), request.get("event")
        if owner is None or not isinstance(event, dict):
            return {"ok": False, "why": "no such link here"}
        if not owner.holding:
            return {"ok": False, "why": "the link moved to another node"}
        ok, why = await _send_here(owner, event)
        return {"ok": ok, "why": why}

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


async def _send_here(owner: LinkOwner, event: dict[str, Any]) -> tuple[bool, str]:
    # Each framework may know the account under its own self_id.
    link = owner.link
    ok = await link.send_event(dict(event, self_id=link.self_id))
    return ok, "" if ok else link.last_error or "not connected to the framework"
