"""Injected faults: the next `count` POST /agents/{id} calls (optionally one agent's) misbehave.

Two phases, so that a queued stream fault is not used up by a call that fails on its own:
- "early" kinds (the documented error codes, http_500, http_502_html) hit the next call at once,
  before the key, the rate limit or the body are even looked at, as a broken proxy or server would;
- "accepted" kinds (slow, stall, drop, error_midstream, style, non_stream_when_streaming) hit the
  next call that passed every natural check. style, error_midstream and non_stream_when_streaming
  only match `stream: true` calls; slow, stall and drop match either kind (a non-streamed call is
  slowed, held without an answer, or cut without an answer).
Every accepted kind also takes the style params, e.g. `inject("drop", after=2, delta_key="openai")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.momoai.sandbox.errors import ERRORS

HTTP_KINDS = ("http_500", "http_502_html")
EARLY_KINDS = (*ERRORS, *HTTP_KINDS)
STREAM_ONLY_KINDS = ("style", "error_midstream", "non_stream_when_streaming")
ACCEPTED_KINDS = ("slow", "stall", "drop", *STREAM_ONLY_KINDS)
STYLE_PARAMS = {"delta_key", "final", "keepalive", "newlines", "split"}
PARAMS: dict[str, set[str]] = {
    **{code: {"message", "details"} for code in ERRORS},
    "RATE_LIMIT": {"message", "details", "retry_after"},
    "http_500": set(),
    "http_502_html": set(),
    "slow": {"delay"} | STYLE_PARAMS,
    "stall": {"after"} | STYLE_PARAMS,
    "drop": {"after"} | STYLE_PARAMS,
    "error_midstream": {"after", "code", "message", "details"} | STYLE_PARAMS,
    "style": set(STYLE_PARAMS),
    "non_stream_when_streaming": set(),
}
CHOICES = {
    "delta_key": ("delta", "content", "openai"),
    "final": ("usage", "done_marker", "none"),
    "newlines": ("blank", "single", "crlf"),
}
Phase = Literal["early", "accepted"]


@dataclass(frozen=True, slots=True)
class Style:
    delta_key: str = "delta"
    final: str = "usage"
    keepalive: bool = False
    newlines: str = "blank"
    split: bool = False

    @property
    def separator(self) -> bytes:
        return {"blank": b"\n\n", "single": b"\n", "crlf": b"\r\n\r\n"}[self.newlines]


DEFAULT_STYLE = Style()


@dataclass(slots=True)
class Fault:
    kind: str
    count: int = 1
    agent_id: int | None = None
    # Validated params, defaults filled in (what the control endpoint echoes back).
    params: dict[str, Any] = field(default_factory=dict)
    style: Style = DEFAULT_STYLE

    @property
    def phase(self) -> Phase:
        return "early" if self.kind in EARLY_KINDS else "accepted"

    @property
    def after(self) -> int:
        return int(self.params.get("after", 0))

    def matches(self, phase: Phase, agent_ref: str, stream: bool) -> bool:
        if self.phase != phase:
            return False
        if self.agent_id is not None and agent_ref != str(self.agent_id):
            return False
        return stream or self.kind not in STREAM_ONLY_KINDS

    def to_api(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "agent_id": self.agent_id, **self.params}


def _number(name: str, value: Any, *, integer: bool, minimum: float) -> float:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} >= {minimum:g}, got {value!r}")
    return value


def make_fault(kind: str, count: int = 1, **params: Any) -> Fault:
    """A validated fault; ValueError names the kind or param that is wrong."""
    if kind not in PARAMS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(PARAMS)}")
    count = int(_number("count", count, integer=True, minimum=1))
    agent_id = params.pop("agent_id", None)
    if agent_id is not None:
        agent_id = int(_number("agent_id", agent_id, integer=True, minimum=-(2**63)))
    unknown = set(params) - PARAMS[kind]
    if unknown:
        raise ValueError(
            f"{kind} takes no param(s) {sorted(unknown)}; it takes {sorted(PARAMS[kind])}"
        )

    clean: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("after",):
            clean[name] = int(_number(name, value, integer=True, minimum=0))
        elif name in ("delay", "retry_after"):
            clean[name] = _number(name, value, integer=False, minimum=0)
        elif name in CHOICES:
            if value not in CHOICES[name]:
                raise ValueError(f"{name} must be one of {CHOICES[name]}, got {value!r}")
            clean[name] = value
        elif name in ("keepalive", "split"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean, got {value!r}")
            clean[name] = value
        elif not isinstance(value, str):  # code, message, details
            raise ValueError(f"{name} must be a string, got {value!r}")
        else:
            clean[name] = value
    defaults: dict[str, Any] = {
        "RATE_LIMIT": {"retry_after": 1},
        "slow": {"delay": 0.2},
        "stall": {"after": 1},
        "drop": {"after": 1},
        "error_midstream": {"after": 1, "code": "INTERNAL_ERROR"},
    }.get(kind, {})
    clean = {**defaults, **clean}
    style = Style(**{k: v for k, v in clean.items() if k in STYLE_PARAMS})
    return Fault(kind=kind, count=count, agent_id=agent_id, params=clean, style=style)


def fault_from_json(body: Any) -> Fault:
    """The control endpoint's `{"kind", "count", ...params}`; ValueError when unusable."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    params = dict(body)
    kind = params.pop("kind", None)
    if not isinstance(kind, str):
        raise ValueError("kind must be a string")
    return make_fault(kind, params.pop("count", 1), **params)


class FaultQueue:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, phase: Phase, agent_ref: str, stream: bool) -> Fault | None:
        """Use up one application of the oldest fault matching this call, if any."""
        for fault in self._faults:
            if fault.matches(phase, agent_ref, stream):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def pending(self) -> list[Fault]:
        return list(self._faults)

    def __len__(self) -> int:
        return len(self._faults)
