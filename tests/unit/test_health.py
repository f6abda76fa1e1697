"""The readiness registry: states, `since`, probes, waiting for a state."""

from __future__ import annotations

import asyncio

import pytest

from bridge import health as H
from bridge.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_since_changes_only_with_the_state() -> None:
    clock = Clock()
    h = Health(clock)
    h.set("momohub", "unreachable", "connection refused")
    first = h.get("momohub")
    assert first is not None and first.since == 1000.0
    clock.now = 1005.0
    h.set("momohub", "unreachable", "timed out")  # same state, new detail
    again = h.get("momohub")
    assert again is not None and again.since == 1000.0 and again.detail == "timed out"
    clock.now = 1010.0
    h.set("momohub", "ok")
    ok = h.get("momohub")
    assert ok is not None and (ok.state, ok.since, ok.detail) == ("ok", 1010.0, "")


def test_ready_only_when_every_component_is_ok() -> None:
    h = Health(Clock())
    assert h.ready and h.snapshot_now() == {"status": "ok", "components": {}}
    h.set("database", "ok")
    report = h.reporter("openai:fake")  # registered: "starting" until it reports
    assert not h.ready
    snap = h.snapshot_now()
    assert snap["status"] == "degraded"
    assert snap["components"]["openai:fake"] == {
        "state": "starting",
        "since": 1000.0,
        "detail": "",
    }
    report("ok", "3 models listed")
    assert h.ready and h.snapshot_now()["components"]["openai:fake"]["detail"] == "3 models listed"
    h.register("openai:fake")  # registering again does not reset a state
    assert h.ready
    h.set("framework:ws://x", "disconnected", "refused")
    assert not h.ready
    h.remove("framework:ws://x")
    assert h.ready


def test_detail_is_bounded() -> None:
    h = Health()
    h.set("x", "error", "y" * 10_000)
    state = h.get("x")
    assert state is not None and len(state.detail) == H.MAX_DETAIL


async def test_probes_run_before_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "PROBE_TIMEOUT", 0.2)
    h = Health()
    calls: list[str] = []

    def sync_probe() -> None:
        calls.append("sync")
        h.set("link", "disconnected", f"attempt {len(calls)}")

    async def async_probe() -> None:
        calls.append("async")
        h.set("database", "ok")

    def broken_probe() -> None:
        raise RuntimeError("bug")

    stuck = asyncio.Event()

    async def stuck_probe() -> None:
        await stuck.wait()  # never set: the snapshot must not wait for it past the timeout

    for probe in (sync_probe, broken_probe, stuck_probe, async_probe):
        h.add_probe(probe)
    snap = await asyncio.wait_for(h.snapshot(), timeout=10)
    assert calls == ["sync", "async"]
    assert snap["components"]["database"]["state"] == "ok"
    assert snap["components"]["link"]["state"] == "disconnected"
    assert snap["status"] == "degraded"


async def test_wait_for_a_state() -> None:
    h = Health()
    h.register("momohub")
    waiter = asyncio.create_task(h.wait_for("momohub", lambda s: s in ("auth_failed", "ok")))
    h.set("momohub", "unreachable")
    await asyncio.sleep(0)  # let the waiter see a state it does not want
    assert not waiter.done()
    h.set("momohub", "auth_failed", "Invalid email or password")
    assert await asyncio.wait_for(waiter, timeout=10) == "auth_failed"
    # Already there: returns at once.
    assert await asyncio.wait_for(h.wait_for("momohub", lambda s: s != "ok"), 10) == "auth_failed"
