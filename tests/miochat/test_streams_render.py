"""Reply events rendered as stream frames, into a recording sink (plain data, no socket)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.miochat.streams import StreamRenderer
from bridge.errors import ErrorCode
from bridge.models import Delta, Done, Failed, ToolCall


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.writer_busy = False
        self.deferred: list[Callable[[], None]] = []

    def send_frame(self, frame: dict[str, Any]) -> bool:
        self.frames.append(frame)
        return True

    def busy(self) -> bool:
        return self.writer_busy

    def defer(self, flush: Callable[[], None]) -> None:
        self.deferred.append(flush)

    def writer_returns(self) -> None:
        self.writer_busy = False
        deferred, self.deferred = self.deferred, []
        for flush in deferred:
            flush()

    def updates(self) -> list[tuple[int, str, str | None]]:
        return [
            (f["data"]["seq"], f["data"]["chunk"], f["data"].get("reasoning_content"))
            for f in self.frames
            if f.get("message") == "update"
        ]

    def kinds(self) -> list[str]:
        return [f.get("message", "") for f in self.frames]


def renderer(sink: Sink) -> StreamRenderer:
    r = StreamRenderer(sink, "r1", "onebot", "message", held=False)
    r.open()
    return r


def test_idle_writer_gets_one_frame_per_delta() -> None:
    sink = Sink()
    r = renderer(sink)
    for t in ("a", "b", "c"):
        r.render(Delta(t))
    r.render(Done("stop"))
    assert sink.updates() == [(0, "a", None), (1, "b", None), (2, "c", None)]
    assert sink.kinds() == ["pending", "update", "update", "update", "completed"]


def test_busy_writer_gathers_deltas_into_one_update() -> None:
    sink = Sink()
    r = renderer(sink)
    r.render(Delta("a"))
    sink.writer_busy = True
    for t, why in (("b", ""), ("c", "hm"), ("d", "m")):
        r.render(Delta(t, why))
    assert sink.updates() == [(0, "a", None)]  # nothing queued behind the busy writer
    assert len(sink.deferred) == 1  # one flush asked for, however many deltas
    sink.writer_returns()
    assert sink.updates() == [(0, "a", None), (1, "bcd", "hmm")]
    r.render(Delta("e"))
    assert sink.updates()[-1] == (2, "e", None)


def test_gathered_text_goes_before_a_tool_call_and_the_end() -> None:
    sink = Sink()
    r = renderer(sink)
    sink.writer_busy = True
    r.render(Delta("x"))
    r.render(Delta("y"))
    r.render(ToolCall(0, "search", "started", {"q": "cats"}))
    r.render(Delta("z"))
    r.render(Done("stop"))
    assert sink.kinds() == ["pending", "update", "update", "update", "completed"]
    assert [f["data"]["chunk"] for f in sink.frames[1:4]] == ["xy", "", "z"]
    assert [f["data"]["seq"] for f in sink.frames[1:4]] == [0, 1, 2]
    sink.writer_returns()  # the flush the writer calls later finds nothing left
    assert sink.kinds()[-1] == "completed" and len(sink.frames) == 5


def test_failure_after_gathered_text_keeps_the_text_and_ends_once() -> None:
    sink = Sink()
    r = renderer(sink)
    sink.writer_busy = True
    r.render(Delta("partial"))
    r.render(Failed(ErrorCode.UPSTREAM_ERROR, "broke"))
    r.render(Delta("late"))  # after the end: dropped
    sink.writer_returns()
    assert sink.kinds() == ["pending", "update", "failed"]
    assert sink.frames[1]["data"]["chunk"] == "partial"
