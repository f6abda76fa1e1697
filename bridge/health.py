"""Readiness: what each upstream and resource is doing right now, for `GET /readyz`.

Components (MomoHub, each OpenAI provider, each bot-framework link, the database) report their
own state by name; the registry keeps the state, when it last *changed* (``since``: reporting the
same state again only refreshes the detail), and a human detail. The bridge is ready when every
component is ``ok``. A component that has not reported yet is ``starting`` (not ready).

Probes are callables run before each snapshot (sync or async, each bounded by a timeout), for
states that are cheaper to read on demand than to push (a database ping, a link's last error).

This is core: it never imports an adapter. Adapters get a ``reporter(name)`` callback or call
``set`` on the instance the composition root hands them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

OK = "ok"
STARTING = "starting"
# States used by the built-in components (others are allowed: anything but "ok" is not ready).
AUTH_FAILED = "auth_failed"
UNREACHABLE = "unreachable"
DISCONNECTED = "disconnected"
ERROR = "error"

# A report callback handed to an adapter: (state, detail).
Reporter = Callable[[str, str], None]
Probe = Callable[[], Awaitable[None] | None]

PROBE_TIMEOUT = 2.0
MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class ComponentState:
    state: str
    since: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since": round(self.since, 3), "detail": self.detail}


class Health:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._components: dict[str, ComponentState] = {}
        self._probes: list[Probe] = []
        self._changed = asyncio.Event()
        self._sections: dict[str, Any] = {}

    # ----- reporting ----------------------------------------------------------------------------

    def register(self, name: str, detail: str = "") -> None:
        """Declare a component before it has anything to say: ``starting`` until it reports."""
        if name not in self._components:
            self.set(name, STARTING, detail)

    def set(self, name: str, state: str, detail: str = "") -> None:
        detail = detail[:MAX_DETAIL]
        current = self._components.get(name)
        if current is not None and current.state == state:
            if current.detail != detail:
                self._components[name] = ComponentState(state, current.since, detail)
            return
        self._components[name] = ComponentState(state, self._clock(), detail)
        if current is not None:
            log.info(
                "health.changed", component=name, state=state, was=current.state, detail=detail
            )
        # Wake every waiter; each re-checks what it waits for.
        self._changed.set()
        self._changed = asyncio.Event()

    def reporter(self, name: str) -> Reporter:
        """A callback for one component (registers it as ``starting``)."""
        self.register(name)
        return lambda state, detail="": self.set(name, state, detail)

    def remove(self, name: str) -> None:
        self._components.pop(name, None)

    def add_probe(self, probe: Probe) -> None:
        self._probes.append(probe)

    # ----- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> ComponentState | None:
        return self._components.get(name)

    @property
    def ready(self) -> bool:
        return all(c.state == OK for c in self._components.values())

    async def run_probes(self) -> None:
        for probe in list(self._probes):
            try:
                result = probe()
                if inspect.isawaitable(result):
                    async with asyncio.timeout(PROBE_TIMEOUT):
                        await result
            except Exception:
                # A probe reports its own component's trouble; one that crashes is a bug.
                log.exception("health.probe_failed", probe=getattr(probe, "__qualname__", "?"))

    async def snapshot(self) -> dict[str, Any]:
        """The /readyz body (probes run first)."""
        await self.run_probes()
        return self.snapshot_now()

    def set_section(self, name: str, value: Any) -> None:
        """Another part of the /readyz body beside the components (a cluster's ``nodes``)."""
        self._sections[name] = value

    def snapshot_now(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ready else "degraded",
            "components": {name: c.to_json() for name, c in sorted(self._components.items())},
            **self._sections,
        }

    async def wait_for(self, name: str, predicate: Callable[[str], bool]) -> str:
        """Until component ``name`` is in a state the predicate accepts (no deadline of its own:
        callers wrap it in a timeout). Returns that state."""
        while True:
            current = self._components.get(name)
            if current is not None and predicate(current.state):
                return current.state
            await self._changed.wait()
