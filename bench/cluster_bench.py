#!/usr/bin/env python
"""Cluster benchmark: what running bridges as a cluster ([storage] url + [cluster] redis_url)
costs, each figure against a baseline measured in the same run (the machine is noisy).

(1) Push latency across nodes. Two bridges A and B on one PostgreSQL database and one Redis, an
    OpenAI-compatible upstream (tests/support/fake_openai.py, model ``echo``). One hub user has a
    tab on A and a tab on B; the tab on A sends N messages (closed loop) to ``model:fake/echo``.
    For each, the gap from the reply's push reaching the tab on A to the same push (same
    ``message_id``) reaching the tab on B is the cluster's added latency for a push. Baseline,
    interleaved message by message: another user with both tabs on A (same node, same clustered
    config). Then, for reference, the same two-tabs-on-one-node gap on a plain bridge (SQLite,
    no [cluster]). Prints p50/p99 of each gap and the added p50 (target < 2 ms).
(2) Heartbeat throughput per node, Redis configured vs not: K clients each closed-loop sending
    ``system/heartbeat`` for a few seconds against (a) a bridge with [cluster] + PostgreSQL and
    (b) a plain bridge (SQLite, no cluster), alternated a, b, a, b over ``--rounds``; prints the
    median round trips/s of each, their ratio (target >= 0.9) and the bridges' CPU seconds per
    1000 round trips (/proc/<pid>/stat over the measured windows).

Usage (from the repository root)::

    .venv/bin/python bench/cluster_bench.py            # normal run (~1-2 min)
    .venv/bin/python bench/cluster_bench.py --quick    # smoke run
    .venv/bin/python bench/cluster_bench.py --help

Needs Debian's postgresql and redis-server packages (started on free loopback ports by
tests/support/postgres.py and tests/support/redis_server.py, removed at the end). The bridges
run as ``python -m bridge.cli serve --config <temp toml>`` from ``--src``; the load generator
and the fake upstream run in this process. Every server is stopped on exit (and the bridges get
SIGKILL from the kernel if this process dies: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    HOST,
    LIVE,
    REPO,
    BenchError,
    cancel_on_sigterm,
    cpu_seconds,
    free_port,
    launch_server,
    machine_line,
    print_bridge_software,
    resolve_src,
    run_bench,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.fake_openai import FakeOpenAI
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer

READY_TIMEOUT = 60.0  # a bridge's /readyz must say ok (and list the cluster's nodes) within this
STOP_TIMEOUT = 10.0  # SIGTERM grace before SIGKILL
PUSH_TIMEOUT = 15.0  # one message's reply push must reach both tabs within this
OPEN_TIMEOUT = 20.0
ECHO = "model:fake/echo"
ADMIN_CODE = "bench-admin-code"
TARGET_ADDED_MS = 2.0
TARGET_RATIO = 0.9

# ================================================================================================
# bridges
# ================================================================================================


def bridge_config(
    tmp: Path,
    tag: str,
    port: int,
    *,
    log_level: str,
    dsn: str = "",
    redis_url: str = "",
    upstream: str = "",
) -> Path:
    data_dir = tmp / tag
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[server]",
        f'host = "{HOST}"',
        f"port = {port}",
        "[auth]",
        f'admin_code = "{ADMIN_CODE}"',
        "[storage]",
        f"path = {json.dumps(str(data_dir / 'bridge.db'))}",
    ]
    if dsn:
        lines.append(f"url = {json.dumps(dsn)}")
    if redis_url:
        lines += [
            "[cluster]",
            f"redis_url = {json.dumps(redis_url)}",
            f'node_id = "{tag}"',
            f'prefix = "bench-{tag.split("-")[0]}:"',  # one prefix per cluster of this run
        ]
    lines += ["[momohub]", "enabled = false", "[log]", f'level = "{log_level}"', 'format = "json"']
    if upstream:
        lines += [
            "[openai]",
            'default_model = "fake/echo"',
            "[[openai.providers]]",
            'name = "fake"',
            f"base_url = {json.dumps(upstream)}",
            'api_key = "sk-test"',
        ]
    path = data_dir / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Bridge:
    tag: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/api/gateway"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join("    " + s for s in self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"bridge {self.tag} exited with {self.proc.returncode}; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    async def get_json(self, http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with http.get(self.http + path) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            return r.status, body

    async def wait_ready(self, nodes: int = 0) -> None:
        """Until /readyz answers 200 (every component ok) and lists ``nodes`` cluster nodes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                self.check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    # 503 while a component (the upstream's model list, the cluster) starts.
                    status, body = await self.get_json(http, "/readyz")
                    if status == 200 and len(body.get("nodes") or []) >= nodes:
                        return
                if loop.time() > deadline:
                    raise BenchError(
                        f"bridge {self.tag} not ready after {READY_TIMEOUT:.0f} s; log "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  ! bridge {self.tag} ignored SIGTERM; killing it")
                with contextlib.suppress(OSError):
                    proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        if proc in LIVE:
            LIVE.remove(proc)


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    src: Path
    bridges: list[Bridge] = field(default_factory=list)

    def launch(self, tag: str, **cfg: str) -> Bridge:
        port = free_port()
        config = bridge_config(self.tmp, tag, port, log_level=self.args.bridge_log_level, **cfg)
        log_path = self.tmp / f"{tag}.log"
        proc = launch_server(
            [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config)],
            log_path,
            cwd=self.src,
            pythonpath=self.src,
        )
        bridge = Bridge(tag, port, proc, log_path)
        self.bridges.append(bridge)
        return bridge

    async def stop(self, *bridges: Bridge) -> None:
        for b in bridges:
            with contextlib.suppress(Exception):
                await b.stop()
            if b in self.bridges:
                self.bridges.remove(b)

    async def stop_all(self) -> None:
        await self.stop(*list(self.bridges))


# ================================================================================================
# (1) push latency: two tabs of one user, arrival times of the same reply push
# ================================================================================================


async def open_ws(url: str) -> ClientConnection:
    return await connect(
        url, open_timeout=OPEN_TIMEOUT, close_timeout=2, ping_interval=None, max_size=None
    )


async def login(ws: ClientConnection, user: str) -> None:
    frame = {
        "request_id": "login",
        "protocol": "system",
        "type": "login",
        "data": {"mio-chat-id": user, "mio-chat-token": ""},
    }
    await ws.send(json.dumps(frame))
    async with asyncio.timeout(OPEN_TIMEOUT):
        while True:
            answer = json.loads(await ws.recv())
            if answer.get("request_id") == "login":
                if answer.get("code") != 0:
                    raise BenchError(f"login of {user} refused: {answer}")
                return


class Tab:
    """One logged-in connection; records when each reply push arrives (keyed by the request id
    of the message it answers), and fails a request the bridge refuses."""

    def __init__(self, ws: ClientConnection, user: str, name: str) -> None:
        self.ws = ws
        self.user = user
        self.name = name
        self.arrived: dict[str, tuple[float, int]] = {}  # rid -> (perf_counter, message_id)
        self.failed: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, user: str, name: str) -> Tab:
        ws = await open_ws(url)
        await login(ws, user)
        return cls(ws, user, name)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                rid = frame.get("request_id")
                if isinstance(rid, str) and rid.startswith("s-") and frame.get("type") == "message":
                    content = (frame.get("data") or {}).get("content") or {}
                    sender = (content.get("sender") or {}).get("id")
                    answers = content.get("stream_request_id")
                    if answers is not None and sender != self.user:
                        self.arrived.setdefault(str(answers), (now, int(content["message_id"])))
                        self.changed.set()
                elif frame.get("code") == 1 and isinstance(rid, str) and rid.startswith("m-"):
                    self.failed[rid] = frame
                    self.changed.set()
        self.changed.set()

    async def wait(self, rid: str) -> tuple[float, int]:
        async with asyncio.timeout(PUSH_TIMEOUT):
            while rid not in self.arrived:
                if rid in self.failed:
                    raise BenchError(f"message {rid} failed on {self.name}: {self.failed[rid]}")
                if self.reader.done():
                    raise BenchError(f"tab {self.name} closed ({self.ws.close_code})")
                self.changed.clear()
                await self.changed.wait()
        return self.arrived[rid]

    async def send_message(self, rid: str, text: str) -> None:
        frame = {
            "request_id": rid,
            "protocol": "onebot",
            "type": "message",
            "id": ECHO,
            "data": [{"type": "text", "data": {"text": text}}],
        }
        await self.ws.send(json.dumps(frame))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


@dataclass
class Pair:
    """The sending tab and the other tab of one user."""

    label: str
    sender: Tab
    other: Tab
    gaps_ms: list[float] = field(default_factory=list)  # other's arrival - sender's arrival
    e2e_ms: list[float] = field(default_factory=list)  # send -> reply push on the sender's tab

    def reset(self) -> None:
        self.gaps_ms.clear()
        self.e2e_ms.clear()

    async def one(self, i: int) -> None:
        rid = f"m-{self.label}-{i}"
        t0 = time.perf_counter()
        await self.sender.send_message(rid, f"bench message {i}")
        (ta, ida), (tb, idb) = await asyncio.gather(self.sender.wait(rid), self.other.wait(rid))
        if ida != idb:
            raise BenchError(f"{self.label}: the tabs got different message ids ({ida}, {idb})")
        self.gaps_ms.append((tb - ta) * 1000)
        self.e2e_ms.append((ta - t0) * 1000)

    async def close(self) -> None:
        await self.sender.close()
        await self.other.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def push_scenario(ctx: Ctx, pg: PostgresServer, redis_url: str, upstream: str) -> dict:
    a = ctx.args
    dsn = await pg.create_database("bench_push")
    cluster = {"dsn": dsn, "redis_url": redis_url, "upstream": upstream}
    node_a = ctx.launch("push-a", **cluster)
    node_b = ctx.launch("push-b", **cluster)
    await asyncio.gather(node_a.wait_ready(nodes=2), node_b.wait_ready(nodes=2))
    cross = Pair(
        "cross",
        await Tab.open(node_a.url, "cross-user", "cross@A"),
        await Tab.open(node_b.url, "cross-user", "cross@B"),
    )
    same = Pair(
        "same",
        await Tab.open(node_a.url, "same-user", "same@A"),
        await Tab.open(node_a.url, "same-user", "same@A2"),
    )
    try:
        for i in range(a.warmup_messages):  # connections, caches, conversations: not measured
            await cross.one(-1 - i)
            await same.one(-1 - i)
        cross.reset()
        same.reset()
        for i in range(a.messages):  # interleaved: both see the same noise
            await cross.one(i)
            await same.one(i)
            node_a.check_alive()
            node_b.check_alive()
    finally:
        await cross.close()
        await same.close()
        await ctx.stop(node_a, node_b)
    results = {"cross": cross, "same": same}
    if not a.skip_single:
        plain = ctx.launch("push-single", upstream=upstream)
        await plain.wait_ready()
        single = Pair(
            "single",
            await Tab.open(plain.url, "single-user", "single@S"),
            await Tab.open(plain.url, "single-user", "single@S2"),
        )
        try:
            for i in range(a.warmup_messages):
                await single.one(-1 - i)
            single.reset()
            for i in range(a.messages):
                await single.one(i)
        finally:
            await single.close()
            await ctx.stop(plain)
        results["single"] = single
    return results


# ================================================================================================
# (2) heartbeat throughput
# ================================================================================================

HEARTBEAT = '{"request_id":%d,"protocol":"system","type":"heartbeat","data":{"timestamp":%d}}'


@dataclass
class Counter:
    counting: bool = False
    n: int = 0
    stop: bool = False


async def heartbeat_client(ws: ClientConnection, counter: Counter) -> None:
    i = 0
    while not counter.stop:
        i += 1
        await ws.send(HEARTBEAT % (i, i))
        answer = await ws.recv()
        if counter.counting:
            counter.n += 1
        if '"code":1' in answer:
            raise BenchError(f"heartbeat refused: {answer[:200]}")


async def heartbeat_round(bridge: Bridge, clients: int, warmup: float, seconds: float) -> dict:
    sockets = []
    try:
        for i in range(clients):
            ws = await open_ws(bridge.url)
            sockets.append(ws)
            await login(ws, f"hb-{i}")
        counter = Counter()
        tasks = [asyncio.create_task(heartbeat_client(ws, counter)) for ws in sockets]
        try:
            await asyncio.sleep(warmup)  # a measuring window, not a readiness wait
            cpu0, t0 = cpu_seconds(bridge.proc.pid), time.perf_counter()
            counter.counting = True
            await asyncio.sleep(seconds)
            counter.counting = False
            cpu1, t1 = cpu_seconds(bridge.proc.pid), time.perf_counter()
            n = counter.n
            for t in tasks:
                if t.done():
                    t.result()  # a client that failed: say why
        finally:
            counter.stop = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        bridge.check_alive()
        return {"rate": n / (t1 - t0), "round_trips": n, "cpu_s": cpu1 - cpu0}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def heartbeat_scenario(ctx: Ctx, pg: PostgresServer, redis_url: str) -> dict:
    a = ctx.args
    dsn = await pg.create_database("bench_heartbeat")
    clustered = ctx.launch("hb-cluster", dsn=dsn, redis_url=redis_url)
    plain = ctx.launch("hb-plain")
    await asyncio.gather(clustered.wait_ready(nodes=1), plain.wait_ready())
    rounds: dict[str, list[dict]] = {"cluster": [], "plain": []}
    try:
        for r in range(a.rounds):
            for name, bridge in (("cluster", clustered), ("plain", plain)):
                res = await heartbeat_round(bridge, a.clients, a.warmup, a.seconds)
                rounds[name].append(res)
                print(f"  round {r + 1} {name:7}: {res['rate']:,.0f} rt/s", flush=True)
    finally:
        await ctx.stop(clustered, plain)
    return rounds


# ================================================================================================
# main
# ================================================================================================


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(args: argparse.Namespace, pushes: dict | None, beats: dict | None) -> bool:
    ok = True
    print()
    if pushes is not None:
        print(
            f"push gap: the other tab's arrival minus the sending tab's, same message_id "
            f"({args.messages} messages, closed loop, after {args.warmup_messages} warm-up)"
        )
        descr = {
            "cross": "cross-node (tab on A sends, tab on B)   ",
            "same": "same-node  (both tabs on A, clustered)  ",
            "single": "single node (no [cluster], SQLite)      ",
        }
        for key, pair in pushes.items():
            g = pair.gaps_ms
            print(
                f"  {descr[key]}: p50 {pct(g, 50):7.3f} ms  p99 {pct(g, 99):7.3f} ms  "
                f"max {max(g):7.3f} ms   (send -> push on the sending tab: p50 "
                f"{pct(pair.e2e_ms, 50):.1f} ms, p99 {pct(pair.e2e_ms, 99):.1f} ms)"
            )
        added = pct(pushes["cross"].gaps_ms, 50) - pct(pushes["same"].gaps_ms, 50)
        hit = added < TARGET_ADDED_MS
        ok &= hit
        added99 = pct(pushes["cross"].gaps_ms, 99) - pct(pushes["same"].gaps_ms, 99)
        print(
            f"  added by the cluster: p50 {added:.3f} ms (target < {TARGET_ADDED_MS:g} ms) "
            f"{verdict(hit)}; p99 {added99:.3f} ms"
        )
    if beats is not None:
        c, p = beats["cluster"], beats["plain"]
        mc = statistics.median(r["rate"] for r in c)
        mp = statistics.median(r["rate"] for r in p)
        ratio = mc / mp
        hit = ratio >= TARGET_RATIO
        ok &= hit
        print(
            f"heartbeat round trips/s ({args.clients} clients, {args.seconds:g} s windows, "
            f"median of {args.rounds} alternating rounds)"
        )
        cpu_per_k = {}
        for name, rs, med in (("cluster+PostgreSQL", c, mc), ("plain (SQLite)", p, mp)):
            per_round = " ".join(f"{r['rate']:,.0f}" for r in rs)
            trips = sum(r["round_trips"] for r in rs)
            cpu_k = sum(r["cpu_s"] for r in rs) / trips * 1000 if trips else float("nan")
            cpu_per_k[name] = cpu_k
            print(
                f"  {name:19}: median {med:8,.0f} rt/s  (rounds: {per_round}); "
                f"bridge CPU {cpu_k:.4f} s per 1000 round trips"
            )
        per_round_ratios = " ".join(
            f"{x['rate'] / y['rate']:.2f}" for x, y in zip(c, p, strict=True)
        )
        print(
            f"  ratio cluster/plain: {ratio:.2f} (target >= {TARGET_RATIO:g}) {verdict(hit)}; "
            f"per round {per_round_ratios}"
        )
        cpu_ratio = cpu_per_k["cluster+PostgreSQL"] / cpu_per_k["plain (SQLite)"]
        print(
            f"  bridge CPU per round trip, cluster/plain: {cpu_ratio:.2f} (less sensitive to "
            "other load on the machine than the rates)"
        )
    return ok


async def run(args: argparse.Namespace) -> int:
    cancel_on_sigterm()
    src = resolve_src(args.src)
    started = time.perf_counter()
    print(machine_line(list(range(os.cpu_count() or 1))))
    print_bridge_software(src)
    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    ctx = Ctx(args, tmp, src)
    pg = PostgresServer()
    redis = RedisServer()
    upstream = FakeOpenAI()
    pushes = beats = None
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(redis.start)
        await upstream.start()
        print(
            f"servers : postgresql {pg.port}, redis-server {redis.port}, fake upstream "
            f"{upstream.base_url}; temp dir {tmp}"
        )
        if not args.skip_push:
            print("(1) push latency across nodes ...", flush=True)
            pushes = await push_scenario(ctx, pg, redis.url_for(0), upstream.base_url)
        if not args.skip_heartbeat:
            print("(2) heartbeat throughput, clustered vs plain ...", flush=True)
            beats = await heartbeat_scenario(ctx, pg, redis.url_for(1))
    finally:
        await ctx.stop_all()
        with contextlib.suppress(Exception):
            await upstream.stop()
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(pg.stop)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = report(args, pushes, beats)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s; all targets {verdict(ok)}")
    return 1 if (args.strict and not ok) else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cluster_bench.py",
        description="Cluster vs single-node: push latency across nodes, heartbeat throughput.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run (few messages, 1 s windows)")
    p.add_argument("--messages", type=int, help="measured messages per setup (default 200)")
    p.add_argument("--warmup-messages", type=int, help="unmeasured first messages (default 10)")
    p.add_argument("--clients", type=int, help="heartbeat clients (default 50)")
    p.add_argument("--seconds", type=float, help="measured seconds per heartbeat round (default 4)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each (default 1)")
    p.add_argument("--rounds", type=int, help="alternating heartbeat rounds (default 3)")
    p.add_argument("--skip-push", action="store_true", help="skip (1)")
    p.add_argument("--skip-heartbeat", action="store_true", help="skip (2)")
    p.add_argument("--skip-single", action="store_true", help="skip the no-[cluster] push baseline")
    p.add_argument("--src", default=str(REPO), help="source tree the bridges run from")
    p.add_argument(
        "--bridge-log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="bridge [log] level (default warning)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (bridge logs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = p.parse_args(argv)
    q = a.quick
    a.messages = a.messages if a.messages is not None else (30 if q else 200)
    a.warmup_messages = a.warmup_messages if a.warmup_messages is not None else (3 if q else 10)
    a.clients = a.clients if a.clients is not None else (10 if q else 50)
    a.seconds = a.seconds if a.seconds is not None else (1.0 if q else 4.0)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if q else 1.0)
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    if a.messages < 1 or a.warmup_messages < 0 or a.clients < 1 or a.seconds <= 0:
        p.error("--messages, --clients and --seconds must be positive")
    if a.rounds < 1 or a.warmup < 0:
        p.error("--rounds must be positive and --warmup not negative")
    return a


def main(argv: list[str] | None = None) -> int:
    return run_bench(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
