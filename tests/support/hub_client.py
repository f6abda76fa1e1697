"""A small hub client for tests: real websockets, waits on frames with timeouts (never sleeps)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

WAIT = 10.0
Frame = dict[str, Any]


class HubClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._cond = asyncio.Condition()
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> HubClient:
        ws = await connect(url, max_size=None, open_timeout=WAIT, **kwargs)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                async with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            async with self._cond:
                self._cond.notify_all()

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def send(self, protocol: str, type_: str, data: Any = None, **extra: Any) -> Any:
        rid = extra.pop("request_id", None)
        if rid is None:
            rid = f"t-{next(self._ids)}"
        frame = {"request_id": rid, "protocol": protocol, "type": type_, **extra}
        if data is not None:
            frame["data"] = data
        await self.ws.send(json.dumps(frame, ensure_ascii=False))
        return rid

    async def wait_for(
        self, pred: Callable[[Frame], bool], timeout: float = WAIT, *, start: int = 0
    ) -> Frame:
        async with asyncio.timeout(timeout):
            async with self._cond:
                while True:
                    for f in self.frames[start:]:
                        if pred(f):
                            return f
                    if self.closed.is_set():
                        raise AssertionError(
                            f"connection closed ({self.ws.close_code}) before the frame arrived; got {self.frames[start:]}"
                        )
                    await self._cond.wait()

    async def reply(self, rid: Any, timeout: float = WAIT) -> Frame:
        """The first frame answering request ``rid`` (ack, failure, or pending)."""
        return await self.wait_for(lambda f: f.get("request_id") == rid, timeout)

    async def request(self, protocol: str, type_: str, data: Any = None, **extra: Any) -> Frame:
        rid = await self.send(protocol, type_, data, **extra)
        return await self.reply(rid)

    async def stream(self, rid: Any, timeout: float = WAIT) -> list[Frame]:
        """The stream frames on ``rid`` (from `pending`; an ack before it is left out) up to
        and including `completed` or a failure."""

        def end(f: Frame) -> bool:
            return f.get("request_id") == rid and (
                f.get("message") == "completed" or f.get("code") == 1
            )

        await self.wait_for(end, timeout)
        return [
            f for f in self.frames if f.get("request_id") == rid and f.get("message") != "success"
        ]

    def pushes(self, type_: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if isinstance(f.get("request_id"), str)
            and f["request_id"].startswith("s-")
            and (type_ is None or f.get("type") == type_)
            and f.get("protocol") == "onebot"
        ]

    async def wait_push(
        self, pred: Callable[[Frame], bool] = lambda f: True, timeout: float = WAIT
    ) -> Frame:
        def match(f: Frame) -> bool:
            rid = f.get("request_id")
            return (
                isinstance(rid, str)
                and rid.startswith("s-")
                and f.get("protocol") == "onebot"
                and pred(f)
            )

        return await self.wait_for(match, timeout)

    async def login(self, user_id: Any, token: str = "") -> Frame:
        frame = await self.request(
            "system", "login", {"mio-chat-id": user_id, "mio-chat-token": token}
        )
        assert frame["code"] == 0, frame
        return frame

    async def wait_closed(self, timeout: float = WAIT) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def eventually(
    check: Callable[[], Any], timeout: float = WAIT, what: str = "condition"
) -> None:
    """Poll ``check`` (sync or async) until true. Only for state that lives in another server and
    offers nothing to wait on (e.g. a sandbox's stats); everything in-process waits on events."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
