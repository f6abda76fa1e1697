"""Pure assembly of OpenAI `chat.completion.chunk` dicts into neutral reply events.

Tool calls arrive fragmented: the first fragment of an index carries its name, later fragments
append to `function.arguments`. Each index gets `started` on its first fragment, `pending` with the
arguments so far on every argument fragment, and `finished` with the whole text once the model
is done (a finish_reason, or the end of the stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.models import Delta, Done, ReplyEvent, ToolCall


@dataclass(slots=True)
class _Call:
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    started: bool = False


class ChunkAssembler:
    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> list[ReplyEvent]:
        usage = chunk.get("usage")
        if usage is not None and isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return []
        out: list[ReplyEvent] = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the hub shows choice 0 only
            delta = choice.get("delta")
            if delta:
                # Servers name the thinking text differently (DeepSeek, vLLM, OpenRouter).
                reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                content = delta.get("content") or ""
                if reasoning or content:
                    out.append(Delta(str(content), str(reasoning)))
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    for frag in tool_calls:
                        out.extend(self._tool_fragment(frag))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                out.extend(self._finish_calls())
        return out

    def _tool_fragment(self, frag: dict[str, Any]) -> list[ReplyEvent]:
        index = int(frag.get("index") or 0)
        call = self._calls.setdefault(index, _Call())
        fn = frag.get("function") or {}
        if fn.get("name") and not call.name:
            call.name = str(fn["name"])
        out: list[ReplyEvent] = []
        if not call.started:
            call.started = True
            out.append(ToolCall(call.name, "started", "", index=index))
        if fn.get("arguments"):
            call.arguments.append(str(fn["arguments"]))
            out.append(ToolCall(call.name, "pending", "".join(call.arguments), index=index))
        return out

    def _finish_calls(self) -> list[ReplyEvent]:
        out: list[ReplyEvent] = [
            ToolCall(c.name, "finished", "".join(c.arguments), index=i)
            for i, c in sorted(self._calls.items())
        ]
        self._calls.clear()
        return out

    def done(self) -> Done | None:
        """The closing event, or None when the stream ended without the model finishing."""
        if self.finish_reason is None:
            return None
        return Done(finish_reason=self.finish_reason, usage=self.usage)


def merge_deltas(events: list[ReplyEvent]) -> list[ReplyEvent]:
    """Consecutive text deltas as one (what arrived in one read becomes one update frame)."""
    if len(events) < 2:
        return events
    out: list[ReplyEvent] = []
    # A run of deltas is joined once at its end, not re-concatenated delta by delta.
    texts: list[str] = []
    reasonings: list[str] = []
    for event in events:
        if isinstance(event, Delta):
            texts.append(event.text)
            reasonings.append(event.reasoning)
            continue
        if texts:
            out.append(_joined(texts, reasonings))
            texts, reasonings = [], []
        out.append(event)
    if texts:
        out.append(_joined(texts, reasonings))
    return out


def _joined(texts: list[str], reasonings: list[str]) -> Delta:
    return Delta(text="".join(texts), reasoning="".join(reasonings))
