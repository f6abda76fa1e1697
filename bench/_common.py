"""What the benchmarks (hub_bench.py, stream_bench.py, qq_bench.py) share: machine info and /proc
readers, free ports, the bridge options and the output options of their command lines, the
header lines they print, cProfile printing and how a run's main coroutine becomes an exit code.

Not a benchmark itself; the benchmarks import it with ``bench/`` on ``sys.path``. It imports
nothing hub_bench.py's own server subprocesses (``_bare``, ``_exec``) would not load anyway: their
start time and memory are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import pstats
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MOMO_NAME = "Momo"  # the sandbox's demo character every bridge bench talks to
PASSWORD = "bench-password-123"  # of every account the benches create on the sandbox


class BenchError(Exception):
    """The benchmark could not measure what it set out to (server died, login failed, ...)."""


# ================================================================================================
# machine info and /proc readers (sync: tiny reads of procfs)
# ================================================================================================


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def proc_status_kb(pid: int, key: str) -> int:
    """A kB figure of /proc/<pid>/status (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(cpu: int | None) -> float:
    """Busy (non-idle, non-iowait) seconds of one CPU, or of all CPUs when ``cpu`` is None."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            ticks = [int(x) for x in parts[1:]]
            busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # minus idle and iowait
            return busy / os.sysconf("SC_CLK_TCK")
    return 0.0


def machine_line(cpus: list[int]) -> str:
    """The ``machine :`` header line every benchmark prints first."""
    return (
        f"machine : nproc={len(cpus)} (os.cpu_count={os.cpu_count()}) cpu={cpu_model()!r} "
        f"mem={mem_total_gib():.1f} GiB kernel={platform.release()} loadavg={load_avg()}"
    )


def machine_info(cpus: list[int], **extra: str) -> dict[str, Any]:
    """The ``machine`` entry of a benchmark's JSON results."""
    return {
        "nproc": len(cpus),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        **extra,
    }


# ================================================================================================
# the source under test, ports, settings
# ================================================================================================


def resolve_src(path: str) -> Path:
    src = Path(path).resolve()
    if not (src / "bridge" / "cli.py").is_file():
        raise BenchError(f"--src {src} has no bridge/cli.py")
    return src


def source_state(src: Path) -> str:
    """``<commit>`` plus the number of changed files, so a result names the code it measured."""
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}" + (f" + {len(dirty)} modified file(s)" if dirty else " (clean)")


def print_bridge_software(src: Path) -> None:
    """The ``software`` and ``source`` header lines of the benchmarks that run a bridge."""
    import aiohttp  # not at the top: hub_bench.py's bare servers import this module, and are measured

    print(
        f"software: python={platform.python_version()} websockets={websockets.__version__} "
        f"aiohttp={aiohttp.__version__} ({sys.executable})"
    )
    print(f"source  : {src} at {source_state(src)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def momohub_lines(base_url: str, email: str) -> list[str]:
    """The bridge config's ``[momohub]`` section: the sandbox, signed in as ``email``."""
    return [
        "[momohub]",
        f"base_url = {json.dumps(base_url)}",
        f"email = {json.dumps(email)}",
        f"password = {json.dumps(PASSWORD)}",
        "list_public = true",
        f'default_character = "{MOMO_NAME}"',
    ]


def write_json(path: str, results: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


# ================================================================================================
# command line
# ================================================================================================


def add_bridge_args(p: argparse.ArgumentParser, *, profile_help: str) -> None:
    """--src, --bridge-log-level, --no-pin and --profile-bridge, in that order."""
    p.add_argument("--src", default=str(REPO), help="source tree the servers run from")
    p.add_argument(
        "--bridge-log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="bridge [log] level (default warning)",
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    p.add_argument("--profile-bridge", action="store_true", help=profile_help)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--json, --keep and --strict, in that order."""
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, dbs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


# ================================================================================================
# running
# ================================================================================================


def cancel_on_sigterm() -> None:
    """SIGTERM cancels the running main task, so its cleanup stops every server it started."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)


def print_profile(
    path: Path, top: int, *, missing: str, title: str, cumulative: str | None
) -> None:
    """A cProfile dump's top ``top`` rows by own time; with ``cumulative`` (a header line, or
    "" for none) then by cumulative time. ``missing`` is printed when there is no dump."""
    if not path.is_file():
        print(missing)
        return
    print(title)
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    if cumulative is None:
        return
    if cumulative:
        print(cumulative)
    stats.sort_stats("cumulative").print_stats(top)


def run_bench(coro: Any) -> int:
    """Run a benchmark's main coroutine; failures and Ctrl-C become exit codes, not tracebacks."""
    try:
        return asyncio.run(coro)
    except BenchError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted", file=sys.stderr)
        return 130


# ----- server subprocesses ----------------------------------------------------------------------

# Every server a benchmark launched and has not reaped: killed at exit, whatever happened.
LIVE: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in LIVE:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def launch_server(
    argv: list[str] | tuple[str, ...],
    log_path: Path,
    *,
    cwd: Path,
    pythonpath: Path | None = None,
    cpu: int | None = None,
) -> subprocess.Popen[bytes]:
    """A server process writing its output to ``log_path`` (appended), in a session of its own
    (a Ctrl-C of ours reaches it only through our own shutdown), killed by the kernel if this
    process dies and at exit if still running. The environment's MOMOBRIDGE_ settings are left
    out: the server runs on its config file alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(cpu),
        )
    LIVE.append(proc)
    return proc


def child_setup(cpu: int | None) -> Callable[[], None]:
    """``preexec_fn`` of a launched server: its CPU, and death with this benchmark. (No exec
    wrapper here: its own interpreter start would be counted as the server's.)"""
    prctl: Any = None
    with contextlib.suppress(Exception):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if prctl is not None:
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup
