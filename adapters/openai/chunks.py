"""Pure assembly of OpenAI `chat.completion.chunk` dicts into neutral reply events.

Tool calls arrive fragmented: the first fragment of an index carries its name, later fragments
append to `function.arguments`. Each index gets `started` on its first fragment, `pending` with the
arguments so far on every argument fragment, and `finished` with the whole text once the model
is done (a finish_reason, or the end of the stream).

A chunk whose structure is of the wrong type (a `delta`, a `tool_calls` list, a tool call or its
`function` that is not what the API says) is `MalformedChunk`, which fails the stream: guessing
what such a provider meant could relay a reply that is not the model's, and clients that check
chunks against the API's schema (the Vercel AI SDK) refuse them too. Scalars of the wrong type (a
number as `content`) keep being relayed as their text; a choice that is not an object is skipped,
as it cannot be choice 0, the one the hub shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.json_names import json_type_name
from bridge.models import Delta, Done, ReplyEvent, ToolCall


class MalformedChunk(ValueError):
    """A chunk whose structure is not the API's; `str(e)` says which part, for a person."""


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
                # Only a dict has `.get` among JSON values, and a try costs nothing until it
                # catches: the well-formed chunk pays no type check on this, the hot path.
                try:
                    # Servers name the thinking text differently (DeepSeek, vLLM, OpenRouter).
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                except AttributeError:
                    raise MalformedChunk(
                        f"the delta is {json_type_name(delta)}, not an object"
                    ) from None
                content = delta.get("content") or ""
                if reasoning or content:
                    out.append(Delta(str(content), str(reasoning)))
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    if type(tool_calls) is not list:
                        raise MalformedChunk(
                            f"tool_calls is {json_type_name(tool_calls)}, not a list"
                        )
                    for frag in tool_calls:
                        out.extend(self._tool_fragment(frag))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                out.extend(self._finish_calls())
        return out

    def _tool_fragment(self, frag: Any) -> list[ReplyEvent]:
        if type(frag) is not dict:
            raise MalformedChunk(f"a tool call is {json_type_name(frag)}, not an object")
        try:
            index = int(frag.get("index") or 0)
        except (TypeError, ValueError):
            raise MalformedChunk(
                f"a tool call's index is {json_type_name(frag['index'])}, not an integer"
            ) from None
        fn = frag.get("function") or {}
        if type(fn) is not dict:
            raise MalformedChunk(f"a tool call's function is {json_type_name(fn)}, not an object")
        call = self._calls.setdefault(index, _Call())
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
