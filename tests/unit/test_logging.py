"""The one logging pipeline: structlog and stdlib (libraries, asyncio, warnings, uncaught
exceptions) all leave as JSON lines, tracebacks inside them. Each case is a real subprocess,
so the global logging state of the test session is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, gc, logging, sys, threading, warnings
import structlog
from bridge.logging import configure_logging

level, fmt, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(repeat):
    configure_logging(level, fmt)
log = structlog.get_logger("bridge.demo")

log.debug("own.debug")
log.info("own.info", user="u1", token="t0ps3cret")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("x").exception("stdlib.boom")
    log.exception("structlog.boom", user="u2")
logging.getLogger("x").error("two\nlines %s", "here")
logging.getLogger("websockets.client").debug("> Authorization: Bearer s3cret")
logging.getLogger("aiohttp.access").info("library.info")
logging.getLogger("aiosqlite").warning("library.warning")
from aiohttp.http_exceptions import BadHttpMessage
for exc in (BadHttpMessage("bad.request.from.peer"), RuntimeError("handler.crash")):
    try:
        raise exc
    except Exception:
        logging.getLogger("aiohttp.server").exception("Error handling request %s", exc)
warnings.warn("careful", UserWarning)


async def fails():
    raise RuntimeError("never retrieved")


async def main():
    task = asyncio.get_running_loop().create_task(fails())
    while not task.done():
        await asyncio.sleep(0)
    del task
    gc.collect()  # the task's destructor reports "Task exception was never retrieved"
    loop = asyncio.get_running_loop()
    loop.call_exception_handler({"message": "handler.called", "exception": KeyError("k")})


asyncio.run(main())


class Broken:
    def __del__(self):
        raise ValueError("in __del__")


Broken()
gc.collect()
thread = threading.Thread(target=lambda: {}["missing"], name="worker")
thread.start()
thread.join()
raise SystemError("uncaught at top level")
"""


def run(
    level: str = "info", fmt: str = "json", repeat: int = 1
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt, str(repeat)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_lines(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    out = []
    for stream in (r.stderr, r.stdout):
        for line in stream.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {line!r}\n---\n{r.stderr}") from None
    return out


def by_event(entries: list[dict[str, Any]], needle: str) -> dict[str, Any]:
    found = [e for e in entries if needle in e["event"]]
    assert len(found) == 1, (needle, entries)
    return found[0]


def test_every_line_is_json_and_tracebacks_are_fields() -> None:
    r = run()
    assert r.returncode == 1  # the uncaught exception still fails the process
    entries = json_lines(r)

    # A malformed request is the peer's error (answered 400): not logged; a crash still is.
    assert not [e for e in entries if "bad.request.from.peer" in e["event"]]
    crash = by_event(entries, "handler.crash")
    assert crash["level"] == "error" and "RuntimeError" in crash["exception"]

    stdlib = by_event(entries, "stdlib.boom")
    assert stdlib["level"] == "error" and stdlib["logger"] == "x"
    assert (
        stdlib["exception"].startswith("Traceback") and "ZeroDivisionError" in stdlib["exception"]
    )
    ours = by_event(entries, "structlog.boom")
    assert ours["logger"] == "bridge.demo" and ours["user"] == "u2"
    assert "ZeroDivisionError: division by zero" in ours["exception"]

    never = by_event(entries, "Task exception was never retrieved")
    assert never["logger"] == "asyncio" and "RuntimeError: never retrieved" in never["exception"]
    handler = by_event(entries, "handler.called")
    assert handler["logger"] == "asyncio" and "KeyError" in handler["exception"]

    assert "two\nlines here" == by_event(entries, "two")["event"]
    assert by_event(entries, "careful")["logger"] == "py.warnings"
    ignored = by_event(entries, "exception_ignored")
    assert (
        "Broken.__del__" in ignored["object"] and "ValueError: in __del__" in ignored["exception"]
    )
    uncaught = [e for e in entries if e["event"] == "uncaught_exception"]
    assert [e.get("thread") for e in uncaught] == ["worker", None]
    assert "KeyError: 'missing'" in uncaught[0]["exception"]
    assert uncaught[1]["level"] == "critical" and "SystemError" in uncaught[1]["exception"]

    # Every entry carries the same fields, whichever way it was logged.
    for e in entries:
        assert {"event", "level", "logger", "timestamp"} <= set(e), e


def test_levels_ours_follow_the_config_libraries_stay_at_warning() -> None:
    entries = json_lines(run(level="info"))
    events = [e["event"] for e in entries]
    assert "own.info" in events and "own.debug" not in events
    assert "library.warning" in events and "library.info" not in events

    r = run(level="debug")
    entries = json_lines(r)
    events = [e["event"] for e in entries]
    assert "own.debug" in events
    # Library debug output (websockets logs handshake headers) stays off even when debugging.
    assert "library.info" not in events and "s3cret" not in r.stderr

    events = [e["event"] for e in json_lines(run(level="error"))]
    assert "own.info" not in events and "library.warning" not in events
    assert "stdlib.boom" in events and "structlog.boom" in events


def test_secrets_are_redacted() -> None:
    entry = by_event(json_lines(run()), "own.info")
    assert entry["token"] == "***" and entry["user"] == "u1"


def test_auto_without_a_terminal_is_json_and_reconfiguring_does_not_duplicate() -> None:
    entries = json_lines(run(fmt="auto", repeat=3))
    assert len([e for e in entries if e["event"] == "own.info"]) == 1


def test_console_format_is_readable_text() -> None:
    r = run(fmt="console")
    assert r.returncode == 1
    assert "own.info" in r.stderr and not r.stderr.lstrip().startswith("{")
    assert "ZeroDivisionError: division by zero" in r.stderr
    assert "t0ps3cret" not in r.stderr
