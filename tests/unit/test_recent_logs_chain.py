"""The console's log ring in a bridge whose logging `configure_logging` never set up (run
in-process): `ensure_recent_logs` adds it once, and the output is still printed. A subprocess,
so the test session's own structlog setup is never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, structlog
from bridge.logging import RECENT_LOGS, ensure_recent_logs

ensure_recent_logs()
ensure_recent_logs()  # a second console (another bridge in the process) adds nothing
chain = structlog.get_config()["processors"]
structlog.get_logger("bridge.demo").warning("demo.event", user="u1", token="t0ps3cret")
print("RING " + json.dumps([sum(p is RECENT_LOGS for p in chain), RECENT_LOGS.since(0)]))
"""


def test_the_ring_joins_a_default_structlog_chain_once() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    ring_line = next(line for line in out.stdout.splitlines() if line.startswith("RING "))
    count, entries = json.loads(ring_line[5:])
    assert count == 1
    [entry] = entries
    assert entry["event"] == "demo.event" and entry["level"] == "warning"
    assert entry["fields"] == {"user": "u1", "token": "***"}
    # Still printed by structlog's own renderer, redacted as the ring is.
    printed = next(line for line in out.stdout.splitlines() if "demo.event" in line)
    assert "user=u1" in printed and "t0ps3cret" not in printed


def test_secrets_never_reach_the_console_ring() -> None:
    """The generated admin code stays out of the ring; secrets nested in a dict or under a
    name that merely contains a secret word are redacted."""
    from bridge.logging import RecentLogs, _redact

    ring = RecentLogs()
    ring(None, "warning", _redact(None, "warning", {"event": "admin_code.generated", "code": "S3"}))
    event = {
        "event": "http.call",
        "headers": {"Authorization": "Bearer abc", "Accept": "x"},
        "x_api_key": "k",
        "session_cookie": "c",
    }
    ring(None, "info", _redact(None, "info", event))
    shown = repr(ring.since(0))
    assert "S3" not in shown and "abc" not in shown and "'k'" not in shown and "'c'" not in shown
    assert "Accept" in shown
