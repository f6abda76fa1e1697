"""Request/response between nodes over the cluster bus: `await calls.call(node, name, payload)`
runs the handler registered as `name` on `node` and returns what it returned.

Built on Bus pub/sub and nothing else (no sockets between nodes): each node listens on
``calls:<node_id>``; a request carries its id and the caller's node, the answer goes back on the
caller's channel. Pub/sub is at most once, so a request or answer lost on the way (a bus
reconnecting) ends in the caller's timeout; callers decide whether a retry is safe.

What a caller can rely on:

- the pending answer is registered before the request is published, so a fast answer is never
  missed; every wait has a deadline (ClusterTimeout), and close() fails the waits still pending;
- a node nobody listens for fails at once (`NodeUnreachable`: Redis delivered to no subscriber);
- a handler that is unknown there, raised, or did not finish within the caller's deadline fails
  the call with `CallFailed` (its message says which and why);
- payloads are JSON values of at most MAX_PAYLOAD bytes encoded (PayloadTooLarge otherwise);
  calls waiting at once are bounded (MAX_PENDING), and so are handlers running at once
  (MAX_RUNNING, refused as busy beyond).

Handlers run in owned tasks, never in the bus reader: one slow handler holds up nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from bridge.cluster.bus import MAX_PAYLOAD, Bus
from bridge.cluster.client import (
    ClusterError,
    ClusterTimeout,
    ClusterUnavailable,
    PayloadTooLarge,
    positive,
)
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

CHANNEL = "calls:"  # + node id
MAX_PENDING = 1000  # calls this node waits on at once
MAX_RUNNING = 256  # handlers running here at once for other nodes
MAX_TIMEOUT = 300.0  # the longest a handler may be given (a caller's larger timeout is cut)
DEFAULT_TIMEOUT = 10.0

CallHandler = Callable[[Any], Awaitable[Any]]


class CallFailed(ClusterError):
    """The other node answered, with a failure: no such handler there, or the handler raised or
    overran its deadline."""


class NodeUnreachable(ClusterUnavailable):
    """No node with that id listens for calls (gone, or not started)."""


class NodeCalls:
    """Calls to other nodes and the handlers this node answers with. `start()` subscribes this
    node's channel; `register()` may come before or after."""

    def __init__(self, bus: Bus, node_id: str) -> None:
        self._bus = bus
        self.node_id = node_id
        self._handlers: dict[str, CallHandler] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}
        # Request ids: unique per process run and node (a random part, so a restarted node
        # never takes an answer meant for its previous life).
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._tasks = TaskSet(f"cluster.calls:{node_id}")
        self._running = 0
        self._started = False
        self._closed = False

    def register(self, name: str, handler: CallHandler) -> None:
        """`await handler(payload)` answers calls named `name`; its return value (JSON) is the
        caller's result, an exception the caller's CallFailed."""
        if not name:
            raise ValueError("empty call name")
        if name in self._handlers:
            raise ValueError(f"a handler for {name!r} is already registered")
        self._handlers[name] = handler

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    async def start(self) -> None:
        """Listen for calls and answers (ClusterError if Redis does not confirm in time)."""
        if self._closed:
            raise RuntimeError("NodeCalls is closed")
        if not self._started:
            await self._bus.subscribe(CHANNEL + self.node_id, self._arrived)
            self._started = True

    async def close(self) -> None:
        """Stop listening, fail every call still waiting, cancel the handlers running."""
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClusterUnavailable("this node is shutting down"))
        self._pending.clear()
        await self._tasks.cancel_all()
        if self._started:
            self._started = False
            await self._bus.unsubscribe(CHANNEL + self.node_id)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- calling ------------------------------------------------------------------------------

    async def call(
        self, node_id: str, name: str, payload: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """The result of handler `name` on node `node_id` for `payload`. Raises ClusterTimeout
        (no answer within `timeout`), NodeUnreachable, CallFailed, PayloadTooLarge, or
        ClusterError (Redis out of reach, too many calls waiting, this node closing)."""
        timeout = min(positive("timeout", timeout), MAX_TIMEOUT)
        if self._closed or not self._started:
            raise ClusterUnavailable("calls between nodes are not running on this node")
        if len(self._pending) >= MAX_PENDING:
            raise ClusterError(f"{MAX_PENDING} calls to other nodes already waiting")
        request = f"{self._prefix}-{next(self._ids)}"
        frame = _encode(
            {"k": "req", "i": request, "o": self.node_id, "n": name, "p": payload, "t": timeout}
        )
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request] = answer  # before publishing: the answer may come at once
        try:
            async with asyncio.timeout(timeout):
                receivers = await self._bus.publish(CHANNEL + node_id, frame)
                if not receivers:
                    raise NodeUnreachable(f"node {node_id} does not listen for calls")
                return await answer
        except TimeoutError:
            raise ClusterTimeout(
                f"call {name!r} to node {node_id}: no answer within {timeout:g}s"
            ) from None
        finally:
            self._pending.pop(request, None)

    # -- answering ----------------------------------------------------------------------------

    def _arrived(self, payload: bytes) -> None:
        # Synchronous, never awaits: the bus reader carries every node's pushes too.
        try:
            message = orjson.loads(payload)
            kind, request = message["k"], str(message["i"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.call_unreadable", size=len(payload))
            return
        if kind == "res":
            future = self._pending.get(request)
            if future is None or future.done():
                return  # timed out meanwhile
            if message.get("ok"):
                future.set_result(message.get("r"))
            else:
                future.set_exception(CallFailed(str(message.get("e") or "the call failed")))
            return
        if kind != "req" or self._closed:
            return
        origin, name = str(message.get("o", "")), str(message.get("n", ""))
        if not origin:
            return
        handler = self._handlers.get(name)
        if handler is None:
            self._reply(origin, request, error=f"node {self.node_id} has no handler for {name!r}")
        elif self._running >= MAX_RUNNING:
            self._reply(origin, request, error=f"node {self.node_id} is busy")
        else:
            try:
                wait = min(positive("t", message.get("t", DEFAULT_TIMEOUT)), MAX_TIMEOUT)
            except (TypeError, ValueError):
                wait = DEFAULT_TIMEOUT
            self._running += 1
            self._tasks.spawn(
                self._run(origin, request, name, handler, message.get("p"), wait),
                name=f"cluster.call:{name}",
            )

    async def _run(
        self, origin: str, request: str, name: str, handler: CallHandler, payload: Any, wait: float
    ) -> None:
        try:
            try:
                async with asyncio.timeout(wait):
                    result = await handler(payload)
            except TimeoutError:
                await self._answer(origin, request, error=f"{name!r} took longer than {wait:g}s")
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("cluster.call_handler_failed", name=name, error=repr(e))
                await self._answer(
                    origin, request, error=f"{name!r} failed on node {self.node_id}: {e}"
                )
                return
            await self._answer(origin, request, result=result)
        finally:
            self._running -= 1

    def _reply(self, origin: str, request: str, *, error: str) -> None:
        self._tasks.spawn(self._answer(origin, request, error=error), name="cluster.call_refusal")

    async def _answer(
        self, origin: str, request: str, *, result: Any = None, error: str | None = None
    ) -> None:
        if error is None:
            try:
                frame = _encode({"k": "res", "i": request, "ok": True, "r": result})
            except (ClusterError, TypeError) as e:
                error = f"the answer cannot be sent: {e}"
        if error is not None:
            frame = orjson.dumps({"k": "res", "i": request, "ok": False, "e": error[:2000]})
        try:
            await self._bus.publish(CHANNEL + origin, frame)
        except ClusterError as e:
            # The caller times out.
            log.warning("cluster.call_answer_lost", origin=origin, error=str(e))


def _encode(message: dict[str, Any]) -> bytes:
    try:
        frame = orjson.dumps(message)
    except orjson.JSONEncodeError as e:
        raise TypeError(f"a call's payload must be JSON: {e}") from None
    if len(frame) > MAX_PAYLOAD:
        raise PayloadTooLarge(f"a call of {len(frame)} bytes is over the bus's {MAX_PAYLOAD}")
    return frame
