"""QQ accounts in a cluster: which node each account is connected to, and its actions called
from any node (``QQEdge.call``) on the node that holds it.

Where an account is: one Redis key per account, ``<prefix>qq:account:<self_id>`` → node id,
with a PX expiry of ``node_ttl``. It is set when the account connects (the newest connection
wins, on whichever node), renewed every ``heartbeat`` by an owned task while the account stays
connected here, and deleted when it disconnects only if it still names this node (a connection
that moved to another node is never unlisted by the node it left). A node that dies stops
renewing, so its accounts' keys expire within ``node_ttl``, as its registry entry does.
Per-account keys rather than a list in the node's registry info: a lookup is one GET of the
account asked about (no listing and decoding of every node), a connection that moves is seen
at once (not a heartbeat later, nor as two nodes both claiming it), and removal is atomic per
account.

Calls: an action for an account connected here goes straight to its connection (no Redis on
that path). Otherwise the key says which node has it and the call goes there as a
NodeCalls request (bridge.cluster.calls); that node calls its connection and answers with the
result or the failure (ActionFailed with the implementation's retcode, timeout, gone), which
is raised here as if the connection were local. Connected nowhere: the error of a local
account that is not connected.

Pushes to QQ chats (replies, notices, recalls, scheduled messages) need none of this: they
are stored, announced to every node (bridge.cluster.pushes) and sent by the node whose edge
serves the account.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from adapters.onebot.qq_link import ActionFailed, QQLink
from bridge.cluster.calls import NodeUnreachable
from bridge.cluster.client import ClusterError, ClusterTimeout, call, millis
from bridge.errors import BridgeError, ErrorCode
from bridge.tasks import Chains, TaskSet

if TYPE_CHECKING:
    from bridge.cluster.node import ClusterNode

log = structlog.get_logger(__name__)

ACCOUNT_CALL = "qq.call"
# A routed call waits this much beyond the action's own deadline (two bus hops, a GET).
SLACK = 5.0
# Shutdown: the releases of the accounts the link just closed get this long to reach Redis.
CLOSE_WAIT = 2.0
REDIS_TIMEOUT = 2.0
MAX_WAIT = 300.0  # the longest a routed action may be given

# KEYS: the account's key. ARGV: node id, ttl ms. Sets it to this node; returns who had it.
_CLAIM = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""
# Renews the key if it is this node's (or gone: Redis lost it while the account stayed here);
# 0 when another node has the account now.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class QQCluster:
    def __init__(self, link: QQLink, cluster: ClusterNode) -> None:
        self._link = link
        self._redis = cluster.redis
        self._calls = cluster.calls
        self.node_id = cluster.node_id
        self._prefix = f"{cluster.config.prefix}qq:account:"
        self.ttl = cluster.config.node_ttl
        self.every = cluster.config.heartbeat
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._tasks = TaskSet("qq-cluster")
        # Claims and releases of one account in the order its connections came and went.
        self._changes = Chains(self._tasks)
        # Accounts connected here whose key names another node (told once per account).
        self._elsewhere: set[int] = set()

    def key(self, self_id: int) -> str:
        return f"{self._prefix}{self_id}"

    def start(self) -> None:
        self._calls.register(ACCOUNT_CALL, self._serve)
        self._tasks.spawn(self._renew_forever(), name="qq-cluster-renew")

    async def close(self) -> None:
        """After the link closed: its accounts' releases are let through (bounded), then the
        renewal stops. A release Redis did not take expires within node_ttl."""
        if self._changes.running:
            await asyncio.wait(list(self._changes.running), timeout=CLOSE_WAIT)
        await self._tasks.cancel_all()
        self._calls.unregister(ACCOUNT_CALL)

    # ----- where each account is ----------------------------------------------------------------

    def account_changed(self, self_id: int, up: bool) -> None:
        """The link's account went up or down here (QQEdge._on_account)."""
        work = self._claimed(self_id) if up else self._released(self_id)
        self._changes.run(self_id, work, name=f"qq-cluster-{'claim' if up else 'release'}")

    def _here(self, self_id: int) -> bool:
        account = self._link.accounts.get(self_id)
        return account is not None and account.connected

    async def _claimed(self, self_id: int) -> None:
        if not self._here(self_id):
            return  # gone again before its claim ran
        self._elsewhere.discard(self_id)
        try:
            old = await call(
                f"claim QQ account {self_id}",
                self._claim(keys=[self.key(self_id)], args=[self.node_id, millis(self.ttl)]),
                timeout=REDIS_TIMEOUT,
            )
        except ClusterError as e:
            # The renewal sets it once Redis answers again.
            log.warning("qq.cluster_claim_failed", account=self_id, error=str(e))
            return
        old = old.decode() if isinstance(old, bytes) else old
        if old and old != self.node_id:
            log.info("qq.account_moved", account=self_id, came_from=old, node=self.node_id)

    async def _released(self, self_id: int) -> None:
        if self._here(self_id):
            return  # a new connection replaced the old one here: still ours
        try:
            await call(
                f"release QQ account {self_id}",
                self._release(keys=[self.key(self_id)], args=[self.node_id]),
                timeout=REDIS_TIMEOUT,
            )
        except ClusterError as e:
            log.warning("qq.cluster_release_failed", account=self_id, error=str(e))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            for self_id in [a for a in list(self._link.accounts) if self._here(a)]:
                if self_id in self._changes:
                    continue  # its claim or release is under way
                try:
                    ours = await call(
                        f"renew QQ account {self_id}",
                        self._renew(
                            keys=[self.key(self_id)], args=[self.node_id, millis(self.ttl)]
                        ),
                        timeout=REDIS_TIMEOUT,
                    )
                except ClusterError as e:
                    log.debug("qq.cluster_renew_failed", account=self_id, error=str(e))
                    continue
                if not ours and self_id not in self._elsewhere:
                    # A newer connection of the account went to another node; this one is most
                    # likely half open and about to drop. Calls go to the newer one.
                    self._elsewhere.add(self_id)
                    log.warning("qq.account_elsewhere", account=self_id, node=self.node_id)
                elif ours:
                    self._elsewhere.discard(self_id)

    def moved(self, self_id: int) -> bool:
        """Whether a newer connection of the account, connected here too, is on another node:
        calls then go there, not to this one (most likely half open)."""
        return self_id in self._elsewhere

    async def where(self, self_id: int) -> str | None:
        """The node the account is connected to, None if none (ClusterError: Redis cannot say)."""
        node = await call(
            f"where is QQ account {self_id}", self._redis.get(self.key(self_id)), REDIS_TIMEOUT
        )
        return node.decode() if isinstance(node, bytes) else node

    # ----- calls ---------------------------------------------------------------------------------

    async def call(self, self_id: int, action: str, params: dict[str, Any], timeout: float) -> Any:
        """``action`` on the account's connection on whichever node has it (not this one: the
        edge calls a local connection itself). Raises as QQAccount.call does."""
        try:
            node = await self.where(self_id)
        except ClusterError as e:
            raise BridgeError(
                ErrorCode.UNAVAILABLE, f"cannot tell where QQ account {self_id} is connected: {e}"
            ) from None
        if node is None or node == self.node_id:
            raise BridgeError(ErrorCode.UNAVAILABLE, f"QQ account {self_id} is not connected")
        request = {"a": self_id, "x": action, "p": params, "t": timeout}
        try:
            answer = await self._calls.call(node, ACCOUNT_CALL, request, timeout + SLACK)
        except ClusterTimeout:
            raise BridgeError(
                ErrorCode.UPSTREAM_TIMEOUT,
                f"{action}: no answer from QQ account {self_id} on node {node}",
            ) from None
        except NodeUnreachable:
            raise BridgeError(
                ErrorCode.UNAVAILABLE,
                f"QQ account {self_id} is connected to node {node}, which does not answer",
            ) from None
        except ClusterError as e:
            raise BridgeError(
                ErrorCode.UNAVAILABLE, f"QQ account {self_id} on node {node}: {e}"
            ) from None
        if not isinstance(answer, dict):
            raise BridgeError(ErrorCode.UPSTREAM_ERROR, f"{action}: unreadable answer from {node}")
        if answer.get("ok"):
            return answer.get("d")
        reason = str(answer.get("r") or "failed")
        if "rc" in answer:
            raise ActionFailed(action, int(answer["rc"]), reason)
        try:
            code = ErrorCode(answer.get("c"))
        except ValueError:
            code = ErrorCode.UPSTREAM_ERROR
        raise BridgeError(code, reason)

    async def _serve(self, request: Any) -> dict[str, Any]:
        """Another node's call for an account connected here."""
        try:
            self_id, action = int(request["a"]), str(request["x"])
            params, timeout = request.get("p") or {}, float(request["t"])
        except (KeyError, TypeError, ValueError):
            return {"ok": False, "c": ErrorCode.INVALID_DATA, "r": "a malformed QQ call"}
        account = self._link.accounts.get(self_id)
        if account is None or not account.connected or not isinstance(params, dict):
            reason = f"QQ account {self_id} is not connected"
            return {"ok": False, "c": ErrorCode.UNAVAILABLE, "r": reason}
        try:
            data = await account.call(action, params, min(max(timeout, 0.1), MAX_WAIT))
        except ActionFailed as e:
            return {"ok": False, "c": e.code, "r": e.detail, "rc": e.retcode}
        except BridgeError as e:
            return {"ok": False, "c": e.code, "r": e.reason}
        return {"ok": True, "d": data}
