"""Neutral reply events rendered as `pending` / `update`… / `completed` (or a failure) frames.

A renderer writes through its connection's send queue, which never blocks, so it can end a
stream from any path (a cancellation included). It writes exactly one terminal frame, and holds
events back until the request's own answer (the ack) has gone out: a quick reply must not
overtake it.
"""

from __future__ import annotations

from typing import Any, Protocol

from adapters.miochat import protocol as P
from bridge.models import Delta, Done, Failed, ReplyEvent, ToolCall


class FrameSink(Protocol):
    def send_frame(self, frame: dict[str, Any]) -> bool: ...


class StreamRenderer:
    __slots__ = ("_held", "finished", "protocol", "request_id", "seq", "sink", "type")

    def __init__(
        self, sink: FrameSink, request_id: P.RequestId, protocol: str, ftype: str, *, held: bool
    ) -> None:
        self.sink = sink
        self.request_id = request_id
        self.protocol = protocol
        self.type = ftype
        self.seq = 0
        self.finished = False
        # Events that arrived before open(); None once open.
        self._held: list[ReplyEvent] | None = [] if held else None

    def open(self, *, pending: bool = True) -> None:
        """The ack is out: send `pending`, then whatever was held back."""
        held, self._held = self._held or [], None
        if pending and not self.finished:
            self.sink.send_frame(
                P.stream_frame(self.request_id, self.protocol, self.type, "pending")
            )
        for event in held:
            self.render(event)

    def render(self, event: ReplyEvent) -> None:
        if self.finished:
            return
        if self._held is not None:
            self._held.append(event)
            return
        frame: dict[str, Any]
        if isinstance(event, Delta):
            data: dict[str, Any] = {
                "index": 0,
                "seq": self.seq,
                "chunk": event.text,
                "tool_call": None,
            }
            if event.reasoning:
                data["reasoning_content"] = event.reasoning
            self.seq += 1
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "update", data)
        elif isinstance(event, ToolCall):
            call: dict[str, Any] = {
                "name": event.name,
                "action": event.action,
                "params": event.params,
            }
            if event.result is not None:
                call["result"] = event.result
            data = {"index": event.index, "seq": self.seq, "chunk": "", "tool_call": call}
            self.seq += 1
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "update", data)
        elif isinstance(event, Done):
            done: dict[str, Any] = {"finish_reason": event.finish_reason}
            if event.usage:
                done["usage"] = event.usage
            self.finished = True
            frame = P.stream_frame(self.request_id, self.protocol, self.type, "completed", done)
        else:
            assert isinstance(event, Failed)
            self.finished = True
            frame = P.failure(self.request_id, self.protocol, self.type, event.error, event.reason)
        self.sink.send_frame(frame)

    async def __call__(self, event: ReplyEvent) -> None:
        """As a Sessions listener."""
        self.render(event)
