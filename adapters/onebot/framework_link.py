"""One reverse-WebSocket connection to a bot framework, as a OneBot v11 Universal client.

The bridge dials the framework (NoneBot, Koishi, Yunzai, AstrBot) and keeps dialing: exponential
backoff with jitter, never waiting longer than ``reconnect_max`` between attempts (so a framework
that comes back is relinked within it, however often it failed before), exactly one connection
per framework at a time.

The framework's action calls run concurrently (a slow one, say waiting on storage, does not hold
up the rest), one after another for actions addressed to the same user or group (their replies
keep their order), and at most ``max_in_flight`` at once: past that the link stops reading, and
the framework's own sends wait.

The bridge never calls actions on the framework (it is the implementation: the framework calls
it), so there are no pending requests to fail on a disconnect; every send has a deadline instead,
and a peer that stops reading is dropped and redialed rather than waited on forever.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from adapters.onebot import protocol as P
from bridge.config import FrameworkLink as LinkConfig
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

# How long work waits for the previous work with the same ordering key.
ORDER_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Job:
    """One action frame, parsed: ``run()`` answers it (None: nothing to answer). Jobs with the
    same ``key`` (the user or group the action is addressed to) run in arrival order; jobs
    without one, and jobs for different keys, run concurrently."""

    key: Hashable | None
    run: Callable[[], Awaitable[dict[str, Any] | None]]


# Parses one frame into a Job; pure and quick (the slow part is the Job's run).
ActionHandler = Callable[[str | bytes], Job]
# A connection that lasted this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_AFTER = 10.0
# Actions running at once per connection; past this the link stops reading until one ends.
MAX_IN_FLIGHT = 32
# Protocol-level pings find a framework whose host vanished (no FIN, no RST) long before TCP
# would; every framework's WebSocket server answers them without any code of its own.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
# Below websockets' write limit (32 KiB): such a frame into an empty buffer never waits to drain.
FAST_SEND_BYTES = 16 * 1024


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before redial number ``attempt`` (0-based): doubling from ``base`` up to
    ``cap``, less up to 20 % jitter so many bridges restarted together do not redial in lockstep.
    Never more than ``cap``: the cap is a promise (a framework back is relinked within it)."""
    delay = min(base * 2 ** min(attempt, 30), cap)
    return delay * uniform(0.8, 1.0)


def safe_url(url: str) -> str:
    """The URL without credentials, for logs and error texts (a token may ride in the query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class FrameworkLink:
    max_in_flight = MAX_IN_FLIGHT

    def __init__(
        self,
        config: LinkConfig,
        self_id: int,
        handle_action: ActionHandler,
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.self_id = self_id
        self.name = safe_url(config.url)
        self._prepare = handle_action
        self._on_change = on_change
        self._ws: ClientConnection | None = None
        self._tasks = TaskSet(f"onebot-link {self.name}")
        self._runner: asyncio.Task[None] | None = None
        self.connects = 0
        self.last_error = ""
        self.failures = 0  # consecutive failed or short-lived connections (the backoff step)
        self.retry_in = 0.0  # the wait before the current redial, seconds
        self._stuck = ""  # why this bridge cut the current connection itself, if it did
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def start(self) -> None:
        if self._runner is not None:
            return  # one runner, so never two connections to one framework
        self._closing = False
        self._runner = self._tasks.spawn(self._run(), name=f"onebot-link {self.name}")

    async def close(self, reason: str = "bridge shutting down") -> None:
        """Hang up and stop dialing. ``start`` may dial again afterwards: in a cluster the link
        stops when this node loses the framework's lease and starts when it gets it back."""
        self._closing = True  # the runner ends quietly instead of reporting the link down
        ws = self._ws
        self._set_ws(None)
        if ws is not None:
            # Bounded by close_timeout: a peer that never answers the close is cut off.
            await ws.close(1001, reason)
        await self._tasks.cancel_all()
        self._runner = None

    def _set_ws(self, ws: ClientConnection | None) -> None:
        if ws is self._ws:
            return
        self._ws = ws
        self._on_change()

    def _headers(self) -> dict[str, str]:
        headers = {
            "X-Self-ID": str(self.self_id),
            "X-Client-Role": "Universal",
            "User-Agent": "MomoBridge/OneBot v11",
        }
        # Only with a token: some frameworks treat an empty "Bearer " as a wrong token.
        if self.config.access_token:
            headers["Authorization"] = f"Bearer {self.config.access_token}"
        return headers

    @property
    def backoff_cap(self) -> float:
        return min(self.config.max_reconnect_interval, self.config.reconnect_max)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            opened = False
            self._stuck = ""
            try:
                async with connect(
                    self.config.url,
                    additional_headers=self._headers(),
                    open_timeout=self.config.connect_timeout,
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_TIMEOUT,
                    max_size=16 << 20,
                    close_timeout=2,
                ) as ws:
                    opened = True
                    self.connects += 1
                    log.info("onebot.link_connected", url=self.name, connects=self.connects)
                    await self._serve(ws)
                    reason = f" {ws.close_reason}" if ws.close_reason else ""
                    self.last_error = self._stuck or f"connection closed ({ws.close_code}{reason})"
            except InvalidStatus as e:
                status = e.response.status_code
                why = "wrong or missing access_token" if status in (401, 403) else "refused"
                self.last_error = f"handshake rejected with HTTP {status} ({why})"
            except TimeoutError:
                self.last_error = (
                    f"TimeoutError: no handshake answer within {self.config.connect_timeout:g} s"
                    if not opened
                    else self._stuck or "TimeoutError"
                )
            except (OSError, WebSocketException) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            except Exception as e:
                # A bug must not end the link for good: log it and keep redialing.
                log.exception("onebot.link_crashed", url=self.name)
                self.last_error = f"internal error: {type(e).__name__}"
            finally:
                self._set_ws(None)
            if self._closing:
                return
            if loop.time() - started > HEALTHY_AFTER:
                self.failures = 0
            delay = backoff_delay(self.failures, self.config.reconnect_interval, self.backoff_cap)
            self.failures += 1
            self.retry_in = delay
            log.warning(
                "onebot.link_down",
                url=self.name,
                reason=self.last_error,
                attempt=self.failures,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def _send(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """Send with a deadline; a peer that stops reading is dropped (the link then redials)."""
        data = json.dumps(frame, ensure_ascii=False)
        transport = ws.transport
        if (
            len(data) < FAST_SEND_BYTES
            and transport is not None
            and not transport.get_write_buffer_size()
        ):
            # Nothing queued and a small frame: this send cannot block, so skip arming a timer.
            await ws.send(data)
            return
        try:
            async with asyncio.timeout(self.config.action_timeout):
                await ws.send(data)
        except TimeoutError:
            self._stuck = (
                f"the framework stopped reading (a send made no progress in "
                f"{self.config.action_timeout:g} s); dropped and redialing"
            )
            log.warning("onebot.link_stuck", url=self.name, timeout=self.config.action_timeout)
            # abort, not close: a close handshake would queue behind the same full buffer.
            if ws.transport is not None:
                ws.transport.abort()
            raise

    async def _serve(self, ws: ClientConnection) -> None:
        # lifecycle/connect must be the very first frame: NoneBot ignores everything before it,
        # so the link only counts as connected (and takes events) once it is out.
        await self._send(ws, P.lifecycle_connect(self.self_id))
        self._set_ws(ws)
        beat = self._tasks.spawn(self._heartbeat(ws), name=f"onebot-heartbeat {self.name}")
        slots = asyncio.Semaphore(self.max_in_flight)
        # The last job started for each key: the next one for that key waits for it.
        tails: dict[Hashable, asyncio.Task[None]] = {}
        try:
            async for raw in ws:
                # Bounded: with every slot taken, stop reading (the framework's sends back up).
                await slots.acquire()
                try:
                    job = self._prepare(raw)
                except Exception:
                    slots.release()
                    log.exception("onebot.action_unparsed", url=self.name)
                    continue
                before = tails.get(job.key) if job.key is not None else None
                task = self._tasks.spawn(
                    self._answer(ws, job, before, slots), name=f"onebot-action {self.name}"
                )
                if job.key is not None:
                    tails[job.key] = task
                    task.add_done_callback(lambda t, key=job.key: _forget(tails, key, t))
        except ConnectionClosed:
            pass
        finally:
            # Not connected any more from here on: no event may be sent into a dying socket.
            # Actions already running finish (a reply is stored and pushed even so); their
            # answers have nowhere to go.
            self._set_ws(None)
            beat.cancel()

    async def _answer(
        self,
        ws: ClientConnection,
        job: Job,
        before: asyncio.Task[None] | None,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            if before is not None:
                # Only its end matters here, not how it ended (it reports that itself).
                # Bounded: a frame stuck behind a wedged one goes ahead rather than wait forever.
                await asyncio.wait([before], timeout=ORDER_TIMEOUT)
            response = await job.run()
            if response is not None:
                await self._send(ws, response)
        except (ConnectionClosed, TimeoutError):
            pass  # the reader sees the same end and redials
        finally:
            slots.release()

    async def _heartbeat(self, ws: ClientConnection) -> None:
        interval = self.config.heartbeat_interval
        try:
            while True:
                await asyncio.sleep(interval)
                await self._send(ws, P.heartbeat_event(self.self_id, int(interval * 1000)))
        except (ConnectionClosed, TimeoutError):
            pass  # the reader sees the same end and redials

    async def send_event(self, event: dict[str, Any]) -> bool:
        """Send one event; False when not connected or the send failed (not retried: the event
        would arrive late and out of order, and a framework answers a late message anyway)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await self._send(ws, event)
        except (ConnectionClosed, TimeoutError):
            return False
        return True


def _forget(
    tails: dict[Hashable, asyncio.Task[None]], key: Hashable, task: asyncio.Task[None]
) -> None:
    # Only while it is still the newest for its key: a later job has taken its place otherwise.
    if tails.get(key) is task:
        del tails[key]
