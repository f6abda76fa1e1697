"""Web-client replies across cluster nodes: a tab that enters a chat on one node while a reply
of that chat runs on another gets the reply as it stands, then its live frames, as a tab on the
running node would.

The watching node (where the tab is): a stored reply of the chat that is `streaming` with a
`node` that is another node run is asked for from that node, with a NodeCalls call
(`miochat.watch_reply`, addressed by node id and refused unless the run matches). Before asking,
it registers the watch, so frames that arrive before the answer are buffered, not lost. The
answer is the reply's `sync` and the number of frame batches sent before it (`seq`), or "not
running" (it finished meanwhile: the stored row, read again, is what the tab gets). The tab
gets that `sync`, then the buffered batches after `seq`, then every live batch, for as long as
the contactor it last entered is the reply's. A refused or failed call leaves the tab with the
stored `sync`, as without a cluster.

The owner node (where the reply runs): answering the call registers the watching node on the
reply (`Running.remote`) and takes its `sync` and `seq` in the same synchronous step, so no
batch falls between. From then on each batch the reply emits, and finally an end marker, is
queued for each watching node and published on that node's relay channel
(``miochat.replies:<node id>``) by one writer task per node, one publish after the other:
a Redis publisher's messages reach a subscriber in order, and the bus calls handlers in arrival
order, so a reply's frames arrive in order. A channel of its own rather than NodeCalls: calls
run their handlers as separate tasks and answer each one (a round trip per batch, and no order
between two calls), while this is a one-way ordered stream; queued batches to one node go
together in one message. A reply without remote watchers never touches Redis.

Bounds: watching nodes per reply (MAX_REMOTE_NODES, a set of node ids), batches queued per
destination node (MAX_QUEUED: past it that node is dropped from every reply, its watches end
at their timeout), watches per node (MAX_WATCHES: past it a tab gets the stored `sync`),
batches buffered per watch while asking (MAX_BUFFERED: past it the watch is given up), and a
watch not heard from for WATCH_IDLE asks its reply's node again (an end marker lost on the
bus). A watch ends with its reply's end marker, or, when its reply's node run leaves the
cluster (stopped or died: no end marker comes), with the reply as stored (still `streaming`
there: failed, as the survivor settling it stores it). When this node's bus reconnects (batches may have been lost) every
watched tab is synced again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from adapters.miochat.client_replies import NODE_GONE_ERROR, ClientReplies, Tab, stored_sync
from bridge.cluster.client import ClusterError
from bridge.tasks import TaskSet
from storage.client_replies import StoredReply

if TYPE_CHECKING:
    from bridge.cluster.node import ClusterNode

log = structlog.get_logger(__name__)

CALL = "miochat.watch_reply"
CHANNEL = "miochat.replies:"  # + node id
CALL_TIMEOUT = 3.0
MAX_REMOTE_NODES = 64  # watching nodes per reply (each node counts once)
MAX_QUEUED = 2000  # frame batches waiting to be published to one node
MESSAGE_BYTES = 256 * 1024  # queued batches to one node go together up to this size
MAX_WATCHES = 1000  # replies of other nodes watched here at once
MAX_BUFFERED = 1000  # batches held for a watch while its sync is asked for
WATCH_IDLE = 300.0  # a watch not heard from for this long asks its reply's node again
SWEEP_EVERY = 60.0

# One batch on the wire: [user id, message id, token, seq, frames, end].
Batch = tuple[str, int, list[dict[str, Any]], bool]  # token, seq, frames, end


class _Remote:
    """The owner's side of a reply watched from other nodes (its `Running.remote`)."""

    def __init__(self, relay: ReplyRelay, user_id: str, message_id: str) -> None:
        self._relay = relay
        self.user_id = user_id
        self.message_id = message_id
        self.token = secrets.token_hex(6)  # tells this reply from a retry under its message id
        self.nodes: set[str] = set()
        self.seq = 0  # batches emitted since the first remote watcher came
        self.ended = False

    def send(self, frames: list[dict[str, Any]]) -> None:
        if self.ended or not self.nodes:
            return
        self.seq += 1
        self._relay._queue(self, frames, False)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.seq += 1
        self._relay._queue(self, [], True)
        self._relay._remotes.discard(self)


@dataclass(eq=False)
class _Sender:
    """Batches waiting to be published to one node, and the task publishing them."""

    queue: deque[bytes] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Watch:
    """A reply running on another node, watched for tabs here."""

    row: StoredReply  # as stored when last asked for (the fallback `sync`)
    token: str = ""
    tabs: dict[Tab, int] = field(default_factory=dict)  # synced tabs → seq of their sync
    asking: int = 0  # calls in flight
    buffer: deque[Batch] = field(default_factory=deque)  # batches heard while asking
    ended: bool = False
    heard: float = field(default_factory=time.monotonic)


class ReplyRelay:
    def __init__(self, replies: ClientReplies, node: ClusterNode) -> None:
        self._replies = replies
        self._storage = replies.hub.storage
        self._calls = node.calls
        self._bus = node.bus
        self.node_id = node.node_id
        self.identity = node.identity
        self._tasks = TaskSet("miochat-relay")
        self._closed = False
        # Owner side.
        self._remotes: set[_Remote] = set()
        self._senders: dict[str, _Sender] = {}
        self._head = b'{"o":' + orjson.dumps(self.identity) + b',"b":['
        # Watching side: (user id, message id) → watch; each tab's user and last contactor.
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._entered: dict[Tab, tuple[str, str]] = {}

    async def start(self) -> None:
        """Answer watch calls and hear batches (ClusterError if Redis does not confirm)."""
        self._calls.register(CALL, self._serve)
        try:
            await self._bus.subscribe(CHANNEL + self.node_id, self._arrived)
        except BaseException:
            self._calls.unregister(CALL)
            raise
        self._bus.on_reconnect(self._resync)
        self._tasks.spawn(self._sweep_forever(), name="miochat-relay-sweep")
        self._replies.relay = self

    async def close(self) -> None:
        self._closed = True
        if self._replies.relay is self:
            self._replies.relay = None
        self._calls.unregister(CALL)
        await self._tasks.cancel_all()
        await self._bus.unsubscribe(CHANNEL + self.node_id)
        self._senders.clear()
        self._watches.clear()
        self._entered.clear()

    @property
    def watching(self) -> int:
        return len(self._watches)

    # ----- the owner: registering watchers, publishing their batches ---------------------------

    async def _serve(self, payload: Any) -> dict[str, Any]:
        """A node asks to watch a reply running here. No await: the watcher is registered and
        the `sync` taken in one step, so every later batch goes to it and no earlier one."""
        run, node = str(payload["run"]), str(payload["node"])
        user_id, message_id = str(payload["user"]), str(payload["message"])
        if run != self.identity:
            return {"running": None, "why": f"this is run {self.identity}, not {run}"}
        reply = self._replies.running_reply(user_id, message_id)
        if reply is None or reply.superseded or self._closed:
            return {"running": False}
        remote = reply.remote
        if remote is None:
            remote = reply.remote = _Remote(self, user_id, message_id)
            self._remotes.add(remote)
        if not isinstance(remote, _Remote) or remote.ended:
            return {"running": False}
        if node not in remote.nodes and len(remote.nodes) >= MAX_REMOTE_NODES:
            return {"running": None, "why": f"{MAX_REMOTE_NODES} nodes watch this reply"}
        remote.nodes.add(node)
        return {"running": True, "token": remote.token, "seq": remote.seq, "sync": reply.log.sync()}

    def _queue(self, remote: _Remote, frames: list[dict[str, Any]], end: bool) -> None:
        if self._closed:
            return
        item = orjson.dumps(
            [remote.user_id, remote.message_id, remote.token, remote.seq, frames, end]
        )
        for node in list(remote.nodes):
            sender = self._senders.get(node)
            if sender is None:
                sender = self._senders[node] = _Sender()
            if len(sender.queue) >= MAX_QUEUED:
                self._lose(node, "too many frames waiting to be sent there")
                continue
            sender.queue.append(item)
            if sender.task is None:
                sender.task = self._tasks.spawn(
                    self._write(node, sender), name="miochat-relay-writer"
                )

    async def _write(self, node: str, sender: _Sender) -> None:
        """Publish ``node``'s batches in order, one message after the other."""
        try:
            queue = sender.queue
            while queue:
                parts: list[bytes] = []
                size = len(self._head) + 2
                while queue and (not parts or size + len(queue[0]) + 1 <= MESSAGE_BYTES):
                    part = queue.popleft()
                    parts.append(part)
                    size += len(part) + 1
                try:
                    heard = await self._bus.publish(
                        CHANNEL + node, self._head + b",".join(parts) + b"]}"
                    )
                except ClusterError as e:
                    self._lose(node, str(e))
                    return
                if not heard:
                    self._lose(node, "the node is gone")
                    return
        finally:
            sender.task = None
            if not sender.queue and self._senders.get(node) is sender:
                del self._senders[node]

    def _lose(self, node: str, why: str) -> None:
        """Stop sending to ``node``: what it watches here ends there at its timeout."""
        log.warning("miochat.relay_node_dropped", node=node, reason=why)
        for remote in self._remotes:
            remote.nodes.discard(node)
        sender = self._senders.pop(node, None)
        if sender is not None:
            sender.queue.clear()

    # ----- the watcher: asking, buffering, forwarding ------------------------------------------

    def elsewhere(self, row: StoredReply) -> bool:
        """A stored reply running on another node run (worth asking that node for)."""
        return row.status == "streaming" and "#" in row.node and row.node != self.identity

    def entered(self, tab: Tab, user_id: str, contactor_id: str) -> None:
        self._entered[tab] = (user_id, contactor_id)

    def leave(self, tab: Tab) -> None:
        self._entered.pop(tab, None)
        for watch in self._watches.values():
            watch.tabs.pop(tab, None)

    def _shows(self, tab: Tab, user_id: str, contactor_id: str) -> bool:
        return not tab.closed and self._entered.get(tab) == (user_id, contactor_id)

    async def ask(self, row: StoredReply) -> dict[str, Any] | None:
        """The owner's answer for ``row``; None when it could not be had."""
        node_id = row.node.rpartition("#")[0]
        payload = {
            "run": row.node,
            "node": self.node_id,
            "user": row.user_id,
            "message": row.message_id,
        }
        try:
            answer = await self._calls.call(node_id, CALL, payload, timeout=CALL_TIMEOUT)
        except ClusterError as e:
            log.info("miochat.relay_ask_failed", node=row.node, error=str(e))
            return None
        return answer if isinstance(answer, dict) else None

    async def watch(self, tab: Tab, user_id: str, row: StoredReply) -> None:
        """Send ``tab`` the reply of ``row`` as it stands on its node, then its live frames (or
        the stored `sync` when that node cannot say)."""
        key = (user_id, row.message_id)
        watch = self._watches.get(key)
        if watch is not None and watch.row.node != row.node:
            self._watches.pop(key, None)  # another run of it now
            watch = None
        if watch is None:
            if len(self._watches) >= MAX_WATCHES:
                self._sweep()
            if len(self._watches) >= MAX_WATCHES or self._closed:
                log.warning("miochat.relay_full", watches=len(self._watches))
                tab.send_frame(stored_sync(row))
                return
            watch = self._watches[key] = _Watch(row)
        watch.row = row
        watch.asking += 1
        watch.tabs.pop(tab, None)  # held back until its new `sync`
        try:
            answer = await self.ask(row)
            if answer is None or answer.get("running") is None:
                if answer is not None:
                    log.info("miochat.relay_refused", node=row.node, why=answer.get("why"))
                tab.send_frame(stored_sync(row))
                if row.status == "streaming" and self._watches.get(key) is watch:
                    # Its node may be going: kept (with no live frames), so the node's
                    # leaving ends it from the store for this tab too.
                    watch.tabs.setdefault(tab, -1)
            elif answer["running"]:
                self._synced(tab, key, watch, answer)
            else:
                # Finished meanwhile: stored (before its last frame went out) as it ended.
                now = await self._stored(user_id, row.contactor_id, row.message_id)
                if now is not None:  # None: the client confirmed it meanwhile
                    tab.send_frame(stored_sync(now))
        finally:
            watch.asking -= 1
            if not watch.asking:
                watch.buffer.clear()
                if (watch.ended or not watch.tabs) and self._watches.get(key) is watch:
                    del self._watches[key]

    def _synced(
        self, tab: Tab, key: tuple[str, str], watch: _Watch, answer: dict[str, Any]
    ) -> None:
        token, seq = str(answer["token"]), int(answer["seq"])
        user_id, _ = key
        if not self._shows(tab, user_id, watch.row.contactor_id):
            return  # the tab moved to another chat while it asked
        tab.send_frame(answer["sync"])
        if self._watches.get(key) is not watch:
            return  # given up meanwhile: the `sync` is all
        if token != watch.token:
            watch.token = token
            watch.tabs.clear()  # synced to an earlier reply under this message id
            watch.ended = False
        for b_token, b_seq, frames, end in watch.buffer:
            if b_token == token and b_seq > seq:
                for f in frames:
                    tab.send_frame(f)
                if end:
                    watch.ended = True
        if not watch.ended:
            watch.tabs[tab] = seq

    def _arrived(self, payload: bytes) -> None:
        # Synchronous (the bus reader): forwards at once, in arrival order.
        try:
            message = orjson.loads(payload)
            owner, batches = str(message["o"]), message["b"]
        except (ValueError, KeyError, TypeError):
            log.warning("miochat.relay_unreadable", size=len(payload))
            return
        for batch in batches:
            try:
                user_id, message_id, token, seq, frames, end = batch
                key = (str(user_id), str(message_id))
                self._heard(owner, key, (str(token), int(seq), list(frames), bool(end)))
            except (ValueError, TypeError):
                log.warning("miochat.relay_unreadable_batch")

    def _heard(self, owner: str, key: tuple[str, str], batch: Batch) -> None:
        watch = self._watches.get(key)
        if watch is None or watch.row.node != owner:
            return
        token, seq, frames, end = batch
        watch.heard = time.monotonic()
        if watch.asking:
            if len(watch.buffer) >= MAX_BUFFERED:
                log.warning("miochat.relay_buffer_full", message=key[1])
                self._watches.pop(key, None)
                return
            watch.buffer.append(batch)
        if token != watch.token:
            return  # for a tab still asking (buffered above), or an earlier reply's
        user_id, contactor_id = key[0], watch.row.contactor_id
        for tab, synced in list(watch.tabs.items()):
            if not self._shows(tab, user_id, contactor_id):
                del watch.tabs[tab]
            elif seq > synced:
                for f in frames:
                    tab.send_frame(f)
        if end:
            watch.ended = True
            watch.tabs.clear()
            if not watch.asking:
                self._watches.pop(key, None)

    async def _stored(self, user_id: str, contactor_id: str, message_id: str) -> StoredReply | None:
        """The reply as stored now; None once the client confirmed it."""
        rows = await self._storage.client_replies.of_contactor(user_id, contactor_id)
        return next((r for r in rows if r.message_id == message_id), None)

    # ----- upkeep ------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """End watches nothing was heard of for WATCH_IDLE (their tabs get the reply as stored),
        and forget closed tabs."""
        quiet = time.monotonic() - WATCH_IDLE
        for key, watch in list(self._watches.items()):
            for tab in [t for t in watch.tabs if t.closed]:
                del watch.tabs[tab]
            if watch.asking:
                continue
            if not watch.tabs:
                del self._watches[key]
            elif watch.heard < quiet:
                # Quiet for long (an end marker lost, say): its tabs ask its node again.
                watch.heard = time.monotonic()
                for tab in list(watch.tabs):
                    self._tasks.spawn(self.watch(tab, key[0], watch.row), name="miochat-relay-idle")
        for tab in [t for t in self._entered if t.closed]:
            del self._entered[tab]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self._sweep()

    async def owners_gone(self, runs: set[str]) -> None:
        """Node runs left the cluster (stopped or died): their watches end with the reply as
        stored, a reply still `streaming` on one of them as failed (a survivor settles it so),
        so no tab is left showing a reply that never ends."""
        for key, watch in list(self._watches.items()):
            if watch.row.node in runs:
                await self._end_from_store(key, watch, runs)

    async def _end_from_store(self, key: tuple[str, str], watch: _Watch, gone: set[str]) -> None:
        """End a watch whose end marker will not come: its tabs get the reply as stored (one
        now running on another node run, a retry: watched there instead)."""
        if self._watches.get(key) is watch:
            del self._watches[key]
        tabs = [t for t in watch.tabs if not t.closed]
        if not tabs:
            return
        user_id, message_id = key
        try:
            row = await self._stored(user_id, watch.row.contactor_id, message_id)
        except Exception:
            log.exception("miochat.relay_store_failed", message=message_id)
            return
        if row is None or key in self._watches:
            return  # confirmed by the client meanwhile, or the tab asked again since
        if row.status == "streaming":
            if row.node in gone:
                row.status, row.error = "failed", NODE_GONE_ERROR
            elif row.node != watch.row.node:
                for tab in tabs:
                    if self._shows(tab, user_id, row.contactor_id):
                        self._tasks.spawn(self.watch(tab, user_id, row), name="miochat-relay")
                return
        for tab in tabs:
            if self._shows(tab, user_id, row.contactor_id):
                tab.send_frame(stored_sync(row))

    async def _resync(self) -> None:
        """The bus reconnected: batches may have been lost, so every watched tab is synced
        again (as if it entered the chat once more)."""
        if self._closed:
            return
        for (user_id, _), watch in list(self._watches.items()):
            for tab in list(watch.tabs):
                self._tasks.spawn(self.watch(tab, user_id, watch.row), name="miochat-relay-resync")
