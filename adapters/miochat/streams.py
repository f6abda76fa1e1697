"""Neutral reply events rendered as `pending` / `update`… / `completed` (or a failure) frames.

A renderer writes through its connection's send queue, which never blocks, so it can end a
stream from any path (a cancellation included). It writes exactly one terminal frame, and holds
events back until the request's own answer (the ack) has gone out: a quick reply must not
overtake it.

While the connection's writer is busy (the peer reads slower than the reply arrives), text
deltas are gathered instead of queued one frame each, and go out as one update when the writer
comes back for more: a slow reader costs fewer, larger frames, not a longer queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from adapters.miochat import protocol as P
from bridge.models import Delta, Done, Failed, ReplyEvent, ToolCall


class FrameSink(Protocol):
    def send_frame(self, frame: dict[str, Any]) -> bool: ...

    def busy(self) -> bool:
        """Frames are waiting for the peer: a new one would only queue behind them."""
        ...

    def defer(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` when the writer comes back for more frames."""
        ...


class StreamRenderer:
    __slots__ = (
        "_held",
        "_reasoning",
        "_text",
        "finished",
        "protocol",
        "request_id",
        "seq",
        "sink",
        "type",
    )

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
        # Deltas gathered while the writer is busy (None: nothing gathered).
        self._text: list[str] | None = None
        self._reasoning: list[str] = []

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
            if self._text is not None:
                self._text.append(event.text)
                self._reasoning.append(event.reasoning)
                return
            if self.sink.busy():
                self._text = [event.text]
                self._reasoning = [event.reasoning]
                self.sink.defer(self.flush)
                return
            self._send_delta(event.text, event.reasoning)
            return
        # Gathered text goes before whatever comes next.
        self.flush()
        if isinstance(event, ToolCall):
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

    def flush(self) -> None:
        """Send the deltas gathered while the writer was busy, as one update."""
        text = self._text
        if text is None:
            return
        self._text = None
        if not self.finished:
            self._send_delta("".join(text), "".join(self._reasoning))

    def _send_delta(self, text: str, reasoning: str) -> None:
        data: dict[str, Any] = {"index": 0, "seq": self.seq, "chunk": text, "tool_call": None}
        if reasoning:
            data["reasoning_content"] = reasoning
        self.seq += 1
        self.sink.send_frame(
            P.stream_frame(self.request_id, self.protocol, self.type, "update", data)
        )

    async def __call__(self, event: ReplyEvent) -> None:
        """As a Sessions listener."""
        self.render(event)
