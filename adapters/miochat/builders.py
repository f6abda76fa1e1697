"""Hub frames out: every response and push shape the server writes, as plain dicts.

Send them through `dumps` (re-exported from `wire`), which always yields valid UTF-8 JSON.
A request_id that could not be echoed as valid JSON is written as null.
"""

from __future__ import annotations

from typing import Any, Literal

from adapters.miochat.envelope import FrameError, HeartbeatData, RequestId, safe_request_id
from adapters.miochat.wire import dumps
from bridge.errors import ErrorCode
from bridge.outbox import Push

__all__ = [
    "dumps",
    "failure",
    "failure_from",
    "heartbeat_reply",
    "message_push",
    "push_frame",
    "recall_push",
    "stream_completed",
    "stream_frame",
    "stream_update",
    "success",
]


def success(
    request_id: RequestId | None,
    protocol: str | None,
    ftype: str | None,
    data: Any = None,
    *,
    message: str = "success",
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "request_id": safe_request_id(request_id),
        "protocol": protocol,
        "type": ftype,
        "code": 0,
        "message": message,
    }
    if data is not None:
        frame["data"] = data
    return frame


def failure(
    request_id: RequestId | None,
    protocol: str | None,
    ftype: str | None,
    error: ErrorCode,
    reason: str,
) -> dict[str, Any]:
    return {
        "request_id": safe_request_id(request_id),
        "protocol": protocol,
        "type": ftype,
        "code": 1,
        "message": "failed",
        "data": {"reason": reason, "error": str(error)},
    }


def failure_from(e: FrameError) -> dict[str, Any]:
    """The failure frame answering a `FrameError` (from `parse_frame` or `parse_request`)."""
    return failure(e.request_id, e.protocol, e.type, e.code, e.reason)


def heartbeat_reply(request_id: RequestId, data: HeartbeatData, now_ms: float) -> dict[str, Any]:
    """system/heartbeat success: `{"delay": now − timestamp (0 if absent), "revTime": now}`."""
    # `success` spelled out: the most frequent answer skips a call and its keyword handling.
    return {
        "request_id": safe_request_id(request_id),
        "protocol": "system",
        "type": "heartbeat",
        "code": 0,
        "message": "success",
        "data": {"delay": data.delay(now_ms), "revTime": int(now_ms)},
    }


def stream_frame(
    request_id: RequestId,
    protocol: str,
    ftype: str,
    message: Literal["pending", "update", "completed"],
    data: Any = None,
) -> dict[str, Any]:
    return success(request_id, protocol, ftype, data, message=message)


def stream_update(
    request_id: RequestId,
    protocol: str,
    ftype: str,
    *,
    seq: int,
    chunk: str = "",
    tool_call: dict[str, Any] | None = None,
    reasoning_content: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """An `update` frame: `{"index", "seq", "chunk", "tool_call", "reasoning_content"?}`."""
    data: dict[str, Any] = {"index": index, "seq": seq, "chunk": chunk, "tool_call": tool_call}
    if reasoning_content:
        data["reasoning_content"] = reasoning_content
    return stream_frame(request_id, protocol, ftype, "update", data)


def stream_completed(
    request_id: RequestId,
    protocol: str,
    ftype: str,
    finish_reason: str | None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `completed` frame: `{"finish_reason", "usage"?}`."""
    data: dict[str, Any] = {"finish_reason": finish_reason}
    if usage:
        data["usage"] = usage
    return stream_frame(request_id, protocol, ftype, "completed", data)


def _push(request_id: str, ftype: str, data: dict[str, Any], seq: int | None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "request_id": request_id,
        "protocol": "onebot",
        "type": ftype,
        "code": 0,
        "message": "success",
    }
    if seq is not None:
        frame["seq"] = seq
    frame["data"] = data
    return frame


def message_push(
    request_id: str,
    contact: str,
    segments: list[dict[str, Any]],
    message_id: int,
    time_s: int,
    sender_id: str,
    sender_name: str,
    stream_request_id: RequestId | None = None,
    *,
    seq: int | None = None,
    interrupted: bool = False,
    reply_to: int | None = None,
) -> dict[str, Any]:
    """A message (or forward, with a `nodes` segment) push.

    `seq` is written as the frame's top-level "seq"; `interrupted`/`reply_to` mark the notice for
    a reply that was lost when the server died.
    """
    content: dict[str, Any] = {
        "message": segments,
        "message_id": message_id,
        "time": time_s,
        "sender": {"id": sender_id, "name": sender_name},
    }
    if stream_request_id is not None:
        content["stream_request_id"] = safe_request_id(stream_request_id)
    if interrupted:
        content["interrupted"] = True
    if reply_to is not None:
        content["reply_to"] = reply_to
    return _push(request_id, "message", {"id": contact, "type": "message", "content": content}, seq)


def recall_push(
    request_id: str, contact: str, message_id: int, *, seq: int | None = None
) -> dict[str, Any]:
    """A recall push (`type: del_msg`); `seq` is written as the frame's top-level "seq"."""
    return _push(
        request_id,
        "del_msg",
        {"id": contact, "type": "del_msg", "content": {"message_id": message_id}},
        seq,
    )


def push_frame(push: Push) -> dict[str, Any]:
    """The frame carrying an outbox push (a message or a recall), with its seq."""
    if push.kind == "recall":
        return recall_push(push.push_id, push.contact, push.message_id, seq=push.seq)
    return message_push(
        push.push_id,
        push.contact,
        push.segments,
        push.message_id,
        push.time,
        push.sender_id,
        push.sender_name,
        push.stream_request_id,
        seq=push.seq,
        interrupted=push.interrupted,
        reply_to=push.reply_to,
    )


# ----- plain HTTP answers (same port) ----------------------------------------------------------


def http_success(data: Any) -> dict[str, Any]:
    """The body of a successful HTTP answer: `{"code": 0, "message": "success", "data"}`."""
    return {"code": 0, "message": "success", "data": data}


def http_failure(reason: str, error: ErrorCode) -> dict[str, Any]:
    """The body of a failed HTTP answer, shaped like a failure frame's."""
    return {"code": 1, "message": "failed", "data": {"reason": reason, "error": str(error)}}
