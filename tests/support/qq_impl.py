"""A NapCat-like OneBot v11 implementation logged into one QQ account, for end-to-end tests and
the benchmark of the bridge's QQ link.

`QQImpl` dials the bridge's reverse-WebSocket endpoint the way NapCat's `websocketClients` entry
does (headers `X-Self-ID`, `X-Client-Role`, `Authorization: Bearer <token>` even when the token is
empty, `User-Agent: OneBot/11`, no client pings, no compression), posts the lifecycle `connect`
meta event first, then lets a test inject events (messages, recalls, heartbeats, raw frames) and
answers the actions the bridge calls with NapCat's response shape:
`{status, retcode, data, message, wording, echo[, stream]}`.

Facts mirrored from NapCat (packages/napcat-onebot, v4.18):
- a failing action answers `status "failed"`, `retcode 1200`, `data null` and the error text in
  `message` and `wording` (get_msg of an unknown id: "消息不存在"; delete_msg: "Recall failed");
  a payload that fails its schema answers 1400, an unknown action 1404 "不支持的Api <name>", a
  frame that is not JSON 1400;
- the echo comes back as sent; an action without an echo (or with `null`) is answered with
  `"echo": ""`, except unknown actions and unparsable frames, whose answers carry the echo as is;
- message events carry `message_seq`, `real_id` (both equal to `message_id`), `real_seq`,
  `message_format`, `target_id` (private), `group_name` (group); the account's own messages come
  as `post_type "message_sent"` with `message_sent_type "self"`;
- a forward answers `{message_id, res_id, forward_id}`; `send_msg` with only `node` segments is a
  forward, nodes mixed with other segments are refused with 1400.

Message ids come from the simulator's own int32 counter. By default they alternate in sign
(1, -2, 3, -4, ...) because real implementations hand out negative ids; `ids="wrap"` starts just
below INT32_MAX and wraps to INT32_MIN.

Everything a test observes is event-driven: `wait_sent`, `wait_call`, `wait_for` and
`wait_closed` wake on state changes (an asyncio.Condition) and time out with a description of
what did arrive.
"""

from __future__ import annotations

import asyncio
import json
import re
import time as _time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "WAIT",
    "ActionFailed",
    "Call",
    "HandshakeRefused",
    "QQImpl",
    "Sent",
    "at",
    "cq_escape",
    "cq_unescape",
    "face",
    "image",
    "parse_cq",
    "plain_text",
    "record",
    "reply",
    "text",
    "to_cq",
]

WAIT = 10.0
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
USER_AGENT = "OneBot/11"  # what NapCat's reverse-WS client sends
MAX_FRAME = 50 * 1024 * 1024  # NapCat's maxPayload
SEND_ACTIONS = frozenset({"send_private_msg", "send_group_msg", "send_msg"})
FORWARD_ACTIONS = frozenset(
    {"send_private_forward_msg", "send_group_forward_msg", "send_forward_msg"}
)

Auth = Literal["bearer", "token", "query", "none"]
Format = Literal["array", "string"]
IdMode = Literal["alternate", "positive", "negative", "wrap"]
Target = int | tuple[str, int] | None
Seg = dict[str, Any]


# ----- segments and CQ code (independent of the bridge's own parser on purpose) -----------------


def text(t: str) -> Seg:
    return {"type": "text", "data": {"text": t}}


def at(qq: int | str) -> Seg:
    return {"type": "at", "data": {"qq": str(qq)}}


def reply(message_id: int | str) -> Seg:
    return {"type": "reply", "data": {"id": str(message_id)}}


def image(url: str, file: str | None = None) -> Seg:
    return {"type": "image", "data": {"file": file or url, "url": url}}


def record(url: str, file: str | None = None) -> Seg:
    return {"type": "record", "data": {"file": file or url, "url": url}}


def face(face_id: int | str) -> Seg:
    return {"type": "face", "data": {"id": str(face_id)}}


def plain_text(segments: Iterable[Seg]) -> str:
    return "".join(str(s.get("data", {}).get("text", "")) for s in segments if s["type"] == "text")


def cq_escape(s: str, *, comma: bool = True) -> str:
    s = s.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return s.replace(",", "&#44;") if comma else s


def cq_unescape(s: str) -> str:
    return s.replace("&#44;", ",").replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")


def _cq_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def to_cq(segments: Iterable[Seg]) -> str:
    out = []
    for seg in segments:
        data = seg.get("data") or {}
        if seg["type"] == "text":
            out.append(cq_escape(str(data.get("text", "")), comma=False))
        else:
            params = "".join(
                f",{k}={cq_escape(_cq_value(v))}" for k, v in data.items() if v is not None
            )
            out.append(f"[CQ:{seg['type']}{params}]")
    return "".join(out)


_CQ_RE = re.compile(r"\[CQ:([A-Za-z0-9_.\-]+)((?:,[A-Za-z0-9_.\-]+=[^,\[\]]*)*)\]")
_CQ_PARAM_RE = re.compile(r",([A-Za-z0-9_.\-]+)=([^,\[\]]*)")


def parse_cq(s: str) -> list[Seg]:
    out: list[Seg] = []
    pos = 0
    for m in _CQ_RE.finditer(s):
        if m.start() > pos:
            out.append(text(cq_unescape(s[pos : m.start()])))
        data = {k: cq_unescape(v) for k, v in _CQ_PARAM_RE.findall(m.group(2))}
        out.append(
            text(data.get("text", ""))
            if m.group(1) == "text"
            else {"type": m.group(1), "data": data}
        )
        pos = m.end()
    if pos < len(s):
        out.append(text(cq_unescape(s[pos:])))
    return out


# ----- records ------------------------------------------------------------------------------------


class HandshakeRefused(Exception):
    """The bridge answered the WebSocket upgrade with an HTTP error (401/403 for a bad token)."""

    def __init__(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(f"handshake refused: HTTP {status} {body[:200]!r}")


class ActionFailed(Exception):
    """Raised by an action handler (including ones a test installs with `on`) to fail the call."""

    def __init__(self, retcode: int, message: str) -> None:
        self.retcode = retcode
        self.message = message
        super().__init__(f"{retcode} {message}")


@dataclass
class Call:
    """One action frame the bridge sent; `response` is what the simulator answered (None: not yet
    or never, for a stalled call)."""

    action: Any
    params: Any
    echo: Any
    has_echo: bool
    raw: str
    at: float  # time.monotonic() when it arrived
    connection: int = 0  # which of the simulator's connections (1-based) it came on
    response: dict[str, Any] | None = None
    answered_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None and self.response.get("status") == "ok"


@dataclass
class Sent:
    """A message the bridge got delivered to QQ (a forward counts as one)."""

    action: str
    target_type: str  # "private" | "group"
    target_id: int
    segments: list[Seg]  # normalized {type, data}; [] for a forward
    text: str  # plain text; for a forward, the nodes' texts joined by newlines
    message_id: int
    time: int  # epoch seconds
    at: float  # time.monotonic() when the action arrived
    forward: bool = False
    nodes: list[dict[str, Any]] = field(default_factory=list)
    res_id: str = ""

    @property
    def target(self) -> tuple[str, int]:
        return (self.target_type, self.target_id)


@dataclass
class _Stored:
    message_type: str
    message_id: int
    time: int
    user_id: int
    sender: dict[str, Any]
    segments: list[Seg]
    group_id: int | None = None
    post_type: str = "message"
    gone: bool = False  # recalled by its sender or deleted by the bridge


@dataclass
class _Rule:
    kind: Literal["refuse", "stall"]
    remaining: int | None
    retcode: int = 1200
    message: str = ""


class _Ids:
    """The simulator's int32 message ids; never 0, never one already handed out."""

    def __init__(self, mode: IdMode, first: int | None) -> None:
        self.mode = mode
        self.k = first if first is not None else (INT32_MAX - 1 if mode == "wrap" else 1)
        self.used: set[int] = set()

    def take(self) -> int:
        while True:
            k = self.k
            self.k += 1
            if self.mode == "negative":
                k = -abs(k)
            elif self.mode == "alternate":
                k = k if k % 2 else -k
            mid = (k - INT32_MIN) % 2**32 + INT32_MIN
            if mid != 0 and mid not in self.used:
                self.used.add(mid)
                return mid

    def claim(self, mid: int) -> int:
        if isinstance(mid, bool) or not isinstance(mid, int) or not INT32_MIN <= mid <= INT32_MAX:
            raise ValueError(f"message_id {mid!r} is not an int32")
        self.used.add(mid)
        return mid


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ActionFailed(1400, f"Key: {key}, Message: Expected integer")


def _truthy(value: Any) -> bool:
    return value == "true" if isinstance(value, str) else bool(value)


# ----- the simulator ---------------------------------------------------------------------------------


class QQImpl:
    """A NapCat-like implementation for one QQ account, dialing the bridge's reverse-WS endpoint."""

    def __init__(
        self,
        url: str,
        self_id: int,
        token: str = "",
        *,
        auth: Auth = "bearer",
        message_format: Format = "array",
        role: str = "Universal",
        napcat_extras: bool = True,
        nickname: str = "MomoQQ",
        app_name: str = "NapCat.Onebot",
        app_version: str = "4.18.0",
        ids: IdMode = "alternate",
        first_id: int | None = None,
        heartbeat_interval: int = 0,
        lifecycle: bool = True,
        report_self: bool = False,
        max_message_chars: int | None = None,
        answer_delay: float = 0.0,
    ) -> None:
        self.url = url
        self.self_id = self_id
        self.token = token
        self.auth = auth
        self.message_format = message_format
        self.role = role
        self.napcat_extras = napcat_extras
        self.nickname = nickname
        self.app_name = app_name
        self.app_version = app_version
        self.heartbeat_interval = heartbeat_interval  # ms; 0 = off
        self.lifecycle = lifecycle
        self.report_self = report_self  # post a message_sent echo after each send (NapCat option)
        self.max_message_chars = max_message_chars
        self.answer_delay = answer_delay  # seconds before answering a send or forward

        self.ws: ClientConnection | None = None
        self.connections = 0  # handshakes completed
        self.handshake_status: int | None = None
        self.handshake_headers: dict[str, str] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()

        self.calls: list[Call] = []
        self.sent: list[Sent] = []
        self.deleted: list[int] = []
        self.events: list[dict[str, Any]] = []  # every event posted, in order (not raw frames)
        self.bad_frames: list[str] = []  # frames from the bridge that were not JSON
        self.errors: list[str] = []  # exceptions caught in the reader or owned tasks

        self._ids = _Ids(ids, first_id)
        self._seq = 0
        self._messages: dict[int, _Stored] = {}
        self._forwards: dict[str, Sent] = {}
        self._rules: dict[str, list[_Rule]] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----- connection ----------------------------------------------------------------------------

    def _dial(self) -> tuple[str, dict[str, str]]:
        headers = {"X-Self-ID": str(self.self_id), "X-Client-Role": self.role}
        url = self.url
        if self.auth == "bearer":
            headers["Authorization"] = f"Bearer {self.token}"  # NapCat sends it even when empty
        elif self.auth == "token" and self.token:
            headers["Authorization"] = f"Token {self.token}"  # go-cqhttp
        elif self.auth == "query" and self.token:
            parts = urlsplit(url)
            query = [*parse_qsl(parts.query, keep_blank_values=True), ("access_token", self.token)]
            url = urlunsplit(parts._replace(query=urlencode(query)))
        return url, headers

    async def connect(self, timeout: float = WAIT) -> QQImpl:
        """Dial, post lifecycle `connect`, start reading. Raises HandshakeRefused on HTTP errors."""
        if self.ws is not None and not self.closed.is_set():
            raise RuntimeError("already connected")
        url, headers = self._dial()
        self.connected.clear()
        self.closed.clear()
        self.close_code = None
        self.close_reason = ""
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                open_timeout=timeout,
                ping_interval=None,  # NapCat's client never pings (it answers pings)
                compression=None,  # NapCat: perMessageDeflate false
                max_size=MAX_FRAME,
                proxy=None,
            )
        except InvalidStatus as e:
            self.handshake_status = e.response.status_code
            self.handshake_headers = dict(e.response.headers.raw_items())
            raise HandshakeRefused(
                e.response.status_code, bytes(e.response.body or b""), self.handshake_headers
            ) from e
        self.ws = ws
        self.connections += 1
        self.handshake_status = ws.response.status_code if ws.response else None
        self.handshake_headers = dict(ws.response.headers.raw_items()) if ws.response else {}
        if self.lifecycle:
            await self._post(
                self._base("meta_event", meta_event_type="lifecycle", sub_type="connect")
            )
        self._reader = asyncio.create_task(self._read(ws), name=f"qq-impl-{self.self_id}-reader")
        if self.heartbeat_interval > 0:
            self._heartbeat = self._spawn(self._beat(ws, self.heartbeat_interval))
        self.connected.set()
        await self._notify()
        return self

    async def close(self, code: int = 1000, timeout: float = WAIT) -> None:
        """Close cleanly (close frame), stop the reader, heartbeats and pending answers."""
        ws = self.ws
        if ws is not None and not self.closed.is_set():
            self._stop_heartbeat()
            try:
                async with asyncio.timeout(timeout):
                    await ws.close(code)
            except TimeoutError:
                ws.transport.abort()
        await self._stop(timeout)

    async def drop(self, timeout: float = WAIT) -> None:
        """Abort the TCP connection without a close frame (a crashed or unplugged implementation)."""
        ws = self.ws
        if ws is not None and not self.closed.is_set():
            self._stop_heartbeat()
            ws.transport.abort()
        await self._stop(timeout)

    async def reconnect(self, *, abrupt: bool = False, timeout: float = WAIT) -> QQImpl:
        """Close (or drop) the current connection if any, then dial again (lifecycle first again)."""
        await (self.drop(timeout) if abrupt else self.close(timeout=timeout))
        return await self.connect(timeout)

    async def wait_closed(self, timeout: float = WAIT) -> None:
        """Until the current connection has ended, whoever ended it."""
        try:
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        except TimeoutError:
            raise TimeoutError(f"QQImpl {self.self_id}: connection still open") from None

    async def __aenter__(self) -> QQImpl:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _stop(self, timeout: float) -> None:
        self._stop_heartbeat()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(reader)
            except TimeoutError:
                reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.connected.clear()
        if self.ws is not None:
            self.closed.set()
        await self._notify()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(repr(task.exception()))

    async def _beat(self, ws: ClientConnection, interval_ms: int) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            if ws is not self.ws:
                return
            try:
                await self.heartbeat()
            except (ConnectionClosed, RuntimeError):  # the connection ended meanwhile
                return

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    await self._on_frame(raw)
                except ConnectionClosed:
                    raise
                except Exception as e:  # a frame must never kill the reader
                    self.errors.append(f"{type(e).__name__}: {e}")
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason or ""
            if ws is self.ws:
                self.connected.clear()
                self.closed.set()
                self._stop_heartbeat()
            try:
                await self._notify()
            except asyncio.CancelledError:
                pass

    # ----- waiting -------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition"
    ) -> None:
        """Until `predicate()` holds; re-checked on every state change (frames, sends, closes)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(
                f"QQImpl {self.self_id}: timed out after {timeout}s waiting for {what}; "
                f"calls={[c.action for c in self.calls]} sent={self.texts()!r}"
            ) from None

    async def wait_sent(
        self, n: int = 1, *, target: Target = None, timeout: float = WAIT
    ) -> list[Sent]:
        """Until at least `n` messages (to `target`, if given) were sent; returns those sent."""
        await self.wait_for(
            lambda: len(self._sent_to(target)) >= n, timeout, f"{n} sent message(s) to {target}"
        )
        return self._sent_to(target)

    async def wait_call(self, action: str, n: int = 1, timeout: float = WAIT) -> Call:
        """Until the bridge has called `action` `n` times; returns the n-th such call."""
        await self.wait_for(
            lambda: len(self.calls_of(action)) >= n, timeout, f"{n} call(s) of {action}"
        )
        return self.calls_of(action)[n - 1]

    async def wait_deleted(self, n: int = 1, timeout: float = WAIT) -> list[int]:
        await self.wait_for(lambda: len(self.deleted) >= n, timeout, f"{n} delete_msg")
        return list(self.deleted)

    # ----- observation ---------------------------------------------------------------------------

    def calls_of(self, action: str) -> list[Call]:
        return [c for c in self.calls if c.action == action]

    def _sent_to(self, target: Target) -> list[Sent]:
        if target is None:
            return list(self.sent)
        if isinstance(target, tuple):
            return [s for s in self.sent if s.target == target]
        return [s for s in self.sent if s.target_id == target]

    def texts(self, target: Target = None) -> list[str]:
        """Plain text of each sent message, in order; `target` is an id or ("group"|"private", id)."""
        return [s.text for s in self._sent_to(target)]

    @property
    def forwards(self) -> list[Sent]:
        return [s for s in self.sent if s.forward]

    def message(self, message_id: int) -> dict[str, Any] | None:
        """What get_msg would answer for `message_id` (None if unknown or gone)."""
        stored = self._messages.get(message_id)
        return None if stored is None or stored.gone else self._render_stored(stored)

    # ----- configurable behaviour ----------------------------------------------------------------

    def refuse(
        self,
        action: str,
        retcode: int = 1200,
        message: str = "refused by the test implementation",
        times: int | None = 1,
    ) -> None:
        """Fail the next `times` calls of `action` ("*": any action; None: until `allow`)."""
        self._rules.setdefault(action, []).append(_Rule("refuse", times, retcode, message))

    def stall(self, action: str, times: int | None = 1) -> None:
        """Never answer the next `times` calls of `action` ("*": any; None: until `allow`)."""
        self._rules.setdefault(action, []).append(_Rule("stall", times))

    def allow(self, action: str | None = None) -> None:
        """Drop refuse/stall rules for `action` (all rules when None)."""
        if action is None:
            self._rules.clear()
        else:
            self._rules.pop(action, None)

    def on(self, action: str, handler: Callable[[dict[str, Any]], Any] | None) -> None:
        """Answer `action` with `handler(params)` (raise ActionFailed to fail); None restores."""
        if handler is None:
            self._handlers.pop(action, None)
        else:
            self._handlers[action] = handler

    def _rule_for(self, action: Any) -> _Rule | None:
        for key in (action, "*"):
            rules = self._rules.get(key) if isinstance(key, str) else None
            if rules:
                rule = rules[0]
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        rules.pop(0)
                return rule
        return None

    # ----- events --------------------------------------------------------------------------------

    def _now(self, t: int | None) -> int:
        return int(_time.time()) if t is None else t

    def _base(self, post_type: str, time: int | None = None, **fields: Any) -> dict[str, Any]:
        return {"time": self._now(time), "self_id": self.self_id, "post_type": post_type, **fields}

    def _segments(self, message: str | Seg | Iterable[Seg | str]) -> list[Seg]:
        if isinstance(message, str):
            return [text(message)]
        if isinstance(message, Mapping):
            return [{"type": message["type"], "data": dict(message.get("data") or {})}]
        return [
            text(s)
            if isinstance(s, str)
            else {"type": s["type"], "data": dict(s.get("data") or {})}
            for s in message
        ]

    def _next_id(self, message_id: int | None) -> int:
        return self._ids.take() if message_id is None else self._ids.claim(message_id)

    def _message_fields(self, mid: int, segs: list[Seg]) -> dict[str, Any]:
        cq = to_cq(segs)
        body = {"message": cq if self.message_format == "string" else segs, "raw_message": cq}
        if self.napcat_extras:
            self._seq += 1
            body.update(
                message_seq=mid,
                real_id=mid,
                real_seq=str(self._seq),
                message_format=self.message_format,
            )
        return body

    def private_event(
        self,
        user_id: int,
        message: str | Seg | Iterable[Seg | str],
        *,
        nickname: str | None = None,
        message_id: int | None = None,
        time: int | None = None,
        sub_type: str = "friend",
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A private message event as the implementation would post it (not sent)."""
        mid = self._next_id(message_id)
        segs = self._segments(message)
        sender: dict[str, Any] = {
            "user_id": user_id,
            "nickname": nickname if nickname is not None else f"user{user_id}",
            "sex": "unknown",
            "age": 0,
        }
        if self.napcat_extras:
            sender["card"] = ""
        ev = self._base(
            "message",
            time,
            message_type="private",
            sub_type=sub_type,
            message_id=mid,
            user_id=user_id,
            **self._message_fields(mid, segs),
            font=0,
            sender=sender,
        )
        if self.napcat_extras:
            ev["target_id"] = user_id
        ev.update(extra or {})
        return ev

    def group_event(
        self,
        group_id: int,
        user_id: int,
        message: str | Seg | Iterable[Seg | str],
        *,
        card: str = "",
        nickname: str | None = None,
        role: str = "member",
        title: str = "",
        message_id: int | None = None,
        time: int | None = None,
        sub_type: str = "normal",
        group_name: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A group message event as the implementation would post it (not sent)."""
        mid = self._next_id(message_id)
        segs = self._segments(message)
        ev = self._base(
            "message",
            time,
            message_type="group",
            sub_type=sub_type,
            message_id=mid,
            group_id=group_id,
            user_id=user_id,
            anonymous=None,
            **self._message_fields(mid, segs),
            font=0,
            sender={
                "user_id": user_id,
                "nickname": nickname if nickname is not None else f"user{user_id}",
                "card": card,
                "sex": "unknown",
                "age": 0,
                "area": "",
                "level": "",
                "role": role,
                "title": title,
            },
        )
        if self.napcat_extras:
            ev["group_name"] = group_name if group_name is not None else f"group{group_id}"
        ev.update(extra or {})
        return ev

    def message_sent_event(
        self,
        message: str | Seg | Iterable[Seg | str],
        *,
        user_id: int | None = None,
        group_id: int | None = None,
        message_id: int | None = None,
        time: int | None = None,
    ) -> dict[str, Any]:
        """NapCat's `message_sent` echo of a message the account itself sent (to a user or group)."""
        if (user_id is None) == (group_id is None):
            raise ValueError("give exactly one of user_id and group_id")
        mid = self._next_id(message_id)
        segs = self._segments(message)
        ev = self._base(
            "message_sent",
            time,
            message_type="group" if group_id is not None else "private",
            sub_type="normal" if group_id is not None else "friend",
            message_id=mid,
            user_id=self.self_id,
            **self._message_fields(mid, segs),
            font=0,
            sender={"user_id": self.self_id, "nickname": self.nickname, "card": ""},
            message_sent_type="self",
            target_id=group_id if group_id is not None else user_id,
        )
        if group_id is not None:
            ev["group_id"] = group_id
        return ev

    async def send_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Post an event; message events (and message_sent echoes) are remembered for get_msg."""
        ev = dict(event)
        self._remember_event(ev)
        await self._post(ev)
        return ev

    # Posting: each takes the arguments of its builder above (private_event, group_event,
    # message_sent_event) and returns the event it posted (its `message_id` included).

    async def private(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Post a private message (`private_event`'s arguments)."""
        return await self.send_event(self.private_event(*args, **kwargs))

    async def group(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Post a group message (`group_event`'s arguments)."""
        return await self.send_event(self.group_event(*args, **kwargs))

    async def message_sent(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Post a `message_sent` echo of the account's own message (`message_sent_event`'s
        arguments)."""
        return await self.send_event(self.message_sent_event(*args, **kwargs))

    async def friend_recall(
        self, user_id: int, message_id: int, *, time: int | None = None
    ) -> dict[str, Any]:
        """Post `notice/friend_recall`; the message is gone for get_msg afterwards."""
        self._mark_gone(message_id)
        return await self.send_event(
            self._base(
                "notice", time, notice_type="friend_recall", user_id=user_id, message_id=message_id
            )
        )

    async def group_recall(
        self,
        group_id: int,
        user_id: int,
        message_id: int,
        operator_id: int | None = None,
        *,
        time: int | None = None,
    ) -> dict[str, Any]:
        """Post `notice/group_recall` (operator defaults to the sender recalling their own)."""
        self._mark_gone(message_id)
        return await self.send_event(
            self._base(
                "notice",
                time,
                notice_type="group_recall",
                group_id=group_id,
                user_id=user_id,
                operator_id=user_id if operator_id is None else operator_id,
                message_id=message_id,
            )
        )

    async def heartbeat(self, *, online: bool = True, good: bool = True) -> dict[str, Any]:
        interval = self.heartbeat_interval or 30000
        return await self.send_event(
            self._base(
                "meta_event",
                meta_event_type="heartbeat",
                status={"online": online, "good": good},
                interval=interval,
            )
        )

    async def replay(self, event: Mapping[str, Any]) -> None:
        """Post a previously posted event again, unchanged (a duplicate delivery)."""
        await self._post(dict(event))

    async def send_raw(self, frame: str | bytes | Any) -> None:
        """Send anything as one frame: str/bytes as is, other values as JSON. Not remembered."""
        if isinstance(frame, str | bytes):
            await self._ws().send(frame)
        else:
            await self._ws().send(_dumps(frame))

    def _ws(self) -> ClientConnection:
        if self.ws is None or self.closed.is_set():
            raise RuntimeError(f"QQImpl {self.self_id} is not connected")
        return self.ws

    async def _post(self, event: dict[str, Any]) -> None:
        await self._ws().send(_dumps(event))
        self.events.append(event)

    def _remember_event(self, ev: Mapping[str, Any]) -> None:
        if ev.get("post_type") not in ("message", "message_sent") or "message_id" not in ev:
            return
        message = ev.get("message", [])
        segs = parse_cq(message) if isinstance(message, str) else self._segments(message)
        sender = dict(ev.get("sender") or {})
        self._messages[ev["message_id"]] = _Stored(
            message_type=str(ev.get("message_type", "private")),
            message_id=ev["message_id"],
            time=int(ev.get("time", self._now(None))),
            user_id=int(ev.get("user_id", sender.get("user_id", 0))),
            sender=sender,
            segments=segs,
            group_id=ev.get("group_id"),
            post_type=str(ev["post_type"]),
        )

    def _mark_gone(self, message_id: int) -> None:
        stored = self._messages.get(message_id)
        if stored is not None:
            stored.gone = True

    def _render_stored(self, m: _Stored) -> dict[str, Any]:
        cq = to_cq(m.segments)
        data: dict[str, Any] = {
            "self_id": self.self_id,
            "user_id": m.user_id,
            "time": m.time,
            "message_id": m.message_id,
            "message_seq": m.message_id,
            "real_id": m.message_id,
            "message_type": m.message_type,
            "sender": dict(m.sender),
            "message": cq if self.message_format == "string" else [dict(s) for s in m.segments],
            "raw_message": cq,
            "font": 0,
            "sub_type": "normal" if m.message_type == "group" else "friend",
            "message_format": self.message_format,
            "post_type": m.post_type,
        }
        if m.group_id is not None:
            data["group_id"] = m.group_id
        return data

    # ----- actions -------------------------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        frame = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        now = _time.monotonic()
        try:
            obj = json.loads(frame)
        except ValueError:
            self.bad_frames.append(frame)
            call = Call(None, None, None, False, frame, now, self.connections)
            self.calls.append(call)
            await self._answer(call, 1400, None, "json解析失败,请检查数据格式", echo_as_is=True)
            return
        if not isinstance(obj, dict):
            obj = {}
        action = obj.get("action")
        call = Call(
            action, obj.get("params"), obj.get("echo"), "echo" in obj, frame, now, self.connections
        )
        self.calls.append(call)

        rule = self._rule_for(action)
        if rule is not None and rule.kind == "stall":
            await self._notify()
            return
        if rule is not None:
            await self._answer(call, rule.retcode, None, rule.message)
            return

        handler = self._handlers.get(action) if isinstance(action, str) else None
        builtin = getattr(self, f"_act_{action}", None) if isinstance(action, str) else None
        if handler is None and builtin is None:
            await self._answer(call, 1404, None, f"不支持的Api {action}", echo_as_is=True)
            return
        params = call.params or {}  # NapCat: a missing/empty params is {}
        if not isinstance(params, dict):
            await self._answer(call, 1400, None, "Key: params, Message: Expected object")
            return
        try:
            data = handler(params) if handler is not None else builtin(params, call)
        except ActionFailed as e:
            await self._answer(call, e.retcode, None, e.message)
            return
        if self.answer_delay > 0 and action in SEND_ACTIONS | FORWARD_ACTIONS:
            await self._notify()
            self._spawn(self._answer_later(call, data))
            return
        await self._answer(call, 0, data)
        await self._after_send(call)

    async def _answer_later(self, call: Call, data: Any) -> None:
        await asyncio.sleep(self.answer_delay)
        await self._answer(call, 0, data)
        await self._after_send(call)

    async def _after_send(self, call: Call) -> None:
        """With `report_self`, echo a delivered message back as NapCat's `message_sent`."""
        if not self.report_self or not call.ok or call.action not in SEND_ACTIONS | FORWARD_ACTIONS:
            return
        mid = call.response["data"]["message_id"]  # type: ignore[index]
        sent = next((s for s in reversed(self.sent) if s.message_id == mid), None)
        if sent is None:
            return
        segs = sent.segments or [{"type": "forward", "data": {"id": sent.res_id}}]
        if sent.target_type == "group":
            ev = self.message_sent_event(segs, group_id=sent.target_id, message_id=mid)
        else:
            ev = self.message_sent_event(segs, user_id=sent.target_id, message_id=mid)
        if call.connection != self.connections:
            return
        try:
            await self._post(ev)
        except (ConnectionClosed, RuntimeError):
            pass

    async def _answer(
        self,
        call: Call,
        retcode: int,
        data: Any,
        message: str = "",
        *,
        echo_as_is: bool = False,
    ) -> None:
        response: dict[str, Any] = {
            "status": "ok" if retcode == 0 else "failed",
            "retcode": retcode,
            "data": data,
            "message": message,
            "wording": message,
        }
        if echo_as_is:
            if call.has_echo:
                response["echo"] = call.echo
        else:
            response["echo"] = "" if call.echo is None else call.echo
        if self.napcat_extras:
            response["stream"] = "normal-action"
        call.response = response
        call.answered_at = _time.monotonic()
        # An answer belongs to the connection its call came on; never to a later one.
        ws = self.ws if call.connection == self.connections else None
        try:
            if ws is not None:
                await ws.send(_dumps(response))
        except ConnectionClosed:
            pass
        await self._notify()

    # Each builtin takes (params, call) and returns the answer's data or raises ActionFailed.

    def _target(self, params: dict[str, Any], mode: str | None) -> tuple[str, int]:
        message_type = params.get("message_type")
        if mode is None and message_type in ("private", "group"):
            mode = message_type
        group_id, user_id = params.get("group_id"), params.get("user_id")
        if mode in (None, "group") and group_id not in (None, ""):
            return "group", _int(group_id, "group_id")
        if mode in (None, "private") and user_id not in (None, ""):
            return "private", _int(user_id, "user_id")
        if mode == "private" and group_id not in (None, ""):
            raise ActionFailed(1200, "当前私聊发送,请指定 user_id 而不是 group_id")
        if mode == "group" and user_id not in (None, ""):
            raise ActionFailed(1200, "当前群聊发送,请指定 group_id 而不是 user_id")
        raise ActionFailed(1200, "请指定正确的 group_id 或 user_id")

    def _normalize(
        self, message: Any, auto_escape: bool = False, where: str = "message"
    ) -> list[Seg]:
        if isinstance(message, str):
            return [text(message)] if auto_escape else parse_cq(message)
        items = [message] if isinstance(message, dict) else message
        if not isinstance(items, list):
            raise ActionFailed(1400, f"Key: {where}, Message: Expected union value")
        out = []
        for i, seg in enumerate(items):
            if not isinstance(seg, dict) or not isinstance(seg.get("type"), str):
                raise ActionFailed(1400, f"Key: {where}.{i}, Message: Expected segment")
            data = seg.get("data") or {}
            if not isinstance(data, dict):
                raise ActionFailed(1400, f"Key: {where}.{i}.data, Message: Expected object")
            out.append({"type": seg["type"], "data": dict(data)})
        return out

    def _send(self, params: dict[str, Any], call: Call, mode: str | None, key: str) -> Any:
        if key not in params:
            raise ActionFailed(1400, f"Key: {key}, Message: Required property")
        target_type, target_id = self._target(params, mode)
        segs = self._normalize(params[key], _truthy(params.get("auto_escape")), key)
        nodes = [s for s in segs if s["type"] == "node"]
        if nodes and len(nodes) != len(segs):
            raise ActionFailed(
                1400, "转发消息不能和普通消息混在一起发送,转发需要保证message只有type为node的元素"
            )
        if nodes:
            return self._forward(call, target_type, target_id, nodes)
        if not segs:
            raise ActionFailed(1200, "消息体无法解析, 请检查是否发送了不支持的消息类型")
        body = plain_text(segs)
        if self.max_message_chars is not None and len(body) > self.max_message_chars:
            raise ActionFailed(1200, f"消息过长: {len(body)} > {self.max_message_chars} characters")
        mid = self._ids.take()
        self._record_sent(
            Sent(
                str(call.action), target_type, target_id, segs, body, mid, self._now(None), call.at
            )
        )
        return {"message_id": mid}

    def _forward(
        self, call: Call, target_type: str, target_id: int, nodes: list[Seg]
    ) -> dict[str, Any]:
        parsed: list[dict[str, Any]] = []
        for i, node in enumerate(nodes):
            data = node["data"]
            if "content" in data:
                parsed.append(
                    {
                        "name": str(data.get("name", data.get("nickname", ""))),
                        "uin": str(data.get("uin", data.get("user_id", ""))),
                        "content": self._normalize(data["content"], where=f"messages.{i}.content"),
                    }
                )
            elif "id" in data:
                stored = self._messages.get(_int(data["id"], f"messages.{i}.id"))
                if stored is not None:  # NapCat skips ids it cannot find
                    parsed.append(
                        {
                            "id": str(data["id"]),
                            "name": str(stored.sender.get("nickname", "")),
                            "uin": str(stored.user_id),
                            "content": [dict(s) for s in stored.segments],
                        }
                    )
            else:
                raise ActionFailed(
                    1400, f"Key: messages.{i}.data, Message: node without content or id"
                )
        if not parsed:
            raise ActionFailed(1200, "转发消息失败，生成节点为空")
        mid = self._ids.take()
        res_id = f"sim-res-{self.self_id}-{mid & 0xFFFFFFFF:08x}"
        body = "\n".join(plain_text(n["content"]) for n in parsed)
        self._record_sent(
            Sent(
                str(call.action),
                target_type,
                target_id,
                [],
                body,
                mid,
                self._now(None),
                call.at,
                forward=True,
                nodes=parsed,
                res_id=res_id,
            ),
            [{"type": "forward", "data": {"id": res_id}}],
        )
        return {"message_id": mid, "res_id": res_id, "forward_id": res_id}

    def _record_sent(self, sent: Sent, segments: list[Seg] | None = None) -> None:
        self.sent.append(sent)
        if sent.forward:
            self._forwards[sent.res_id] = sent
        self._messages[sent.message_id] = _Stored(
            message_type=sent.target_type,
            message_id=sent.message_id,
            time=sent.time,
            user_id=self.self_id,
            sender={"user_id": self.self_id, "nickname": self.nickname, "card": ""},
            segments=segments if segments is not None else sent.segments,
            group_id=sent.target_id if sent.target_type == "group" else None,
            post_type="message_sent",
        )

    def _act_send_private_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(params, call, "private", "message")

    def _act_send_group_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(params, call, "group", "message")

    def _act_send_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(params, call, None, "message")

    def _act_send_private_forward_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(
            params, call, "private", "messages" if "messages" in params else "message"
        )

    def _act_send_group_forward_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(params, call, "group", "messages" if "messages" in params else "message")

    def _act_send_forward_msg(self, params: dict[str, Any], call: Call) -> Any:
        return self._send(params, call, None, "messages" if "messages" in params else "message")

    def _act_delete_msg(self, params: dict[str, Any], call: Call) -> Any:
        if "message_id" not in params:
            raise ActionFailed(1400, "Key: message_id, Message: Required property")
        mid = _int(params["message_id"], "message_id")
        stored = self._messages.get(mid)
        if stored is None or stored.gone:
            raise ActionFailed(1200, "Recall failed")
        stored.gone = True
        self.deleted.append(mid)
        return None

    def _act_get_msg(self, params: dict[str, Any], call: Call) -> Any:
        if not params.get("message_id"):
            raise ActionFailed(1200, "参数message_id不能为空")
        data = self.message(_int(params["message_id"], "message_id"))
        if data is None:
            raise ActionFailed(1200, "消息不存在")
        return data

    def _act_get_forward_msg(self, params: dict[str, Any], call: Call) -> Any:
        key = params.get("message_id") or params.get("id")
        if not key:
            raise ActionFailed(1200, "message_id is required")
        fwd = self._forwards.get(str(key))
        if fwd is None and re.fullmatch(r"-?\d+", str(key)):
            fwd = next((s for s in self.forwards if s.message_id == int(str(key))), None)
        if fwd is None:
            raise ActionFailed(1200, "ResId无效: 找不到相关的聊天记录")
        return {
            "messages": [
                {
                    "self_id": self.self_id,
                    "user_id": int(n["uin"]) if n["uin"].lstrip("-").isdigit() else 0,
                    "time": fwd.time,
                    "message_type": fwd.target_type,
                    "sender": {"user_id": n["uin"], "nickname": n["name"]},
                    "message": n["content"],
                    "content": n["content"],
                    "raw_message": to_cq(n["content"]),
                    "message_format": "array",
                }
                for n in fwd.nodes
            ]
        }

    def _act_set_input_status(self, params: dict[str, Any], call: Call) -> Any:
        for key in ("user_id", "event_type"):
            if key not in params:
                raise ActionFailed(1400, f"Key: {key}, Message: Required property")
            _int(params[key], key)
        return None

    def _act_get_login_info(self, params: dict[str, Any], call: Call) -> Any:
        return {"user_id": self.self_id, "nickname": self.nickname}

    def _act_get_status(self, params: dict[str, Any], call: Call) -> Any:
        return {"online": True, "good": True, "stat": {}}

    def _act_get_version_info(self, params: dict[str, Any], call: Call) -> Any:
        return {
            "app_name": self.app_name,
            "protocol_version": "v11",
            "app_version": self.app_version,
        }

    def _act_can_send_image(self, params: dict[str, Any], call: Call) -> Any:
        return {"yes": True}

    def _act_can_send_record(self, params: dict[str, Any], call: Call) -> Any:
        return {"yes": True}
