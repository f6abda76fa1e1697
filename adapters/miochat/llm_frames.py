"""Sans-I/O core of the web client's `llm` protocol (the Socket.IO client since 2025-03).

In: `llm/completions` (the client's whole local history for one contactor; `request_id` is the
assistant message's id), `llm/enter_chat`, `llm/ack_message`, and the `interruptGeneration`
event. Out: `{protocol: "llm", message, request_id, data}` frames: `pending`, `update` chunks
(`content`, `reason`, `toolCall`), then `complete` or `failed`, and `sync` for a reply the client
comes back to. `ReplyLog` turns the core's reply events into those frames and keeps the merged
chunks a `sync` carries. No sockets, no awaits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from adapters.miochat.envelope import CONVERSATION_ID_RE, FrameError, RequestId, contact_id
from bridge.errors import ErrorCode
from bridge.models import JSON, Delta, Done, Failed, ReplyEvent, ToolCall

PROTOCOL = "llm"
ROLES = {"system", "user", "assistant", "tool"}
TYPES = ("completions", "enter_chat", "ack_message")
# The client's metaData is echoed in every frame; only these keys, each short, so a hostile
# client cannot make the bridge echo (and store) megabytes with every update.
META_KEYS = (
    "contactorId",
    "messageId",
    "namePolicy",
    "contactorName",
    "memberId",
    "memberName",
    "memberAvatar",
)
META_VALUE_CHARS = 256
# `<message time="…">text</message>`: how the client wraps what the user typed (by default).
_TIME_WRAPPER = re.compile(r'<message time="[^"<>]{0,64}">\n?(.*?)\n?</message>', re.S)


@dataclass(frozen=True, slots=True)
class Completions:
    protocol: ClassVar[str] = PROTOCOL
    type: ClassVar[str] = "completions"
    request_id: RequestId
    contactor_id: str
    message_id: str
    provider: str
    model: str
    messages: list[JSON]
    params: dict[str, float | int]
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EnterChat:
    protocol: ClassVar[str] = PROTOCOL
    type: ClassVar[str] = "enter_chat"
    request_id: RequestId
    contactor_id: str


@dataclass(frozen=True, slots=True)
class AckMessage:
    protocol: ClassVar[str] = PROTOCOL
    type: ClassVar[str] = "ack_message"
    request_id: RequestId
    contactor_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    protocol: ClassVar[str] = PROTOCOL
    type: ClassVar[str] = "interrupt"
    contactor_id: str | None
    message_id: str


LlmRequest = Completions | EnterChat | AckMessage | Interrupt


def _bad(rid: RequestId, ftype: str, reason: str) -> FrameError:
    return FrameError(ErrorCode.INVALID_DATA, reason, request_id=rid, protocol=PROTOCOL, type=ftype)


def _id(v: Any) -> str | None:
    """A contactor or message id: text or an integer, of the characters a conversation id may
    have (the client's are digit strings)."""
    s = contact_id(v)
    return s if s is not None and CONVERSATION_ID_RE.fullmatch(s) else None


def parse(obj: dict[str, Any]) -> LlmRequest | FrameError:
    """An `llm` frame (already strict JSON, `protocol == "llm"`) → its request or the error
    that answers it."""
    rid = obj.get("request_id")
    ftype = obj.get("type")
    if not isinstance(ftype, str):
        return FrameError(
            ErrorCode.UNKNOWN_TYPE, "frame has no type string", request_id=rid, protocol=PROTOCOL
        )
    if ftype == "abort":  # what clients before `interruptGeneration` sent
        message = _id(rid)
        if message is None:
            return _bad(rid, ftype, "request_id must be the reply's message id")
        return Interrupt(None, message)
    if ftype not in TYPES:
        return FrameError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown llm type {ftype!r} (served: {', '.join(TYPES)})",
            request_id=rid,
            protocol=PROTOCOL,
            type=ftype,
        )
    data = obj.get("data")
    if not isinstance(data, dict):
        return _bad(rid, ftype, "data must be an object")
    if ftype == "completions":
        return _completions(rid, data, obj.get("metaData"))
    contactor = _id(data.get("contactorId"))
    if contactor is None:
        return _bad(rid, ftype, "data.contactorId must be an id")
    if ftype == "enter_chat":
        return EnterChat(rid, contactor)
    message = _id(data.get("messageId"))
    if message is None:
        return _bad(rid, ftype, "data.messageId must be an id")
    return AckMessage(rid, contactor, message)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        n = float(v)
    except ValueError:
        return None
    return n if n == n and abs(n) < 1e9 else None


def _params(chat: Any) -> dict[str, float | int]:
    """The sampling parameters the client's `chatParams` may carry, as numbers (others dropped)."""
    out: dict[str, float | int] = {}
    if not isinstance(chat, dict):
        return out
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        n = _number(chat.get(key))
        if n is not None:
            out[key] = n
    n = _number(chat.get("max_tokens"))
    if n is not None and n >= 1:
        out["max_tokens"] = int(n)
    return out


def _completions(rid: RequestId, data: dict[str, Any], meta_raw: Any) -> Completions | FrameError:
    meta_in = meta_raw if isinstance(meta_raw, dict) else {}
    contactor = _id(meta_in.get("contactorId"))
    if contactor is None:
        return _bad(rid, "completions", "metaData.contactorId must be an id")
    message = _id(meta_in.get("messageId")) or _id(rid)
    if message is None:
        return _bad(rid, "completions", "metaData.messageId must be an id")
    settings = data.get("settings")
    if not isinstance(settings, dict):
        return _bad(rid, "completions", "data.settings must be an object")
    base = settings.get("base")
    model = base.get("model") if isinstance(base, dict) else None
    if not isinstance(model, str) or not model or len(model) > 200:
        return _bad(rid, "completions", "data.settings.base.model must name a model")
    provider = settings.get("provider")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return _bad(rid, "completions", "data.messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return _bad(rid, "completions", "each message needs a role: system/user/assistant/tool")
    meta: dict[str, Any] = {}
    for key in META_KEYS:
        v = meta_in.get(key)
        if (isinstance(v, str) and len(v) <= META_VALUE_CHARS) or isinstance(v, int | float):
            meta[key] = v
    meta["contactorId"], meta["messageId"] = contactor, message
    return Completions(
        request_id=rid,
        contactor_id=contactor,
        message_id=message,
        provider=provider if isinstance(provider, str) else "",
        model=model,
        messages=messages,
        params=_params(settings.get("chatParams")),
        meta=meta,
    )


def parse_interrupt(data: Any) -> Interrupt | None:
    """The `interruptGeneration` event's object `{contactorId, messageId}`; None if unusable."""
    if not isinstance(data, dict):
        return None
    message = _id(data.get("messageId"))
    if message is None:
        return None
    return Interrupt(_id(data.get("contactorId")), message)


# ----- what the client typed -----------------------------------------------------------------


def unwrap(text: str) -> str:
    """``text`` without the client's `<message time="…">` wrapper (anything outside it, such as a
    quoted reply the client puts in front, stays)."""
    if "<message time=" not in text:
        return text
    return _TIME_WRAPPER.sub(lambda m: m.group(1), text)


def unwrapped(message: JSON) -> JSON:
    """A user message with its text parts unwrapped."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": unwrap(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": unwrap(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


# ----- frames out ----------------------------------------------------------------------------


def frame(message: str, request_id: RequestId, data: dict[str, Any]) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "message": message, "request_id": request_id, "data": data}


def failure_data(reason: str, code: ErrorCode | str, meta: dict[str, Any]) -> dict[str, Any]:
    """What `failed` carries: the client shows all of it (as JSON) under the message."""
    return {"code": str(code), "message": reason, "metaData": meta}


@dataclass(slots=True)
class _Call:
    id: str
    chunk: dict[str, Any]
    done: bool = False


@dataclass(slots=True)
class ReplyLog:
    """One reply's frames and merged chunks.

    `feed` turns a reply event into the frames to send (already with `metaData`) and merges it
    into `chunks`: consecutive text into one `content` chunk, reasoning into one `reason` chunk
    per run, tool calls upserted by id (a `pending` call's arguments appended). Tool calls get
    ids unique to the reply (the client keys its tool-call elements by them): a call at an index
    whose previous call has finished is a new call.
    """

    request_id: RequestId
    meta: dict[str, Any]
    clock: Callable[[], float] = time.time
    chunks: list[dict[str, Any]] = field(default_factory=list)
    status: str = "streaming"
    error: Any = None
    _calls: dict[int, _Call] = field(default_factory=dict)
    _count: int = 0

    @property
    def message_id(self) -> str:
        return str(self.meta["messageId"])

    def _frame(self, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return frame(message, self.request_id, {**(data or {}), "metaData": self.meta})

    def pending(self) -> dict[str, Any]:
        return self._frame("pending")

    def feed(self, event: ReplyEvent) -> list[dict[str, Any]]:
        if self.status != "streaming":
            return []
        if isinstance(event, Delta):
            out = []
            if event.reasoning:
                out.append(self._reason(event.reasoning))
            if event.text:
                out.append(self._content(event.text))
            return out
        if isinstance(event, ToolCall):
            return [self._tool(event)]
        if isinstance(event, Done):
            extra = [self._content(event.text)] if event.text and not self._has_text() else []
            self.status = "completed"
            return [*extra, self._frame("complete")]
        assert isinstance(event, Failed)
        return [self.fail(event.reason, event.error)]

    def fail(self, reason: str, code: ErrorCode | str) -> dict[str, Any]:
        self.status = "failed"
        self.error = {"code": str(code), "message": reason}
        return self._frame("failed", {"code": str(code), "message": reason})

    def interrupted(self) -> dict[str, Any]:
        """Stopped by the client: the reply ends as `complete` with what it had."""
        self.status = "completed"
        return self._frame("complete")

    def _has_text(self) -> bool:
        return any(c["type"] == "content" for c in self.chunks)

    def _content(self, text: str) -> dict[str, Any]:
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last["type"] == "content":
            last["content"] += text
        else:
            self.chunks.append({"type": "content", "content": text})
        return self._frame("update", {"type": "content", "content": text})

    def _reason(self, text: str) -> dict[str, Any]:
        now = int(self.clock() * 1000)
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last["type"] == "reason":
            d = last["data"]
            d["text"] += text
            d["duration"] = now - d["startTime"]
            start, duration = d["startTime"], d["duration"]
        else:
            start, duration = now, 0
            self.chunks.append(
                {"type": "reason", "data": {"text": text, "startTime": now, "duration": 0}}
            )
        return self._frame(
            "update",
            {"type": "reason", "data": {"text": text, "startTime": start, "duration": duration}},
        )

    def _tool(self, event: ToolCall) -> dict[str, Any]:
        call = self._calls.get(event.index)
        if call is None or call.done:
            self._count += 1
            call = _Call(
                f"call_{self.message_id}_{self._count}",
                {
                    "type": "toolCall",
                    "content": {
                        "id": "",
                        "name": event.name,
                        "action": event.action,
                        "parameters": "",
                        "result": None,
                    },
                },
            )
            call.chunk["content"]["id"] = call.id
            self._calls[event.index] = call
            self.chunks.append(call.chunk)
        stored = call.chunk["content"]
        if event.name:
            stored["name"] = event.name
        stored["action"] = event.action
        sent_params = event.params
        if event.action == "pending":
            # The core's `pending` carries the arguments so far; the client appends what a
            # `pending` chunk carries, so it gets only what is new.
            prev = stored["parameters"]
            sent_params = event.params[len(prev) :] if event.params.startswith(prev) else ""
            stored["parameters"] = prev + sent_params
        elif event.params:
            stored["parameters"] = event.params
        if event.result is not None:
            stored["result"] = event.result
        if event.action == "finished":
            call.done = True
        sent = {
            "id": call.id,
            "name": stored["name"],
            "action": event.action,
            "parameters": sent_params if event.action == "pending" else stored["parameters"],
            "result": stored["result"],
        }
        return self._frame("update", {"type": "toolCall", "content": sent})

    def sync(self) -> dict[str, Any]:
        return sync_frame(
            self.request_id, self.message_id, self.chunks, self.status, self.error, self.meta
        )


def sync_frame(
    request_id: RequestId,
    message_id: str,
    chunks: list[dict[str, Any]],
    status: str,
    error: Any,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """A reply as it stands, for a client coming back to its contactor."""
    return frame(
        "sync",
        request_id,
        {
            "chunks": chunks,
            "error": error,
            "messageId": message_id,
            "metaData": {**meta, "triggerType": "chat"},
            "status": status,
        },
    )
