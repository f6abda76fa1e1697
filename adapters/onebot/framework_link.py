"""One reverse-WebSocket connection to a bot framework, as a OneBot v11 Universal client.

The bridge dials the framework (NoneBot, Koishi, Yunzai, AstrBot) and keeps dialing: capped
exponential backoff with jitter, exactly one connection per framework at a time.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from adapters.onebot import protocol as P
from bridge.config import FrameworkLink as LinkConfig
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

ActionHandler = Callable[[str | bytes], Awaitable[dict[str, Any] | None]]
# A connection that lasted this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_AFTER = 10.0


class FrameworkLink:
    def __init__(
        self,
        config: LinkConfig,
        self_id: int,
        handle_action: ActionHandler,
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.self_id = self_id
        self._handle_action = handle_action
        self._on_change = on_change
        self._ws: ClientConnection | None = None
        self._tasks = TaskSet(f"onebot-link {config.url}")
        self._runner: asyncio.Task[None] | None = None
        self.connects = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def start(self) -> None:
        self._runner = self._tasks.spawn(self._run(), name=f"onebot-link {self.config.url}")

    async def close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(1001, "bridge shutting down")
        await self._tasks.cancel_all()
        self._set_ws(None)

    def _set_ws(self, ws: ClientConnection | None) -> None:
        self._ws = ws
        self._on_change()

    def _headers(self) -> dict[str, str]:
        headers = {
            "X-Self-ID": str(self.self_id),
            "X-Client-Role": "Universal",
            "User-Agent": "MomoBridge/OneBot v11",
        }
        if self.config.access_token:
            headers["Authorization"] = f"Bearer {self.config.access_token}"
        return headers

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                async with connect(
                    self.config.url,
                    additional_headers=self._headers(),
                    open_timeout=self.config.connect_timeout,
                    ping_interval=None,
                    max_size=16 << 20,
                    close_timeout=2,
                ) as ws:
                    self.connects += 1
                    log.info("onebot.link_connected", url=self.config.url, connects=self.connects)
                    await self._serve(ws)
                    self.last_error = f"closed ({ws.close_code} {ws.close_reason})"
            except InvalidStatus as e:
                status = e.response.status_code
                why = "wrong or missing access_token" if status in (401, 403) else "refused"
                self.last_error = f"handshake rejected with HTTP {status} ({why})"
            except (OSError, TimeoutError, WebSocketException) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            except Exception as e:
                # A bug must not end the link for good: log it and keep redialing.
                log.exception("onebot.link_crashed", url=self.config.url)
                self.last_error = f"internal error: {type(e).__name__}"
            finally:
                self._set_ws(None)
            if loop.time() - started > HEALTHY_AFTER:
                attempt = 0
            delay = min(
                self.config.reconnect_interval * 2**attempt, self.config.max_reconnect_interval
            )
            delay *= random.uniform(0.8, 1.2)  # jitter: many bridges must not redial in lockstep
            attempt = min(attempt + 1, 30)
            log.warning(
                "onebot.link_down",
                url=self.config.url,
                reason=self.last_error,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection) -> None:
        # lifecycle/connect must be the very first frame: NoneBot ignores everything before it.
        await ws.send(json.dumps(P.lifecycle_connect(self.self_id)))
        self._set_ws(ws)
        beat = self._tasks.spawn(self._heartbeat(ws), name="onebot-heartbeat")
        try:
            async for raw in ws:
                # Actions are answered in arrival order so a framework's replies keep their order.
                response = await self._handle_action(raw)
                if response is not None:
                    await ws.send(json.dumps(response, ensure_ascii=False))
        except ConnectionClosed:
            pass
        finally:
            beat.cancel()

    async def _heartbeat(self, ws: ClientConnection) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            await ws.send(json.dumps(P.heartbeat_event(self.self_id, int(interval * 1000))))

    async def send_event(self, event: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            async with asyncio.timeout(self.config.action_timeout):
                await ws.send(json.dumps(event, ensure_ascii=False))
        except (ConnectionClosed, TimeoutError):
            return False
        return True
