"""The bridge as a OneBot v11 application: QQ implementations (NapCat, LLBot, Lagrange,
go-cqhttp) dial its reverse WebSocket on the hub's port, one connection per QQ account.

This module is the connection only: the handshake (token, `X-Self-ID`, a Universal
`X-Client-Role`), events handed to the edge as they arrive (heartbeats also tell whether the
QQ account is logged in), and action calls. A call registers its pending answer before the
frame is sent, has a deadline, and fails at once when the connection drops; a failed answer
raises `ActionFailed` with the implementation's retcode. A second connection for an account
replaces the first: the edge sees the old one go down, then the new one come up.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from adapters.onebot.events import Event, HeartbeatEvent, parse_event
from adapters.onebot.responses import ProtocolError, is_response_frame, parse_response
from bridge.config import QQConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.health import Health
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

# Frames an implementation may send; a NapCat history answer can be large, a hostile peer not.
MAX_FRAME = 4 * 1024 * 1024
# aiohttp pings an implementation this often and drops one that stops answering.
PING_EVERY = 30.0
# The longest a closing connection may take to answer its close frame before it is cut.
CLOSE_WAIT = 2.0
# A heartbeat saying the QQ account is not logged in (`status.online` false).
LOGGED_OUT = "logged_out"


class ActionFailed(BridgeError):
    """The implementation answered a call with a failure."""

    def __init__(self, action: str, retcode: int, reason: str) -> None:
        super().__init__(ErrorCode.UPSTREAM_ERROR, f"{action} failed: {reason} (retcode {retcode})")
        self.action = action
        self.retcode = retcode
        self.detail = reason  # the implementation's own words (relayed between nodes)


class QQAccount:
    """One connected QQ account: calls its actions; counts what went through it."""

    def __init__(self, self_id: int, ws: web.WebSocketResponse, timeout: float) -> None:
        self.self_id = self_id
        self.ws = ws
        self.timeout = timeout
        self.connected_at = time.time()
        self.last_event_at = 0.0
        self.messages_in = 0
        self.messages_out = 0
        self.user_agent = ""
        self.transport: asyncio.Transport | None = None
        # What the implementation's last heartbeat said of the QQ login (no heartbeat: online).
        self.online = True
        self.closed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._echo = itertools.count(1)
        self._write = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return not self.closed.is_set()

    async def call(self, action: str, params: dict[str, Any], timeout: float | None = None) -> Any:
        """The action's `data`. Raises ActionFailed, or BridgeError UPSTREAM_TIMEOUT /
        UNAVAILABLE (no answer in time / the connection is gone)."""
        if self.closed.is_set():
            raise BridgeError(ErrorCode.UNAVAILABLE, f"QQ account {self.self_id} is not connected")
        echo = f"mb-{next(self._echo)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[echo] = future  # before sending: the answer may come back at once
        try:
            frame = json.dumps({"action": action, "params": params, "echo": echo})
            async with asyncio.timeout(timeout or self.timeout):
                async with self._write:
                    await self.ws.send_str(frame)
                response = await future
        except TimeoutError:
            raise BridgeError(
                ErrorCode.UPSTREAM_TIMEOUT, f"{action}: no answer from QQ account {self.self_id}"
            ) from None
        except ConnectionError as e:
            raise BridgeError(
                ErrorCode.UNAVAILABLE, f"QQ account {self.self_id} disconnected: {e}"
            ) from None
        finally:
            self._pending.pop(echo, None)
        if not response.is_ok:
            raise ActionFailed(action, response.retcode, response.reason)
        return response.data

    def answer(self, raw: Any) -> None:
        try:
            response = parse_response(raw)
        except ProtocolError as e:
            log.warning("qq.bad_response", account=self.self_id, reason=str(e))
            return
        future = self._pending.get(str(response.echo)) if response.has_echo else None
        if future is None:
            log.debug("qq.unexpected_response", account=self.self_id, echo=response.echo)
            return
        if not future.done():
            future.set_result(response)

    def lost(self, *, replaced: bool = False) -> None:
        """The connection is gone. Calls still waiting fail at once: as "no answer" when a new
        connection replaced this one (what was sent may well have arrived), else as gone."""
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    TimeoutError() if replaced else ConnectionError("the connection closed")
                )
        self._pending.clear()


OnEvent = Callable[[QQAccount, Event], None]
OnAccount = Callable[[QQAccount, bool], None]


class QQLink:
    """Accepts the implementations' connections at ``config.path``."""

    def __init__(
        self, config: QQConfig, on_event: OnEvent, on_account: OnAccount, health: Health
    ) -> None:
        self.config = config
        self._on_event = on_event
        self._on_account = on_account
        self._health = health
        self.accounts: dict[int, QQAccount] = {}
        self._closing = False
        self._tasks = TaskSet("qq-link")

    def _authorized(self, request: web.Request) -> int:
        """200, or the refusal's HTTP status: 401 (no token) or 403 (a wrong one)."""
        expected = self.config.access_token
        if not expected:
            return 200
        given: str | None = None
        header = request.headers.get("Authorization", "")
        for scheme in ("Bearer ", "Token "):
            if header[: len(scheme)].lower() == scheme.lower():
                given = header[len(scheme) :].strip()
        if given is None:
            given = request.query.get("access_token")
        if not given:
            return 401
        return 200 if hmac.compare_digest(given.encode(), expected.encode()) else 403

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        status = self._authorized(request)
        if status != 200:
            log.warning("qq.refused", peer=peer, status=status, reason="access token")
            text = "access token required" if status == 401 else "wrong access token"
            return web.Response(status=status, text=text)
        raw_id = request.headers.get("X-Self-ID", "").strip()
        if not (raw_id.isascii() and raw_id.isdigit()) or not 0 < int(raw_id) < 1 << 63:
            log.warning("qq.refused", peer=peer, status=400, reason="X-Self-ID")
            return web.Response(status=400, text="X-Self-ID must be the QQ account's number")
        role = request.headers.get("X-Client-Role", "").strip()
        if role.lower() in ("api", "event"):
            # go-cqhttp's split connections: events on one, actions on the other.
            log.warning("qq.refused", peer=peer, status=400, reason=f"X-Client-Role {role}")
            return web.Response(
                status=400,
                text=f"X-Client-Role {role} is not supported: use one Universal connection "
                "(go-cqhttp: ws-reverse with universal set, not api and event)",
            )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, text="a OneBot v11 reverse WebSocket is expected here")
        if self._closing:
            return web.Response(status=503, text="shutting down")
        self_id = int(raw_id)
        ws = web.WebSocketResponse(heartbeat=PING_EVERY, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        if self._closing:  # shutdown began while the handshake was answered
            await ws.close(code=1001, message=b"server shutting down")
            return ws
        account = QQAccount(self_id, ws, self.config.action_timeout)
        account.user_agent = request.headers.get("User-Agent", "")[:100]
        account.transport = request.transport
        old = self.accounts.get(self_id)
        self.accounts[self_id] = account
        if old is not None:
            # The old connection goes down before the new one comes up, as if it had dropped;
            # its own handler, ending later, finds it replaced and reports nothing more.
            log.info("qq.replaced", account=self_id)
            old.lost(replaced=True)
            self._on_account(old, False)
            self._tasks.spawn(
                self._close(old, 1000, "replaced by a new connection"),
                name=f"qq-close-{self_id}",
            )
        log.info("qq.connected", account=self_id, peer=peer, agent=account.user_agent)
        self._report(account)
        self._on_account(account, True)
        try:
            await self._read(account)
        finally:
            account.lost()
            if self.accounts.get(self_id) is account:
                del self.accounts[self_id]
                self._health.set(f"qq:{self_id}", "disconnected", "the connection closed")
                self._on_account(account, False)
            log.info("qq.disconnected", account=self_id, code=ws.close_code)
        return ws

    @staticmethod
    async def _close(account: QQAccount, code: int, reason: str) -> None:
        """Close one connection; a peer that does not answer the close frame is cut."""
        ws = account.ws
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await ws.close(code=code, message=reason.encode())
        except TimeoutError:
            log.info("qq.close_timeout", account=account.self_id)
            if account.transport is not None:
                account.transport.abort()

    async def _read(self, account: QQAccount) -> None:
        async for msg in account.ws:
            if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                continue
            try:
                obj = json.loads(msg.data)
            except ValueError:
                log.warning("qq.bad_frame", account=account.self_id, reason="not JSON")
                continue
            if is_response_frame(obj):
                account.answer(obj)
                continue
            try:
                event = parse_event(obj)
            except ProtocolError as e:
                log.warning("qq.bad_frame", account=account.self_id, reason=str(e))
                continue
            account.last_event_at = time.time()
            if isinstance(event, HeartbeatEvent):
                online = event.status.online is not False
                if online != account.online:
                    account.online = online
                    if online:
                        log.info("qq.logged_in", account=account.self_id)
                    else:
                        log.warning("qq.logged_out", account=account.self_id)
                    self._report(account)
            try:
                self._on_event(account, event)
            except Exception:
                log.exception("qq.event_failed", account=account.self_id)

    def _report(self, account: QQAccount) -> None:
        detail = self.describe(account)
        if not account.online:
            detail = f"the implementation says the QQ account is logged out; {detail}"
            self._health.set(f"qq:{account.self_id}", LOGGED_OUT, detail)
            return
        self._health.set(f"qq:{account.self_id}", "ok", detail)

    @staticmethod
    def describe(account: QQAccount) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(account.connected_at))
        last = (
            time.strftime("%H:%M:%S", time.localtime(account.last_event_at))
            if account.last_event_at
            else "none yet"
        )
        return (
            f"connected since {since}, last event {last}, "
            f"messages in {account.messages_in} / out {account.messages_out}"
        )

    def refresh_health(self) -> None:
        for account in self.accounts.values():
            self._report(account)

    async def close(self) -> None:
        """Refuse new connections and close every one (at once, each within CLOSE_WAIT)."""
        self._closing = True
        accounts = list(self.accounts.values())
        self.accounts.clear()
        for account in accounts:
            account.lost()
            self._on_account(account, False)
        if accounts:
            await asyncio.gather(
                *(self._close(a, 1001, "server shutting down") for a in accounts),
                return_exceptions=True,
            )
        await self._tasks.cancel_all()
