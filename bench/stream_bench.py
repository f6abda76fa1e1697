#!/usr/bin/env python
"""Streaming benchmark: chunk throughput and per-chunk added latency of the bridge vs MomoHub direct
(``--mode momohub``, the default, described first) or vs an OpenAI-compatible upstream read
directly (``--mode openai``, below); ``--mode all`` runs both, one after the other.

Every server runs in its own process (never on the load generator's event loop):

* a standalone MomoHub sandbox (``momobridge sandbox``; echo responder; ``token_delay = 0``, so
  a reply is a burst of tokens as fast as the sandbox can write them; fault injection off);
* a bridge (``momobridge serve``, log level warning) whose ``[momohub] base_url`` points at that
  sandbox, signed in with an account this script first creates there (``/auth/sign-up/email``).

Measured:

(1) BRIDGE under load: U concurrent logged-in hub users (websockets), each closed-loop sending
    ``onebot/message`` to the Momo demo character R times. The text has W words, so the echo
    reply ("Momo: you said <text>") is W + 3 tokens, each one ``update`` frame. Every update's
    arrival time is recorded; throughput = chunks (tokens) of all replies / wall time.
(2) DIRECT under load: the same U users and texts reading the sandbox's SSE with the bridge's own
    client code path, ``MomoHubClient.send_message`` (one account, one chat per user, one HTTP
    session -- like the bridge). Load phases alternate direct/bridge ``--repeats`` times.
(3) PAIRED, unloaded, per-chunk added latency: S single requests, each sent direct and through
    the bridge back to back (order alternating) with the same text, against a fresh
    sandbox + bridge with a byte-for-byte TCP relay (the "tap", in this process) in front of the
    sandbox that BOTH paths go through. Two anchors per chunk k:
      request-anchored: (bridge arrival_k - bridge send) - (direct arrival_k - direct send)
      tap-anchored:     (bridge arrival_k - tap_k) vs (direct arrival_k - tap_k), where tap_k
                        is when the tap handed the k-th SSE delta to the reader's socket: the
                        time from a delta reaching the bridge to its update frame at the user,
                        free of the sandbox's own timing noise.
    Done twice: tokens in one burst (``token_delay = 0``, worst case, judged) and paced like a
    model (``--paced-ms``, default 2 ms).

Targets (from the issue): added latency per chunk p50 < 1 ms (request-anchored, burst) and
bridge throughput >= 0.5 x direct.

``--mode openai``: the upstream is one process (``bench/openai_upstream.py``) serving
tests/support/fake_openai.py's FakeOpenAI (model ``tokens-N``: N tokens, no delay) and a paced
SSE server (model ``paced-N``: a token every ``--openai-pace-ms``, default 20 ms, each stamped
with the upstream's CLOCK_MONOTONIC time of writing it); the bridge runs with ``[momohub]
enabled = false`` and both as ``[[openai.providers]]``; hub users send ``openai/completions``.
The baseline is the same users and requests sent straight to the upstream, its SSE read with
aiohttp and every chunk json-parsed. Measured in one run:

(4) tokens/s: U users (``--openai-users``, default 50) closed-loop streaming ``tokens-200``
    replies, bridge vs direct, alternating ``--openai-repeats`` times (median reported);
(5) the bridge process's CPU seconds per 1000 tokens in those runs (utime+stime deltas from
    /proc/<pid>/stat, pooled over the repeats), next to the direct reader's (the load
    generator's own process time) -- target <= 0.035 s;
(6) added latency per chunk at 10 and at 50 concurrent paced streams (``--paced-streams``):
    chunk latency = arrival at the user - the upstream's stamp; added = bridge - direct for the
    same stream slot and token (pairs from the bridge and direct runs of one repeat) -- targets
    p50 <= 0.5 ms at 10 streams and <= 2 ms at 50;
(7) time to first token at the widest paced count, p50 bridge vs direct -- target <= 1.5x.

Usage (from the repository root)::

    .venv/bin/python bench/stream_bench.py            # full run (~35 s here)
    .venv/bin/python bench/stream_bench.py --quick    # smoke run (< 30 s)
    .venv/bin/python bench/stream_bench.py --mode openai --quick   # openai mode smoke run (~15 s)
    .venv/bin/python bench/stream_bench.py --mode all  # both modes, full
    .venv/bin/python bench/stream_bench.py --profile-bridge   # + cProfile of the loaded bridge
    .venv/bin/python bench/stream_bench.py --help

Subprocesses, the exec launcher (RLIMIT_NOFILE / CPU affinity / parent-death signal) and
percentiles come from ``bench/hub_bench.py``; machine info, /proc readers, free ports, the shared
options and header lines from ``bench/_common.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HOST,
    MOMO_NAME,
    PASSWORD,
    BenchError,
    add_bridge_args,
    add_output_args,
    cancel_on_sigterm,
    core_busy_seconds,
    cpu_seconds,
    free_port,
    machine_info,
    machine_line,
    momohub_lines,
    print_bridge_software,
    print_profile,
    resolve_src,
    run_bench,
    write_json,
)
from hub_bench import (
    ServerProc,
    close_all,
    open_many,
    percentile,
    raise_own_nofile,
)

READY_TIMEOUT = 60.0  # a server must be ready within this
HTTP_TIMEOUT = 10.0  # one setup HTTP call (sign-up, health check, chat creation)
REPLY_TIMEOUT = 60.0  # one whole reply, send to completed
PUSH_TIMEOUT = 5.0  # the finished-reply push after `completed` (paired mode only)
TAP_CONNECT_TIMEOUT = 5.0
PAIR_GAP = 0.02  # quiet time before each paired request
MODES = ("momohub", "openai")  # --mode all runs them in this order
ADMIN_CODE = "bench-admin-code"
# How the sandbox's echo responder splits a reply into tokens (whitespace rides in front).
TOKEN_RE = re.compile(r"\s*\S+|\s+")
DELTA_MARK = b"event: delta\n"
# Plain lowercase words: no quotes, no newlines, nothing the frame classifier could trip on.
VOCAB = (
    "alpha bravo cedar delta ember falcon garden harbor island jasmine kettle lantern meadow "
    "nectar orchard pebble quartz river saddle timber umbra velvet willow yonder zephyr amber "
    "breeze canyon dune echo fern glade hollow ivory juniper kelp lagoon maple north ocean"
).split()


# ================================================================================================
# helpers
# ================================================================================================


def make_text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def ms(seconds: float) -> float:
    return seconds * 1000.0


def pcts(values: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``values`` (seconds) in milliseconds."""
    s = sorted(values)
    return ms(percentile(s, 0.50)), ms(percentile(s, 0.99))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def sandbox_config(tmp: Path, tag: str, token_delay: float) -> Path:
    d = tmp / f"sandbox-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.toml"
    path.write_text(
        "\n".join(
            [
                "[sandbox]",
                f'host = "{HOST}"',
                'responder = "echo"',
                f"token_delay = {token_delay!r}",
                "fault_injection = false",
                'database = ""',
                "generation_timeout = 120.0",
                "[log]",
                # info: the sandbox logs only its listening/stopped lines at info, nothing per request
                'level = "info"',
                'format = "json"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def write_bridge_config(d: Path, *, port: int, log_level: str, upstream: list[str]) -> Path:
    """The bridge's config in ``d``: the common sections, then ``upstream``'s lines."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.toml"
    common = [
        "[server]",
        f'host = "{HOST}"',
        f"port = {port}",
        "[auth]",
        f'admin_code = "{ADMIN_CODE}"',
        "[storage]",
        f"path = {json.dumps(str(d / 'bridge.db'))}",
        "[log]",
        f'level = "{log_level}"',
        'format = "json"',
    ]
    path.write_text("\n".join([*common, *upstream, ""]), encoding="utf-8")
    return path


def bridge_config(
    tmp: Path, tag: str, *, port: int, base_url: str, email: str, log_level: str
) -> Path:
    return write_bridge_config(
        tmp / f"bridge-{tag}",
        port=port,
        log_level=log_level,
        upstream=momohub_lines(base_url, email),
    )


async def sign_up(base_url: str, email: str) -> None:
    """Create an account on the sandbox (409 = it exists already, fine)."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        body = {"email": email, "name": email.split("@")[0], "password": PASSWORD}
        async with http.post(f"{base_url}/auth/sign-up/email", json=body) as r:
            if r.status not in (200, 201, 409):
                raise BenchError(f"sign-up of {email} failed: HTTP {r.status} {await r.text()}")


async def wait_http_ready(srv: ServerProc, url: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``url`` until it answers 200 (the bridge logs nothing at level warning when ready).

    A bridge's ``/readyz`` answers 200 only once every upstream it is configured with is up
    (the hub may listen, and ``/healthz`` answer, while they are still loading)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    client_timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=client_timeout) as http:
        while loop.time() < deadline:
            srv.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError(f"{srv.name} not ready after {timeout:.0f} s; log:\n{srv.log_tail()}")


# ================================================================================================
# the tap: a TCP relay in front of the sandbox that timestamps every SSE delta it forwards
# ================================================================================================


class Tap:
    """Byte-for-byte relay ``HOST:port -> sandbox``; records when each complete ``delta`` event
    was handed on towards the reader (the bridge, or the direct client).

    Only meant for unloaded, one-stream-at-a-time measurements: ``deltas`` is one shared list,
    cleared before each request. Both measured paths go through it, so its own hop cancels out.
    """

    def __init__(self, upstream: str) -> None:
        rest = upstream.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self._up = (host.strip("[]"), int(port))
        self._path = "/" + path
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.deltas: list[float] = []
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{port}{self._path}".rstrip("/")
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(TAP_CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(*self._up)
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, tap=False)),
                asyncio.create_task(self._pump(up_reader, writer, tap=True)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, TimeoutError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, tap: bool
    ) -> None:
        buf = b""
        pc = time.perf_counter
        with contextlib.suppress(OSError):
            while True:
                data = await src.read(1 << 16)
                t = pc()
                if not data:
                    return
                dst.write(data)  # forward first, parse after
                if tap:
                    buf += data
                    while True:
                        i = buf.find(DELTA_MARK)
                        if i < 0:
                            buf = buf[-len(DELTA_MARK) :]
                            break
                        j = buf.find(b"\n\n", i)
                        if j < 0:
                            buf = buf[i:]
                            break
                        self.deltas.append(t)
                        buf = buf[j + 2 :]
                await dst.drain()


# ================================================================================================
# one reply, measured from the client side
# ================================================================================================


@dataclass
class Reply:
    """One reply as its reader saw it (perf_counter seconds).

    ``frames`` are the arrival times of the update frames (bridge) or StreamDelta events (direct).
    ``chunks`` are per-TOKEN arrival times, filled in by the check after the timed part: token i of
    the expected reply arrived with the frame that completed it. Today every frame carries exactly
    one token, so both lists are equal; indexing by token keeps the pairing and the throughput
    honest should the bridge ever merge several deltas into one frame.
    """

    t_send: float
    frames: list[float]
    t_end: float
    # Bridge: the raw update frames (parsed after the timed part); direct: the delta texts.
    raws: list[str] = field(default_factory=list)
    chunks: list[float] = field(default_factory=list)
    # openai mode, paced: when the upstream wrote each token (its stamp; same clock)
    stamps: list[float] = field(default_factory=list)

    def offsets(self) -> list[float]:
        return [t - self.t_send for t in self.chunks]

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


def message_frame(rid: str, contact: str, text: str) -> str:
    return json.dumps(
        {
            "request_id": rid,
            "protocol": "onebot",
            "type": "message",
            "id": contact,
            "data": [{"type": "text", "data": {"text": text}}],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


async def read_stream(
    ws: ClientConnection, rid: str, frame: str
) -> tuple[float, list[float], float, list[str]]:
    """Send ``frame`` and read its stream up to `completed`: the send time, each update's
    arrival, the end, and the raw updates. The hot loop only timestamps and keeps each raw update
    frame (a substring test picks them); every other frame is parsed."""
    pc = time.perf_counter
    recv = ws.recv
    frames: list[float] = []
    raws: list[str] = []
    async with asyncio.timeout(REPLY_TIMEOUT):
        t_send = pc()
        await ws.send(frame)
        while True:
            raw = await recv()
            t = pc()
            if '"message":"update"' in raw:
                frames.append(t)
                raws.append(raw)  # type: ignore[arg-type]
                continue
            f = json.loads(raw)
            if f.get("request_id") != rid:
                continue  # a push (finished reply of an earlier message), not ours
            if f.get("code", 0) != 0:
                raise BenchError(f"bridge answered {rid} with a failure: {f}")
            if f.get("message") == "completed":
                return t_send, frames, t, raws


async def bridge_reply(
    ws: ClientConnection, rid: str, contact: str, text: str, *, wait_push: bool = False
) -> Reply:
    """Send one onebot/message and read its stream up to `completed` (see `read_stream`);
    updates are validated (request id, seq, text) afterwards."""
    reply = Reply(*await read_stream(ws, rid, message_frame(rid, contact, text)))
    if wait_push:
        # The finished reply also arrives as a push; take it off the wire before the next
        # (timed) request so it cannot land in the middle of that one.
        async with asyncio.timeout(PUSH_TIMEOUT):
            while True:
                f = json.loads(await ws.recv())
                content = (f.get("data") or {}).get("content") or {}
                if isinstance(content, dict) and content.get("stream_request_id") == rid:
                    break
    return reply


def token_arrivals(pieces: list[str], times: list[float], expected: str) -> list[float]:
    """Arrival time of each token of ``expected`` (split like the echo responder does)."""
    got = "".join(pieces)
    if got != expected:
        raise BenchError(f"reply came back wrong: {got[:100]!r}... != {expected[:100]!r}...")
    frame_ends = list(itertools.accumulate(len(p) for p in pieces))
    token_ends = list(itertools.accumulate(len(t) for t in TOKEN_RE.findall(expected)))
    out: list[float] = []
    j = 0
    for end in token_ends:
        while frame_ends[j] < end:
            j += 1
        out.append(times[j])
    return out


def update_chunks(reply: Reply, rid: str) -> list[str]:
    """The text chunks of the raw update frames, checking their order."""
    parts = []
    for k, raw in enumerate(reply.raws):
        f = json.loads(raw)
        data = f.get("data") or {}
        if f.get("request_id") != rid or data.get("seq") != k:
            raise BenchError(f"update {k} of {rid} is not in sequence: {raw[:200]}")
        parts.append(data.get("chunk") or "")
    return parts


def check_bridge_reply(reply: Reply, rid: str, expected: str) -> None:
    reply.chunks = token_arrivals(update_chunks(reply, rid), reply.frames, expected)


async def direct_reply(client: Any, chat_id: str, text: str) -> Reply:
    """The bridge's code path: MomoHubClient.send_message, one StreamDelta per token."""
    from adapters.momohub.types import StreamDelta, StreamDone, StreamError

    pc = time.perf_counter
    parts = [{"type": "text", "content": text}]
    frames: list[float] = []
    texts: list[str] = []
    async with asyncio.timeout(REPLY_TIMEOUT):
        t_send = pc()
        stream = client.send_message(chat_id, parts)
        try:
            async for ev in stream:
                if isinstance(ev, StreamDelta):
                    frames.append(pc())
                    texts.append(ev.text)
                elif isinstance(ev, StreamDone):
                    t_end = pc()
                    break
                elif isinstance(ev, StreamError):
                    raise BenchError(f"direct stream on chat {chat_id} failed: {ev.message}")
            else:
                raise BenchError(f"direct stream on chat {chat_id} ended without done")
        finally:
            await stream.aclose()
    return Reply(t_send, frames, t_end, texts)


def check_direct_reply(reply: Reply, expected: str) -> None:
    reply.chunks = token_arrivals(reply.raws, reply.frames, expected)


# ================================================================================================
# phases
# ================================================================================================


@dataclass
class CpuWindow:
    """CPU seconds of each process and busy seconds of each pinned core over one window."""

    procs: dict[str, ServerProc]
    cores: list[int]
    t0: float = 0.0
    c0: dict[str, float] = field(default_factory=dict)
    k0: dict[int, float] = field(default_factory=dict)
    p0: float = 0.0
    pct: dict[str, float] = field(default_factory=dict)
    # CPU seconds (utime+stime of each process, from /proc/<pid>/stat; the load generator's
    # own process time) and wall seconds of the window.
    secs: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.p0 = time.process_time()
        self.c0 = {n: cpu_seconds(s.pid) for n, s in self.procs.items()}
        self.k0 = {c: core_busy_seconds(c) for c in self.cores}

    def stop(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.secs = {n: cpu_seconds(s.pid) - self.c0[n] for n, s in self.procs.items()}
        self.secs["loadgen"] = time.process_time() - self.p0
        self.wall = dt
        out = {n: 100 * v / dt for n, v in self.secs.items()}
        for c in self.cores:
            out[f"cpu{c}_busy"] = 100 * (core_busy_seconds(c) - self.k0[c]) / dt
        self.pct = out
        return out


@dataclass
class LoadResult:
    mode: str
    users: int
    rounds: int
    replies: int
    chunks: int  # tokens of reply text
    frames: int  # update frames (bridge) / StreamDelta events (direct)
    seconds: float
    rate: float  # chunks/s
    frame_rate: float
    ttfc_p50_ms: float
    ttfc_p99_ms: float
    gap_p50_ms: float
    gap_p99_ms: float
    offset_p50_ms: float
    offset_p99_ms: float
    reply_p50_ms: float
    reply_p99_ms: float
    cpu_pct: dict[str, float]


def summarize(
    mode: str, users: int, rounds: int, replies: list[Reply], seconds: float, cpu: dict[str, float]
) -> LoadResult:
    chunks = sum(len(r.chunks) for r in replies)
    frames = sum(len(r.frames) for r in replies)
    ttfc = [r.chunks[0] - r.t_send for r in replies if r.chunks]
    gaps = [g for r in replies for g in r.gaps()]
    offs = [o for r in replies for o in r.offsets()]
    dur = [r.t_end - r.t_send for r in replies]
    t50, t99 = pcts(ttfc)
    g50, g99 = pcts(gaps)
    o50, o99 = pcts(offs)
    d50, d99 = pcts(dur)
    return LoadResult(
        mode, users, rounds, len(replies), chunks, frames, seconds, chunks / seconds,
        frames / seconds, t50, t99, g50, g99, o50, o99, d50, d99, cpu,
    )  # fmt: skip


async def run_users(coros: list[Any], timeout: float) -> None:
    """Run the users' coroutines; the first failure (or the timeout) cancels the rest."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        async with asyncio.timeout(timeout):
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def bridge_load(
    conns: list[ClientConnection],
    contact: str,
    texts: list[str],
    rounds: int,
    window: CpuWindow,
    tag: str,
) -> tuple[list[Reply], float]:
    per_user: list[list[tuple[str, Reply]]] = [[] for _ in conns]

    async def user(i: int, ws: ClientConnection) -> None:
        for r in range(rounds):
            rid = f"{tag}-u{i}-r{r}"
            per_user[i].append((rid, await bridge_reply(ws, rid, contact, texts[i])))

    gc.collect()
    window.start()
    t0 = time.perf_counter()
    await run_users([user(i, ws) for i, ws in enumerate(conns)], REPLY_TIMEOUT * rounds + 30)
    elapsed = time.perf_counter() - t0
    window.stop()
    replies = []
    for i, items in enumerate(per_user):
        for rid, rep in items:
            check_bridge_reply(rep, rid, f"{MOMO_NAME}: you said {texts[i]}")
            replies.append(rep)
    return replies, elapsed


async def direct_load(
    client: Any, chats: list[str], texts: list[str], rounds: int, window: CpuWindow
) -> tuple[list[Reply], float]:
    per_user: list[list[Reply]] = [[] for _ in chats]

    async def user(i: int, chat: str) -> None:
        for _ in range(rounds):
            per_user[i].append(await direct_reply(client, chat, texts[i]))

    gc.collect()
    window.start()
    t0 = time.perf_counter()
    await run_users([user(i, chat) for i, chat in enumerate(chats)], REPLY_TIMEOUT * rounds + 30)
    elapsed = time.perf_counter() - t0
    window.stop()
    replies = []
    for i, items in enumerate(per_user):
        for rep in items:
            check_direct_reply(rep, f"{MOMO_NAME}: you said {texts[i]}")
            replies.append(rep)
    return replies, elapsed


@dataclass
class PairedResult:
    label: str
    samples: int
    chunks_per_reply: int
    # request-anchored: offsets of each chunk from its own request's send
    added_p50_ms: float
    added_p99_ms: float
    ttfc_added_p50_ms: float
    ttfc_added_p99_ms: float
    relay_added_p50_ms: float
    relay_added_p99_ms: float
    last_added_p50_ms: float
    direct_ttfc_p50_ms: float
    bridge_ttfc_p50_ms: float
    direct_reply_p50_ms: float
    bridge_reply_p50_ms: float
    # tap-anchored: arrival at the user minus when the tap forwarded that delta to the reader
    tap_bridge_p50_ms: float
    tap_bridge_p99_ms: float
    tap_direct_p50_ms: float
    tap_direct_p99_ms: float
    tap_added_p50_ms: float
    tap_added_p99_ms: float
    tap_first_bridge_p50_ms: float
    tap_first_direct_p50_ms: float


async def paired(
    label: str,
    tap: Tap,
    ws: ClientConnection,
    contact: str,
    client: Any,
    chat: str,
    text: str,
    samples: int,
    tag: str,
) -> PairedResult:
    """Same message direct and through the bridge, back to back, order alternating."""
    expected = f"{MOMO_NAME}: you said {text}"
    added: list[float] = []
    relay: list[float] = []
    ttfc_added: list[float] = []
    last_added: list[float] = []
    d_ttfc: list[float] = []
    b_ttfc: list[float] = []
    d_dur: list[float] = []
    b_dur: list[float] = []
    tap_lat: dict[str, list[float]] = {"direct": [], "bridge": []}
    tap_first: dict[str, list[float]] = {"direct": [], "bridge": []}
    tap_added: list[float] = []
    n_chunks = 0
    gc.collect()
    for i in range(samples):
        pair: dict[str, Reply] = {}
        lat: dict[str, list[float]] = {}
        order = ("direct", "bridge") if i % 2 == 0 else ("bridge", "direct")
        for which in order:
            await asyncio.sleep(PAIR_GAP)
            tap.deltas.clear()
            if which == "direct":
                rep = await direct_reply(client, chat, text)
                check_direct_reply(rep, expected)
            else:
                rid = f"{tag}-{i}"
                rep = await bridge_reply(ws, rid, contact, text, wait_push=True)
                check_bridge_reply(rep, rid, expected)
            taps = list(tap.deltas)
            if len(taps) != len(rep.chunks):
                raise BenchError(
                    f"{label} sample {i} {which}: the tap saw {len(taps)} deltas for "
                    f"{len(rep.chunks)} tokens (one delta per token expected)"
                )
            pair[which] = rep
            lat[which] = [a - t for a, t in zip(rep.chunks, taps, strict=True)]
            tap_lat[which] += lat[which]
            tap_first[which].append(lat[which][0])
        d, b = pair["direct"], pair["bridge"]
        if len(d.chunks) != len(b.chunks) or not d.chunks:
            raise BenchError(f"paired sample {i}: {len(d.chunks)} vs {len(b.chunks)} chunks")
        n_chunks = len(d.chunks)
        do, bo = d.offsets(), b.offsets()
        added += [bk - dk for bk, dk in zip(bo, do, strict=True)]
        relay += [(bk - bo[0]) - (dk - do[0]) for bk, dk in zip(bo[1:], do[1:], strict=True)]
        ttfc_added.append(bo[0] - do[0])
        last_added.append(bo[-1] - do[-1])
        tap_added += [bl - dl for bl, dl in zip(lat["bridge"], lat["direct"], strict=True)]
        d_ttfc.append(do[0])
        b_ttfc.append(bo[0])
        d_dur.append(d.t_end - d.t_send)
        b_dur.append(b.t_end - b.t_send)
    a50, a99 = pcts(added)
    t50, t99 = pcts(ttfc_added)
    r50, r99 = pcts(relay)
    tb50, tb99 = pcts(tap_lat["bridge"])
    td50, td99 = pcts(tap_lat["direct"])
    ta50, ta99 = pcts(tap_added)
    return PairedResult(
        label=label,
        samples=samples,
        chunks_per_reply=n_chunks,
        added_p50_ms=a50,
        added_p99_ms=a99,
        ttfc_added_p50_ms=t50,
        ttfc_added_p99_ms=t99,
        relay_added_p50_ms=r50,
        relay_added_p99_ms=r99,
        last_added_p50_ms=ms(statistics.median(last_added)),
        direct_ttfc_p50_ms=ms(statistics.median(d_ttfc)),
        bridge_ttfc_p50_ms=ms(statistics.median(b_ttfc)),
        direct_reply_p50_ms=ms(statistics.median(d_dur)),
        bridge_reply_p50_ms=ms(statistics.median(b_dur)),
        tap_bridge_p50_ms=tb50,
        tap_bridge_p99_ms=tb99,
        tap_direct_p50_ms=td50,
        tap_direct_p99_ms=td99,
        tap_added_p50_ms=ta50,
        tap_added_p99_ms=ta99,
        tap_first_bridge_p50_ms=ms(statistics.median(tap_first["bridge"])),
        tap_first_direct_p50_ms=ms(statistics.median(tap_first["direct"])),
    )


# ================================================================================================
# orchestration
# ================================================================================================


@dataclass
class Layout:
    sandbox: int | None = None
    bridge: int | None = None
    loadgen_direct: int | None = None
    loadgen_bridge: int | None = None
    loadgen_paired: int | None = None  # None: let the scheduler place it
    text: str = "off"

    def cores(self) -> list[int]:
        return sorted(
            {
                c
                for c in (self.sandbox, self.bridge, self.loadgen_direct, self.loadgen_bridge)
                if c is not None
            }
        )


def plan_layout(pin: bool, cpus: list[int]) -> Layout:
    if not pin or len(cpus) < 2:
        return Layout()
    if len(cpus) >= 3:
        c0, c1, c2 = cpus[:3]
        return Layout(
            c0, c1, c2, c2, c2, f"sandbox cpu{c0}, bridge cpu{c1}, load generator cpu{c2}"
        )
    c0, c1 = cpus[:2]
    # Two cores for three busy processes. The direct reader plays the bridge's part, so under
    # load it gets the bridge's (then idle) core; in the bridge phase the websocket clients share
    # the sandbox's core (per-process CPU% is reported, so a starved sandbox shows). For the
    # unloaded paired requests the load generator (tap + readers) floats: pinned next to either
    # server it would delay that server's reads during a burst.
    return Layout(
        c0,
        c1,
        c1,
        c0,
        None,
        f"sandbox cpu{c0}, bridge cpu{c1}; load generator on cpu{c1} for direct load "
        f"(the bridge's idle core), on cpu{c0} (with the sandbox) for bridge load, unpinned "
        "for the paired requests",
    )


def set_own_cpu(cpu: int | None, all_cpus: list[int]) -> None:
    os.sched_setaffinity(0, {cpu} if cpu is not None else set(all_cpus))


@dataclass
class Stack:
    sandbox: ServerProc
    bridge: ServerProc
    sandbox_url: str  # the sandbox itself
    upstream_url: str  # what the bridge and the direct client use: the tap when there is one
    bridge_url: str
    tap: Tap | None = None


@dataclass
class Live:
    """Everything a run has started, so that every exit path can stop all of it."""

    servers: list[ServerProc] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)
    conns: list[ClientConnection] = field(default_factory=list)

    async def close(self) -> None:
        await close_all(self.conns, timeout=5.0)
        self.conns.clear()
        for c in self.clients:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await c.close()
        self.clients.clear()
        for srv in reversed(self.servers):  # bridges before their sandboxes
            with contextlib.suppress(Exception):
                await srv.stop()  # SIGTERM, then SIGKILL after hub_bench.STOP_TIMEOUT
        self.servers.clear()
        for tap in self.taps:
            await tap.stop()
        self.taps.clear()


async def start_stack(
    args: argparse.Namespace,
    tmp: Path,
    src: Path,
    tag: str,
    token_delay: float,
    layout: Layout,
    live: Live,
    nofile: int,
    *,
    tap: bool,
    profile: Path | None = None,
) -> Stack:
    sb_cfg = sandbox_config(tmp, tag, token_delay)
    cmd = [sys.executable, "-m", "bridge.cli", "sandbox", "--config", str(sb_cfg)]
    sandbox = ServerProc(
        f"sandbox[{tag}]",
        [*cmd, "--port", str(free_port())],
        cwd=src,
        log_path=tmp / f"sandbox-{tag}.log",
        nofile=nofile,
        cpu=layout.sandbox,
    )
    live.servers.append(sandbox)
    sandbox_url = await sandbox.wait_ready("sandbox.listening", READY_TIMEOUT)
    upstream = sandbox_url
    relay: Tap | None = None
    if tap:
        relay = Tap(sandbox_url)
        live.taps.append(relay)
        upstream = await relay.start()
    email = f"bench-bridge-{tag}@bench.local"
    await sign_up(sandbox_url, email)
    port = free_port()
    br_cfg = bridge_config(
        tmp, tag, port=port, base_url=upstream, email=email, log_level=args.bridge_log_level
    )
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "bridge.cli", "serve", "--config", str(br_cfg)]
    bridge = ServerProc(
        f"bridge[{tag}]",
        cmd,
        cwd=src,
        log_path=tmp / f"bridge-{tag}.log",
        nofile=nofile,
        cpu=layout.bridge,
    )
    live.servers.append(bridge)
    await wait_http_ready(bridge, f"http://{HOST}:{port}/readyz")
    return Stack(sandbox, bridge, sandbox_url, upstream, f"ws://{HOST}:{port}/api/gateway", relay)


async def direct_client(base_url: str, sandbox_url: str, tag: str, live: Live) -> Any:
    from adapters.momohub.client import MomoHubClient
    from bridge.config import MomoHubConfig

    email = f"bench-direct-{tag}@bench.local"
    await sign_up(sandbox_url, email)
    client = MomoHubClient(MomoHubConfig(base_url=base_url, email=email, password=PASSWORD))
    live.clients.append(client)
    async with asyncio.timeout(HTTP_TIMEOUT * 2):
        await client.start()
    return client


async def run(args: argparse.Namespace) -> int:
    cancel_on_sigterm()

    src = resolve_src(args.src)
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from bridge.logging import configure_logging

    # The direct client logs through structlog; keep it to warnings on stderr.
    configure_logging("warning", "json")

    modes = MODES if args.mode == "all" else (args.mode,)
    orig_soft, orig_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(
        args.users * 3 if "momohub" in modes else 0,
        openai_conns(args) * 3 if "openai" in modes else 0,
    )
    own_soft, _ = raise_own_nofile(need + 256)
    cpus = sorted(os.sched_getaffinity(0))
    layout = plan_layout(args.pin, cpus)

    print(f"MomoBridge streaming benchmark (mode {args.mode}: {', '.join(modes)})")
    print(machine_line(cpus))
    print_bridge_software(src)
    print(
        f"fds     : shell RLIMIT_NOFILE soft={orig_soft} hard={orig_hard}; "
        f"load generator raised to soft={own_soft}"
    )
    sys.stdout.flush()

    ok = True
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    for mode in modes:
        runner = run_momohub if mode == "momohub" else run_openai
        mode_ok, results[mode] = await runner(args, src, cpus, layout)
        ok &= mode_ok
    total = time.perf_counter() - t_start
    if len(modes) > 1:
        print(f"\nall modes: total time {total:.0f} s; all targets {'met' if ok else 'NOT met'}")
    if args.json:
        out = results[modes[0]] if len(modes) == 1 else results
        out["machine"] = machine_info(cpus, layout=layout.text)
        write_json(args.json, out)
    return 1 if (args.strict and not ok) else 0


def _wind_up(prof: Path | None, name: str, tmp: Path, *, keep: bool) -> Path | None:
    """After a mode's runs: keep the bridge profile beyond the temp dir, then drop (or keep) it."""
    if prof is not None and prof.is_file():
        saved = Path(tempfile.gettempdir()) / name
        shutil.copyfile(prof, saved)
        prof = saved
    if keep:
        print(f"\n(kept logs and data in {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return prof


def _median_run(runs: list[Any]) -> Any:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


async def run_momohub(
    args: argparse.Namespace, src: Path, cpus: list[int], layout: Layout
) -> tuple[bool, dict[str, Any]]:
    """Bridge vs MomoHub direct (the sandbox): the original mode."""
    from adapters.momohub.sandbox.entities import DEMO_CHARACTERS

    momo = next(c.id for c in DEMO_CHARACTERS if c.name == MOMO_NAME)
    tokens = args.words + 3
    print("\n" + "#" * 78)
    print("# mode momohub: bridge vs MomoHub direct (sandbox, echo responder)")
    print("#" * 78)
    print(
        f"settings: {'QUICK ' if args.quick else ''}users={args.users} rounds={args.rounds} "
        f"repeats={args.repeats} words={args.words} (=> {tokens} tokens/reply); paired samples: "
        f"{args.samples} burst, {args.paced_samples} paced at {args.paced_ms:g} ms; bridge log "
        f"level={args.bridge_log_level}"
    )
    print(f"pinning : {layout.text}")
    if args.profile_bridge:
        print("profile : the loaded bridge runs under cProfile: its numbers are slowed down")
    sys.stdout.flush()

    tmp = Path(tempfile.mkdtemp(prefix="stream_bench-"))
    live = Live()
    results: dict[str, Any] = {}
    findings: list[str] = []
    nofile = args.users * 3 + 1024
    texts = [make_text(args.words, seed=i) for i in range(args.users)]
    pair_text = make_text(args.words, seed=10_000)
    prof = tmp / "bridge.prof" if args.profile_bridge else None
    runs: dict[str, list[LoadResult]] = {"direct": [], "bridge": []}
    pairs: list[PairedResult] = []
    t_start = time.perf_counter()
    try:
        # ---------------- load: sandbox (token_delay 0) + bridge, no tap ----------------
        stack = await start_stack(
            args, tmp, src, "load", 0.0, layout, live, nofile, tap=False, profile=prof
        )
        print(
            f"\n[setup] sandbox pid {stack.sandbox.pid} at {stack.sandbox_url}; bridge pid "
            f"{stack.bridge.pid} at {stack.bridge_url}",
            flush=True,
        )
        client = await direct_client(stack.upstream_url, stack.sandbox_url, "load", live)
        async with asyncio.timeout(HTTP_TIMEOUT * 3):
            chats = [
                (await client.create_chat(momo, name=f"direct {i}")).id for i in range(args.users)
            ]
        conns = await open_many(stack.bridge_url, args.users, False, "streamer", stack.bridge)
        live.conns.extend(conns)

        # Warm-up (not measured): the bridge creates each user's MomoHub chat on first use, and
        # both paths get their code warm and their connection pools filled.
        set_own_cpu(layout.loadgen_bridge, cpus)
        await run_users(
            [
                bridge_reply(ws, f"warm-u{i}", momo, "warm up", wait_push=True)
                for i, ws in enumerate(conns)
            ],
            REPLY_TIMEOUT + 30,
        )
        set_own_cpu(layout.loadgen_direct, cpus)
        await run_users([direct_reply(client, c, "warm up") for c in chats], REPLY_TIMEOUT + 30)

        # Alternating repeats (direct first on even ones); the median repeat of each is reported.
        procs = {"sandbox": stack.sandbox, "bridge": stack.bridge}
        print(
            f"[load] {args.users} users x {args.rounds} rounds, {args.repeats} alternating "
            "repeat(s); direct = MomoHubClient.send_message, bridge = hub onebot/message",
            flush=True,
        )
        for rep in range(args.repeats):
            order = ("direct", "bridge") if rep % 2 == 0 else ("bridge", "direct")
            for mode in order:
                window = CpuWindow(procs, layout.cores())
                if mode == "direct":
                    set_own_cpu(layout.loadgen_direct, cpus)
                    replies, secs = await direct_load(client, chats, texts, args.rounds, window)
                else:
                    set_own_cpu(layout.loadgen_bridge, cpus)
                    replies, secs = await bridge_load(
                        conns, momo, texts, args.rounds, window, f"load{rep}"
                    )
                res = summarize(mode, args.users, args.rounds, replies, secs, window.pct)
                runs[mode].append(res)
                print(
                    f"    repeat {rep + 1} {mode:6}: {res.rate:,.0f} chunks/s, "
                    f"{res.frame_rate:,.0f} frames/s ({res.frames:,} frames in {secs:.2f} s; "
                    f"cpu sandbox {res.cpu_pct['sandbox']:.0f}% bridge "
                    f"{res.cpu_pct['bridge']:.0f}% loadgen {res.cpu_pct['loadgen']:.0f}%)",
                    flush=True,
                )
        await live.close()  # the profiled bridge writes its profile as it exits

        # ---------------- paired, unloaded: fresh sandbox + bridge behind a tap ----------------
        plans = [("token_delay=0", 0.0, args.samples)]
        if args.paced_ms > 0 and args.paced_samples > 0:
            plans.append(
                (f"token_delay={args.paced_ms:g}ms", args.paced_ms / 1000, args.paced_samples)
            )
        for n, (label, delay, samples) in enumerate(plans):
            tag = f"pair{n}"
            stack = await start_stack(args, tmp, src, tag, delay, layout, live, nofile, tap=True)
            assert stack.tap is not None
            client = await direct_client(stack.upstream_url, stack.sandbox_url, tag, live)
            async with asyncio.timeout(HTTP_TIMEOUT):
                chat = (await client.create_chat(momo, name="paired")).id
            conns = await open_many(stack.bridge_url, 1, False, tag, stack.bridge)
            live.conns.extend(conns)
            print(
                f"[paired] {label}: {samples} unloaded request pairs through a tap "
                f"(sandbox pid {stack.sandbox.pid}, bridge pid {stack.bridge.pid}) ...",
                flush=True,
            )
            set_own_cpu(layout.loadgen_paired, cpus)
            for w in range(2):
                await bridge_reply(conns[0], f"{tag}-warm{w}", momo, pair_text, wait_push=True)
                await direct_reply(client, chat, pair_text)
            res_p = await paired(
                label, stack.tap, conns[0], momo, client, chat, pair_text, samples, tag
            )
            pairs.append(res_p)
            print(
                f"    added per chunk: request-anchored p50={res_p.added_p50_ms:.3f} ms, "
                f"tap-anchored p50={res_p.tap_added_p50_ms:.3f} ms",
                flush=True,
            )
            await live.close()
    except Exception:
        for srv in live.servers:
            srv.check_alive()  # a dead server explains the failure better (BenchError + its log)
        raise
    finally:
        await live.close()
        set_own_cpu(None, cpus)
        prof = _wind_up(prof, "stream_bench-bridge.prof", tmp, keep=args.keep)

    direct, bridge = _median_run(runs["direct"]), _median_run(runs["bridge"])
    results["load"] = {"direct": asdict(direct), "bridge": asdict(bridge)}
    results["load_rates"] = {m: [r.rate for r in rs] for m, rs in runs.items()}
    results["paired"] = [asdict(p) for p in pairs]
    total = time.perf_counter() - t_start
    ok = report(args, layout, runs, direct, bridge, pairs, findings, results)
    if prof is not None:
        print_bridge_profile(prof)
    print(f"\nmode momohub: total time {total:.0f} s; all targets {'met' if ok else 'NOT met'}")
    results["findings"] = findings
    return ok, results


EXPLANATION = """
what is measured (every timestamp is taken in the load generator, one perf_counter clock):
  * chunk = one token of reply text (split as the echo responder does), timed when the frame
    carrying it arrived: an `update` frame on the hub websocket (bridge), a StreamDelta yielded by
    MomoHubClient.send_message (direct). Today each frame carries exactly one token, so chunks/s
    == frames/s; counting tokens keeps the comparison fair should the bridge ever merge deltas.
  * chunks/s = chunks of all replies / wall time from the first send to the last `completed`
    (bridge) or `done` (direct). Closed loop: the bridge's per-reply work (storing the messages,
    the id look-up after `done`, the finished-reply push) delays each user's next message too.
  * paired (unloaded; one request at a time; same text; order alternating; both paths through
    the same tap, whose extra hop therefore cancels out). Inside the bridge is not observed.
    request-anchored, added_k = (bridge chunk k - bridge send) - (direct chunk k - direct send):
      ttfc+  = added for chunk 0: the bridge's per-message work before its upstream POST
               (parse, store, route, chat look-up, ack, pending) plus relaying the first chunk
      relay+ = added_k minus its request's ttfc+: how much further behind chunk k falls
      last+  = added for the final chunk (how much later the whole text is there)
      With a paced source this anchor also carries the sandbox's timer jitter, which adds up
      over a reply (hence the wide p99 / negative values there): read the tap-anchored table.
    tap-anchored, latency_k = chunk k at the user - the moment the tap forwarded delta k to the
      reader (the bridge, or the direct client); added = bridge latency_k - direct latency_k.
      This is the "SSE delta reaches the bridge -> update frame at the user" time (+1 loopback
      hop), compared with what the direct reader itself needs to parse the same delta.
    token_delay=0: the sandbox writes a reply in one burst, so chunk k also waits until chunks
      0..k-1 are relayed: `added` mixes latency with per-chunk CPU cost (the worst case; the
      request-anchored p50 of this one is judged against the target).
    paced: tokens arrive one by one as from a model; each crosses the bridge on its own.
  * under load nothing is paired: the table compares the two runs' distributions (ttfc; gap =
    time between consecutive chunks of one reply; chunk@ = every chunk's offset from its send;
    reply = send to completed/done), so differences include queueing at the bottleneck."""


def report(
    args: argparse.Namespace,
    layout: Layout,
    runs: dict[str, list[LoadResult]],
    direct: LoadResult,
    bridge: LoadResult,
    pairs: list[PairedResult],
    findings: list[str],
    results: dict[str, Any],
) -> bool:
    ok = True
    tokens = args.words + 3
    print("\n" + "=" * 78)
    print("RESULTS")
    print("=" * 78)
    ratio = bridge.rate / direct.rate if direct.rate else float("nan")
    results["ratio"] = ratio
    hit = ratio >= args.target_ratio
    ok &= hit
    print(
        f"throughput ({args.users} users x {args.rounds} rounds, {tokens} chunks/reply, median of "
        f"{args.repeats}): bridge={bridge.rate:,.0f} chunks/s direct={direct.rate:,.0f} chunks/s "
        f"ratio={ratio:.2f} (target >= {args.target_ratio:g}) {verdict(hit)}"
    )
    print(
        f"  frames/s: bridge={bridge.frame_rate:,.0f} update frames/s, "
        f"direct={direct.frame_rate:,.0f} StreamDelta/s"
    )
    if args.repeats > 1:
        per = [
            f"{b.rate / d.rate:.2f}" for b, d in zip(runs["bridge"], runs["direct"], strict=True)
        ]
        print(f"  per-repeat ratios: {' '.join(per)}")
    b_cpu, d_cpu = bridge.cpu_pct, direct.cpu_pct
    b_eff = bridge.rate / max(b_cpu["bridge"], 1e-9) * 100
    d_eff = direct.rate / max(d_cpu["loadgen"], 1e-9) * 100
    print(
        f"  per CPU-second of the relaying process: bridge={b_eff:,.0f} chunks (bridge process) "
        f"direct={d_eff:,.0f} chunks (load generator running MomoHubClient) "
        f"ratio={b_eff / d_eff:.2f}"
    )
    burst = pairs[0]
    hit = burst.added_p50_ms < args.target_added_ms
    ok &= hit
    print(
        f"added latency per chunk ({burst.label}, paired, request-anchored): "
        f"p50={burst.added_p50_ms:.3f} ms p99={burst.added_p99_ms:.3f} ms "
        f"(target p50 < {args.target_added_ms:g} ms) {verdict(hit)}"
    )
    for p in pairs:
        state = "within" if p.tap_added_p50_ms < args.target_added_ms else "above"
        print(
            f"  tap-anchored ({p.label}): added p50={p.tap_added_p50_ms:.3f} ms "
            f"p99={p.tap_added_p99_ms:.3f} ms ({state} the target; informative)"
        )

    print("\nunder load (unpaired: distributions of the median runs; ms):")
    print(
        f"  {'':7} {'chunks/s':>9} {'ttfc p50':>9} {'ttfc p99':>9} {'gap p50':>8} {'gap p99':>8} "
        f"{'chunk@ p50':>10} {'chunk@ p99':>10} {'reply p50':>9} {'reply p99':>9}"
    )
    for r in (direct, bridge):
        print(
            f"  {r.mode:7} {r.rate:9,.0f} {r.ttfc_p50_ms:9.2f} {r.ttfc_p99_ms:9.2f} "
            f"{r.gap_p50_ms:8.3f} {r.gap_p99_ms:8.3f} {r.offset_p50_ms:10.2f} "
            f"{r.offset_p99_ms:10.2f} {r.reply_p50_ms:9.2f} {r.reply_p99_ms:9.2f}"
        )
    print(
        f"  {'b - d':7} {'':9} {bridge.ttfc_p50_ms - direct.ttfc_p50_ms:9.2f} "
        f"{bridge.ttfc_p99_ms - direct.ttfc_p99_ms:9.2f} "
        f"{bridge.gap_p50_ms - direct.gap_p50_ms:8.3f} {bridge.gap_p99_ms - direct.gap_p99_ms:8.3f} "
        f"{bridge.offset_p50_ms - direct.offset_p50_ms:10.2f} "
        f"{bridge.offset_p99_ms - direct.offset_p99_ms:10.2f} "
        f"{bridge.reply_p50_ms - direct.reply_p50_ms:9.2f} "
        f"{bridge.reply_p99_ms - direct.reply_p99_ms:9.2f}"
    )
    for r in (direct, bridge):
        cpu = " ".join(f"{k}={v:.0f}%" for k, v in r.cpu_pct.items())
        print(f"  cpu during {r.mode:6}: {cpu}")

    print("\npaired, unloaded, request-anchored (ms; bridge - direct, per chunk):")
    print(
        f"  {'':17} {'added p50':>9} {'added p99':>9} {'ttfc+ p50':>9} {'ttfc+ p99':>9} "
        f"{'relay+ p50':>10} {'relay+ p99':>10} {'last+ p50':>9} | {'ttfc d/b':>13} "
        f"{'reply d/b':>15}"
    )
    for p in pairs:
        print(
            f"  {p.label:17} {p.added_p50_ms:9.3f} {p.added_p99_ms:9.3f} "
            f"{p.ttfc_added_p50_ms:9.3f} {p.ttfc_added_p99_ms:9.3f} {p.relay_added_p50_ms:10.3f} "
            f"{p.relay_added_p99_ms:10.3f} {p.last_added_p50_ms:9.3f} | "
            f"{p.direct_ttfc_p50_ms:6.2f}/{p.bridge_ttfc_p50_ms:<6.2f} "
            f"{p.direct_reply_p50_ms:7.2f}/{p.bridge_reply_p50_ms:<7.2f}"
        )
    print("paired, unloaded, tap-anchored (ms; chunk at the user - delta leaving the tap):")
    print(
        f"  {'':17} {'bridge p50':>10} {'bridge p99':>10} {'direct p50':>10} {'direct p99':>10} "
        f"{'added p50':>9} {'added p99':>9} | {'chunk 0 b/d':>13}"
    )
    for p in pairs:
        print(
            f"  {p.label:17} {p.tap_bridge_p50_ms:10.3f} {p.tap_bridge_p99_ms:10.3f} "
            f"{p.tap_direct_p50_ms:10.3f} {p.tap_direct_p99_ms:10.3f} {p.tap_added_p50_ms:9.3f} "
            f"{p.tap_added_p99_ms:9.3f} | "
            f"{p.tap_first_bridge_p50_ms:6.3f}/{p.tap_first_direct_p50_ms:<6.3f}"
        )
    print(EXPLANATION)

    # ---------------- findings ----------------
    if b_cpu["bridge"] >= 85:
        findings.append(
            f"bridge phase: the bridge process was the bottleneck ({b_cpu['bridge']:.0f}% of its "
            f"core; sandbox {b_cpu['sandbox']:.0f}%, load generator {b_cpu['loadgen']:.0f}%): "
            f"{1e6 / b_eff:.0f} us of bridge CPU per chunk vs {1e6 / d_eff:.0f} us for the "
            "direct reader (same MomoHubClient code, no hub)"
        )
    elif b_cpu["loadgen"] >= 90:
        findings.append(
            f"bridge phase: the load generator was saturated ({b_cpu['loadgen']:.0f}%) while the "
            f"bridge was at {b_cpu['bridge']:.0f}%: the bridge's rate is a lower bound"
        )
    if d_cpu["sandbox"] >= 90:
        findings.append(
            f"direct phase: the sandbox was at {d_cpu['sandbox']:.0f}% of its core (direct reader "
            f"{d_cpu['loadgen']:.0f}%): direct is bound by the token source, so the direct rate "
            "is a lower bound and the throughput ratio flatters the bridge"
        )
    elif d_cpu["loadgen"] >= 90:
        findings.append(
            f"direct phase: bound by the direct reader ({d_cpu['loadgen']:.0f}% of its core)"
        )
    if layout.sandbox is not None and layout.loadgen_bridge == layout.sandbox:
        busy = b_cpu.get(f"cpu{layout.sandbox}_busy", 0.0)
        if busy >= 95:
            findings.append(
                f"bridge phase: cpu{layout.sandbox} (sandbox + load generator) was {busy:.0f}% "
                "busy: the layout may have held the bridge back; rerun on >= 3 cores"
            )
    if args.users > 100:
        findings.append(
            "more than 100 users: aiohttp's default connector allows 100 connections per "
            "ClientSession, so the bridge and the direct client both queue streams beyond that"
        )
    if findings:
        print("\nfindings:")
        for f in findings:
            print(f"  - {f}")
    return ok


def print_bridge_profile(path: Path, top: int = 30) -> None:
    print_profile(
        path,
        top,
        missing=f"\n(no bridge profile at {path}: the bridge did not exit cleanly)",
        title=f"\nbridge cProfile, warm-up + load phases (top {top} by own time; {path}):",
        cumulative=f"bridge cProfile (top {top} by cumulative time):",
    )


# ================================================================================================
# mode openai: bridge vs an OpenAI-compatible upstream read directly
# ================================================================================================

UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "openai_upstream.py"
OPENAI_KEY = "sk-test"  # FakeOpenAI's default key; the paced server is given the same
BURST_PROVIDER = "fake"  # FakeOpenAI, model tokens-N
PACED_PROVIDER = "paced"  # openai_upstream.py's paced server, model paced-N
PACED_TOKEN_RE = re.compile(r"w(\d+)@(\d+) ")
PROMPT = [{"role": "user", "content": "go"}]


def openai_conns(args: argparse.Namespace) -> int:
    """Hub connections the openai mode opens: one per concurrent stream (one user each)."""
    return max(args.openai_users, *args.paced_streams)


def openai_bridge_config(
    tmp: Path, *, port: int, fake_url: str, paced_url: str, log_level: str
) -> Path:
    upstream = [
        "[momohub]",
        "enabled = false",
        "[[openai.providers]]",
        f'name = "{BURST_PROVIDER}"',
        f"base_url = {json.dumps(fake_url)}",
        f'api_key = "{OPENAI_KEY}"',
        "[[openai.providers]]",
        f'name = "{PACED_PROVIDER}"',
        f"base_url = {json.dumps(paced_url)}",
        f'api_key = "{OPENAI_KEY}"',
        'models = ["paced"]',
    ]
    return write_bridge_config(
        tmp / "bridge-openai", port=port, log_level=log_level, upstream=upstream
    )


def completions_frame(rid: str, model: str) -> str:
    return json.dumps(
        {
            "request_id": rid,
            "protocol": "openai",
            "type": "completions",
            "data": {"model": model, "messages": PROMPT},
        },
        separators=(",", ":"),
    )


async def hub_completion(ws: ClientConnection, rid: str, model: str) -> Reply:
    """Send one openai/completions and read its stream up to `completed` (raw updates kept,
    parsed after the timed part, as in bridge_reply)."""
    return Reply(*await read_stream(ws, rid, completions_frame(rid, model)))


def hub_pieces(reply: Reply, rid: str) -> None:
    """Replace the raw update frames by their text chunks, checking their order."""
    reply.raws = update_chunks(reply, rid)


async def direct_completion(http: aiohttp.ClientSession, url: str, model: str) -> Reply:
    """The baseline: the same request straight to the upstream, its SSE read with aiohttp and
    every chunk parsed (json.loads), as the bridge must; each read's arrival time is recorded."""
    pc = time.perf_counter
    loads = json.loads
    body = {"model": model, "messages": PROMPT, "stream": True}
    frames: list[float] = []
    texts: list[str] = []
    t_end = 0.0
    async with asyncio.timeout(REPLY_TIMEOUT):
        t_send = pc()
        async with http.post(url, json=body) as resp:
            if resp.status != 200:
                raise BenchError(
                    f"upstream answered {model}: HTTP {resp.status} {await resp.text()}"
                )
            buf = b""
            async for piece in resp.content.iter_any():
                t = pc()
                buf += piece
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    if not ev.startswith(b"data: "):
                        continue
                    payload = ev[6:]
                    if payload == b"[DONE]":
                        t_end = t
                        continue
                    choices = loads(payload).get("choices") or ()
                    content = choices[0].get("delta", {}).get("content") if choices else None
                    if content:
                        frames.append(t)
                        texts.append(content)
    if not t_end:
        raise BenchError(f"direct stream of {model} ended without [DONE]")
    return Reply(t_send, frames, t_end, texts)


def arrivals_at(pieces: list[str], times: list[float], ends: list[int]) -> list[float]:
    """Arrival time of each token, given where each token ends in the joined text: the time of
    the piece (frame, or read) that completed it."""
    piece_ends = list(itertools.accumulate(len(p) for p in pieces))
    out: list[float] = []
    j = 0
    for end in ends:
        while piece_ends[j] < end:
            j += 1
        out.append(times[j])
    return out


def check_burst(reply: Reply, n: int, what: str) -> None:
    tokens = [f"w{i} " for i in range(n)]
    text = "".join(reply.raws)
    if text != "".join(tokens):
        raise BenchError(f"{what}: reply came back wrong: {text[:100]!r}...")
    reply.chunks = arrivals_at(
        reply.raws, reply.frames, list(itertools.accumulate(map(len, tokens)))
    )


def check_paced(reply: Reply, n: int, what: str) -> None:
    text = "".join(reply.raws)
    found = list(PACED_TOKEN_RE.finditer(text))
    pos = 0
    for k, m in enumerate(found):
        if m.start() != pos or int(m[1]) != k:
            raise BenchError(f"{what}: token {k} came back wrong: {text[pos : pos + 60]!r}")
        pos = m.end()
    if len(found) != n or pos != len(text):
        raise BenchError(f"{what}: {len(found)} tokens of {n} ({len(text)} chars, {pos} parsed)")
    reply.chunks = arrivals_at(reply.raws, reply.frames, [m.end() for m in found])
    reply.stamps = [int(m[2]) / 1e9 for m in found]


async def closed_loop(
    one: Any, users: int, rounds: int, window: CpuWindow | None, offsets: list[float] | None = None
) -> tuple[list[list[Reply]], float]:
    """``users`` concurrent users, each ``rounds`` requests back to back (``one(i, r)``); user i
    starts after ``offsets[i]`` s. Returns the replies per user and the wall time."""
    per_user: list[list[Reply]] = [[] for _ in range(users)]

    async def user(i: int) -> None:
        if offsets:
            await asyncio.sleep(offsets[i])
        for r in range(rounds):
            per_user[i].append(await one(i, r))

    gc.collect()
    if window is not None:
        window.start()
    t0 = time.perf_counter()
    await run_users([user(i) for i in range(users)], REPLY_TIMEOUT * rounds + 30)
    elapsed = time.perf_counter() - t0
    if window is not None:
        window.stop()
    return per_user, elapsed


@dataclass
class OpenAIStack:
    upstream: ServerProc
    bridge: ServerProc
    fake_url: str  # FakeOpenAI, .../v1
    paced_url: str  # the paced server, .../v1
    bridge_url: str


async def start_openai_stack(
    args: argparse.Namespace,
    tmp: Path,
    src: Path,
    layout: Layout,
    live: Live,
    nofile: int,
    profile: Path | None,
) -> OpenAIStack:
    cmd = [
        sys.executable,
        str(UPSTREAM_SCRIPT),
        "--api-key",
        OPENAI_KEY,
        "--interval-ms",
        str(args.openai_pace_ms),
        "--first-ms",
        str(args.openai_first_ms),
    ]
    upstream = ServerProc(
        "openai-upstream",
        cmd,
        cwd=src,
        log_path=tmp / "openai-upstream.log",
        nofile=nofile,
        cpu=layout.sandbox,
    )
    live.servers.append(upstream)
    fake_url = await upstream.wait_ready("fake.ready", READY_TIMEOUT)
    paced_url = await upstream.wait_ready("paced.ready", READY_TIMEOUT)
    port = free_port()
    cfg = openai_bridge_config(
        tmp, port=port, fake_url=fake_url, paced_url=paced_url, log_level=args.bridge_log_level
    )
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "bridge.cli", "serve", "--config", str(cfg)]
    bridge = ServerProc(
        "bridge[openai]",
        cmd,
        cwd=src,
        log_path=tmp / "bridge-openai.log",
        nofile=nofile,
        cpu=layout.bridge,
    )
    live.servers.append(bridge)
    await wait_http_ready(bridge, f"http://{HOST}:{port}/readyz")
    return OpenAIStack(upstream, bridge, fake_url, paced_url, f"ws://{HOST}:{port}/api/gateway")


@dataclass
class PacedResult:
    streams: int
    tokens: int  # per stream
    rounds: int
    repeats: int
    samples: int  # paired chunks
    # chunk latency = arrival at the user - the upstream's write stamp of that chunk
    bridge_lat_p50_ms: float
    bridge_lat_p99_ms: float
    direct_lat_p50_ms: float
    direct_lat_p99_ms: float
    added_p50_ms: float  # paired: bridge latency - direct latency, same stream slot and token
    added_p99_ms: float
    ttft_bridge_p50_ms: float
    ttft_bridge_p99_ms: float
    ttft_direct_p50_ms: float
    ttft_direct_p99_ms: float
    ttft_added_p50_ms: float  # paired
    ttft_ratio: float  # p50 bridge / p50 direct
    cpu_per_1k: dict[str, float]  # CPU s per 1000 tokens: bridge, upstream (both modes), loadgen
    cpu_pct: dict[str, dict[str, float]]  # mode -> the last repeat's CpuWindow.pct


def cpu_per_1k(windows: list[CpuWindow], tokens: int) -> dict[str, float]:
    """CPU seconds per 1000 tokens of each process, pooled over the windows."""
    keys = windows[0].secs.keys() if windows else ()
    return {k: 1000 * sum(w.secs[k] for w in windows) / max(tokens, 1) for k in keys}


def pair_paced(
    streams: int,
    args: argparse.Namespace,
    got: dict[str, list[list[list[Reply]]]],
    windows: dict[str, list[CpuWindow]],
) -> PacedResult:
    lat: dict[str, list[float]] = {"bridge": [], "direct": []}
    ttft: dict[str, list[float]] = {"bridge": [], "direct": []}
    added: list[float] = []
    ttft_added: list[float] = []
    tokens = {"bridge": 0, "direct": 0}
    for rep_b, rep_d in zip(got["bridge"], got["direct"], strict=True):
        for user_b, user_d in zip(rep_b, rep_d, strict=True):
            for b, d in zip(user_b, user_d, strict=True):
                lb = [a - s for a, s in zip(b.chunks, b.stamps, strict=True)]
                ld = [a - s for a, s in zip(d.chunks, d.stamps, strict=True)]
                if min(lb + ld) < -1e-3:
                    raise BenchError(
                        "a chunk arrived before the upstream stamped it: the two processes' "
                        "perf_counter clocks differ (this needs Linux's CLOCK_MONOTONIC)"
                    )
                lat["bridge"] += lb
                lat["direct"] += ld
                added += [x - y for x, y in zip(lb, ld, strict=True)]
                tb, td = b.chunks[0] - b.t_send, d.chunks[0] - d.t_send
                ttft["bridge"].append(tb)
                ttft["direct"].append(td)
                ttft_added.append(tb - td)
                tokens["bridge"] += len(b.chunks)
                tokens["direct"] += len(d.chunks)
    lb50, lb99 = pcts(lat["bridge"])
    ld50, ld99 = pcts(lat["direct"])
    a50, a99 = pcts(added)
    tb50, tb99 = pcts(ttft["bridge"])
    td50, td99 = pcts(ttft["direct"])
    per_b = cpu_per_1k(windows["bridge"], tokens["bridge"])
    per_d = cpu_per_1k(windows["direct"], tokens["direct"])
    return PacedResult(
        streams=streams,
        tokens=args.openai_paced_tokens,
        rounds=args.openai_paced_rounds,
        repeats=args.openai_repeats,
        samples=len(added),
        bridge_lat_p50_ms=lb50,
        bridge_lat_p99_ms=lb99,
        direct_lat_p50_ms=ld50,
        direct_lat_p99_ms=ld99,
        added_p50_ms=a50,
        added_p99_ms=a99,
        ttft_bridge_p50_ms=tb50,
        ttft_bridge_p99_ms=tb99,
        ttft_direct_p50_ms=td50,
        ttft_direct_p99_ms=td99,
        ttft_added_p50_ms=pcts(ttft_added)[0],
        ttft_ratio=tb50 / td50 if td50 > 0 else float("nan"),
        cpu_per_1k={
            "bridge": per_b["bridge"],
            "upstream_bridge": per_b["upstream"],
            "loadgen_bridge": per_b["loadgen"],
            "upstream_direct": per_d["upstream"],
            "loadgen_direct": per_d["loadgen"],
        },
        cpu_pct={m: ws[-1].pct for m, ws in windows.items() if ws},
    )


async def run_openai(
    args: argparse.Namespace, src: Path, cpus: list[int], layout: Layout
) -> tuple[bool, dict[str, Any]]:
    """Bridge vs an OpenAI-compatible upstream read directly with aiohttp."""
    clock = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in clock or "RAW" in clock:
        raise BenchError(
            f"perf_counter is {clock!r} here: the paced chunks' stamps (taken in the upstream "
            "process) can only be compared with arrival times on Linux's CLOCK_MONOTONIC"
        )
    n_burst = args.openai_tokens
    n_paced = args.openai_paced_tokens
    conns_n = openai_conns(args)
    print("\n" + "#" * 78)
    print("# mode openai: bridge vs an OpenAI-compatible upstream read directly (aiohttp SSE)")
    print("#" * 78)
    print(
        f"settings: {'QUICK ' if args.quick else ''}throughput: {args.openai_users} users x "
        f"{args.openai_rounds} rounds of tokens-{n_burst} (FakeOpenAI, no delay), "
        f"{args.openai_repeats} alternating repeat(s); paced: {n_paced} tokens/stream at "
        f"{args.openai_pace_ms:g} ms/token (token 0 at {args.openai_first_ms:g} ms), "
        f"{args.openai_paced_rounds} stream(s) per slot, at {', '.join(map(str, args.paced_streams))} "
        f"concurrent streams, {args.openai_repeats} alternating repeat(s); bridge log "
        f"level={args.bridge_log_level}"
    )
    print(
        f"pinning : {layout.text} (the OpenAI upstream takes the sandbox's place; paced streams: "
        "the load generator as for the paired requests)"
    )
    if args.profile_bridge:
        print("profile : the bridge runs under cProfile: its numbers are slowed down")
    sys.stdout.flush()

    tmp = Path(tempfile.mkdtemp(prefix="stream_bench-openai-"))
    live = Live()
    results: dict[str, Any] = {}
    findings: list[str] = []
    nofile = conns_n * 3 + 1024
    prof = tmp / "bridge-openai.prof" if args.profile_bridge else None
    runs: dict[str, list[LoadResult]] = {"direct": [], "bridge": []}
    burst_windows: dict[str, list[CpuWindow]] = {"direct": [], "bridge": []}
    paced: list[PacedResult] = []
    t_start = time.perf_counter()
    try:
        stack = await start_openai_stack(args, tmp, src, layout, live, nofile, prof)
        print(
            f"\n[setup] upstream pid {stack.upstream.pid} (FakeOpenAI {stack.fake_url}, paced "
            f"{stack.paced_url}); bridge pid {stack.bridge.pid} at {stack.bridge_url}",
            flush=True,
        )
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Authorization": f"Bearer {OPENAI_KEY}"},
            timeout=aiohttp.ClientTimeout(total=REPLY_TIMEOUT),
        )
        live.clients.append(http)
        conns = await open_many(stack.bridge_url, conns_n, False, "oa", stack.bridge)
        live.conns.extend(conns)
        fake_post = f"{stack.fake_url}/chat/completions"
        paced_post = f"{stack.paced_url}/chat/completions"

        def bridge_one(model: str, tag: str) -> Any:
            return lambda i, r: hub_completion(conns[i], f"{tag}-u{i}-r{r}", model)

        def direct_one(url: str, model: str) -> Any:
            return lambda i, r: direct_completion(http, url, model)

        # Warm-up (not measured): every connection, both providers, both paths; fills the
        # bridge's and the direct client's connection pools to the widest concurrency used.
        set_own_cpu(layout.loadgen_bridge, cpus)
        await closed_loop(bridge_one(f"{BURST_PROVIDER}/tokens-20", "warm-b"), conns_n, 1, None)
        await closed_loop(bridge_one(f"{PACED_PROVIDER}/paced-2", "warm-p"), conns_n, 1, None)
        set_own_cpu(layout.loadgen_direct, cpus)
        await closed_loop(direct_one(fake_post, "tokens-20"), conns_n, 1, None)
        await closed_loop(direct_one(paced_post, "paced-2"), conns_n, 1, None)

        # ---------------- throughput: tokens-N in one burst ----------------
        procs = {"upstream": stack.upstream, "bridge": stack.bridge}
        users = args.openai_users
        print(
            f"[throughput] {users} users x {args.openai_rounds} rounds of {n_burst} tokens; "
            f"direct = aiohttp SSE read of FakeOpenAI, bridge = hub openai/completions",
            flush=True,
        )
        for rep in range(args.openai_repeats):
            order = ("direct", "bridge") if rep % 2 == 0 else ("bridge", "direct")
            for mode in order:
                window = CpuWindow(procs, layout.cores())
                if mode == "direct":
                    set_own_cpu(layout.loadgen_direct, cpus)
                    one = direct_one(fake_post, f"tokens-{n_burst}")
                else:
                    set_own_cpu(layout.loadgen_bridge, cpus)
                    one = bridge_one(f"{BURST_PROVIDER}/tokens-{n_burst}", f"tp{rep}")
                per_user, secs = await closed_loop(one, users, args.openai_rounds, window)
                replies = []
                for i, items in enumerate(per_user):
                    for r, rep_ in enumerate(items):
                        if mode == "bridge":
                            hub_pieces(rep_, f"tp{rep}-u{i}-r{r}")
                        check_burst(rep_, n_burst, f"{mode} u{i} r{r}")
                        replies.append(rep_)
                res = summarize(mode, users, args.openai_rounds, replies, secs, window.pct)
                runs[mode].append(res)
                burst_windows[mode].append(window)
                per_1k = 1000 * window.secs["bridge" if mode == "bridge" else "loadgen"]
                print(
                    f"    repeat {rep + 1} {mode:6}: {res.rate:,.0f} tokens/s "
                    f"({res.frames:,} {'update frames' if mode == 'bridge' else 'chunks'} for "
                    f"{res.chunks:,} tokens in {secs:.2f} s; cpu upstream "
                    f"{res.cpu_pct['upstream']:.0f}% bridge {res.cpu_pct['bridge']:.0f}% loadgen "
                    f"{res.cpu_pct['loadgen']:.0f}%; {per_1k / res.chunks:.4f} CPU s/1000 tokens "
                    f"of the {'bridge' if mode == 'bridge' else 'direct reader'})",
                    flush=True,
                )

        # ---------------- paced: 20 ms/token, 10 and 50 concurrent streams ----------------
        set_own_cpu(layout.loadgen_paired, cpus)
        pace = args.openai_pace_ms / 1000
        for streams in args.paced_streams:
            # Independent streams are not in step: their starts are spread over one token time.
            offsets = [i * pace / streams for i in range(streams)]
            got: dict[str, list[list[list[Reply]]]] = {"direct": [], "bridge": []}
            windows: dict[str, list[CpuWindow]] = {"direct": [], "bridge": []}
            print(
                f"[paced] {streams} concurrent streams x {args.openai_paced_rounds} of {n_paced} "
                f"tokens at {args.openai_pace_ms:g} ms/token, {args.openai_repeats} alternating "
                "repeat(s) ...",
                flush=True,
            )
            for rep in range(args.openai_repeats):
                order = ("direct", "bridge") if rep % 2 == 0 else ("bridge", "direct")
                for mode in order:
                    tag = f"pc{streams}-{rep}"
                    if mode == "direct":
                        one = direct_one(paced_post, f"paced-{n_paced}")
                    else:
                        one = bridge_one(f"{PACED_PROVIDER}/paced-{n_paced}", tag)
                    window = CpuWindow(procs, layout.cores())
                    per_user, _ = await closed_loop(
                        one, streams, args.openai_paced_rounds, window, offsets
                    )
                    for i, items in enumerate(per_user):
                        for r, rep_ in enumerate(items):
                            if mode == "bridge":
                                hub_pieces(rep_, f"{tag}-u{i}-r{r}")
                            check_paced(rep_, n_paced, f"{mode} {tag} u{i} r{r}")
                    got[mode].append(per_user)
                    windows[mode].append(window)
            res_p = pair_paced(streams, args, got, windows)
            paced.append(res_p)
            print(
                f"    added per chunk p50={res_p.added_p50_ms:.3f} ms p99={res_p.added_p99_ms:.3f} "
                f"ms; time to first token p50 bridge={res_p.ttft_bridge_p50_ms:.2f} ms direct="
                f"{res_p.ttft_direct_p50_ms:.2f} ms",
                flush=True,
            )
        await live.close()  # the profiled bridge writes its profile as it exits
    except Exception:
        for srv in live.servers:
            srv.check_alive()
        raise
    finally:
        await live.close()
        set_own_cpu(None, cpus)
        prof = _wind_up(prof, "stream_bench-openai-bridge.prof", tmp, keep=args.keep)

    direct, bridge = _median_run(runs["direct"]), _median_run(runs["bridge"])
    results["throughput"] = {"direct": asdict(direct), "bridge": asdict(bridge)}
    results["throughput_rates"] = {m: [r.rate for r in rs] for m, rs in runs.items()}
    tokens_of = {m: sum(r.chunks for r in rs) for m, rs in runs.items()}
    results["cpu_per_1k"] = {
        m: cpu_per_1k(burst_windows[m], tokens_of[m]) for m in ("direct", "bridge")
    }
    results["cpu_per_1k_per_repeat"] = {
        m: [cpu_per_1k([w], r.chunks) for w, r in zip(burst_windows[m], runs[m], strict=True)]
        for m in ("direct", "bridge")
    }
    results["paced"] = [asdict(p) for p in paced]
    total = time.perf_counter() - t_start
    ok = report_openai(args, layout, runs, direct, bridge, paced, findings, results)
    if prof is not None:
        print_bridge_profile(prof)
    print(f"\nmode openai: total time {total:.0f} s; all targets {'met' if ok else 'NOT met'}")
    results["findings"] = findings
    return ok, results


EXPLANATION_OPENAI = """
what is measured (mode openai; every timestamp in the load generator, one perf_counter clock):
  * the upstream is one process serving FakeOpenAI (tests/support/fake_openai.py; model tokens-N:
    N chunks written back to back, no delay) and a paced server (bench/openai_upstream.py; model
    paced-N: token k written at first-token delay + k x pace, each stamped with the upstream's
    perf_counter just before its write). The bridge runs with [momohub] enabled = false and both
    as [[openai.providers]]; hub users send openai/completions ("fake/tokens-N", "paced/paced-N").
  * direct = the same users and requests straight to the upstream: one aiohttp session, the SSE
    read as it arrives and every chunk json-parsed (the work the bridge cannot skip either).
  * token = one upstream content chunk (w<k> ); timed when the frame (bridge: update frame; the
    bridge may merge the chunks of one read into one frame) or the read (direct) carrying it
    arrived. tokens/s = tokens of all replies / wall time, closed loop per user.
  * CPU s per 1000 tokens = the process's utime+stime delta (/proc/<pid>/stat) over a measured
    window / tokens delivered in it x 1000, pooled over the repeats. The direct reader's figure
    (the load generator's own process time, reading the upstream itself) is the baseline.
  * paced, added latency per chunk: a chunk's latency is its arrival at the user minus the
    upstream's stamp for it (one system-wide clock, CLOCK_MONOTONIC), so the pacing's own timer
    jitter cancels; added = bridge latency - direct latency of the same stream slot (user i,
    round r) and token k, from the bridge and direct runs of the same repeat. The streams'
    starts are spread evenly over one token time (independent streams are not in step).
  * time to first token = first content token at the user - that request's send, paced model
    (token 0 is due at the first-token delay after the upstream read the request)."""


def report_openai(
    args: argparse.Namespace,
    layout: Layout,
    runs: dict[str, list[LoadResult]],
    direct: LoadResult,
    bridge: LoadResult,
    paced: list[PacedResult],
    findings: list[str],
    results: dict[str, Any],
) -> bool:
    ok = True
    print("\n" + "=" * 78)
    print("RESULTS (mode openai)")
    print("=" * 78)
    ratio = bridge.rate / direct.rate if direct.rate else float("nan")
    results["ratio"] = ratio
    print(
        f"throughput ({args.openai_users} users x {args.openai_rounds} rounds, "
        f"{args.openai_tokens} tokens/reply, median of {args.openai_repeats}): "
        f"bridge={bridge.rate:,.0f} tokens/s direct={direct.rate:,.0f} tokens/s ratio={ratio:.2f}"
    )
    print(
        f"  frames: bridge {bridge.frames / max(bridge.replies, 1):.1f} update frames per "
        f"{args.openai_tokens}-token reply (it merges the chunks of one upstream read); ttft p50 "
        "bridge="
        f"{bridge.ttfc_p50_ms:.2f} ms direct={direct.ttfc_p50_ms:.2f} ms; reply p50 bridge="
        f"{bridge.reply_p50_ms:.2f} ms direct={direct.reply_p50_ms:.2f} ms"
    )
    if args.openai_repeats > 1:
        per = [
            f"{b.rate / d.rate:.2f}" for b, d in zip(runs["bridge"], runs["direct"], strict=True)
        ]
        print(f"  per-repeat ratios: {' '.join(per)}")
    cpu_b, cpu_d = results["cpu_per_1k"]["bridge"], results["cpu_per_1k"]["direct"]
    hit = cpu_b["bridge"] <= args.target_openai_cpu
    ok &= hit
    print(
        f"CPU s per 1000 tokens (throughput runs, pooled over {args.openai_repeats}): bridge "
        f"process={cpu_b['bridge']:.4f} (target <= {args.target_openai_cpu:g}) {verdict(hit)}; "
        f"direct reader (load generator)={cpu_d['loadgen']:.4f}; ratio="
        f"{cpu_b['bridge'] / cpu_d['loadgen']:.2f}"
    )
    print(
        f"  alongside: upstream {cpu_b['upstream']:.4f} (bridge runs) / {cpu_d['upstream']:.4f} "
        f"(direct runs); hub clients in the load generator {cpu_b['loadgen']:.4f}"
    )
    if args.openai_repeats > 1:
        reps = [f"{x['bridge']:.4f}" for x in results["cpu_per_1k_per_repeat"]["bridge"]]
        print(f"  bridge per repeat: {' '.join(reps)}")
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    bound = 1000 * args.openai_repeats * tick / max(sum(r.chunks for r in runs["bridge"]), 1)
    print(f"  (/proc clock-tick rounding moves the bridge figure by at most +/-{bound:.4f})")

    targets = dict(zip(args.paced_streams, args.target_paced_added_ms, strict=True))
    for p in paced:
        target = targets[p.streams]
        hit = p.added_p50_ms <= target
        ok &= hit
        print(
            f"added latency per chunk at {p.streams} streams, paced {args.openai_pace_ms:g} "
            f"ms/token (paired against direct reads, {p.samples:,} chunks): "
            f"p50={p.added_p50_ms:.3f} ms p99={p.added_p99_ms:.3f} ms (target p50 <= {target:g} "
            f"ms) {verdict(hit)}"
        )
    widest = max(paced, key=lambda p: p.streams)
    hit = widest.ttft_ratio <= args.target_ttft_ratio
    ok &= hit
    print(
        f"time to first token at {widest.streams} streams (p50; token 0 due "
        f"{args.openai_first_ms:g} ms after the upstream read the request): "
        f"bridge={widest.ttft_bridge_p50_ms:.2f} ms direct={widest.ttft_direct_p50_ms:.2f} ms "
        f"ratio={widest.ttft_ratio:.2f} (target <= {args.target_ttft_ratio:g}x) {verdict(hit)}"
    )

    print("\npaced streams (ms; chunk latency = arrival at the user - the upstream's stamp):")
    print(
        f"  {'streams':>7} {'bridge p50':>10} {'bridge p99':>10} {'direct p50':>10} "
        f"{'direct p99':>10} {'added p50':>9} {'added p99':>9} | {'ttft b/d p50':>13} "
        f"{'ttft b/d p99':>13} {'ttft+ p50':>9} | {'bridge cpu s/1k':>15}"
    )
    for p in paced:
        print(
            f"  {p.streams:7} {p.bridge_lat_p50_ms:10.3f} {p.bridge_lat_p99_ms:10.3f} "
            f"{p.direct_lat_p50_ms:10.3f} {p.direct_lat_p99_ms:10.3f} {p.added_p50_ms:9.3f} "
            f"{p.added_p99_ms:9.3f} | {p.ttft_bridge_p50_ms:6.2f}/{p.ttft_direct_p50_ms:<6.2f} "
            f"{p.ttft_bridge_p99_ms:6.2f}/{p.ttft_direct_p99_ms:<6.2f} {p.ttft_added_p50_ms:9.2f} "
            f"| {p.cpu_per_1k['bridge']:15.4f}"
        )
    for r in (direct, bridge):
        cpu = " ".join(f"{k}={v:.0f}%" for k, v in r.cpu_pct.items())
        print(f"  cpu during throughput {r.mode:6}: {cpu}")
    for p in paced:
        for mode, pct in p.cpu_pct.items():
            cpu = " ".join(f"{k}={v:.0f}%" for k, v in pct.items())
            print(f"  cpu during paced x{p.streams} {mode:6}: {cpu}")
    print(EXPLANATION_OPENAI)

    b_cpu, d_cpu = bridge.cpu_pct, direct.cpu_pct
    if b_cpu["bridge"] >= 85:
        findings.append(
            f"throughput, bridge runs: the bridge process was the bottleneck ({b_cpu['bridge']:.0f}% "
            f"of its core; upstream {b_cpu['upstream']:.0f}%, load generator "
            f"{b_cpu['loadgen']:.0f}%)"
        )
    elif b_cpu["loadgen"] >= 90:
        findings.append(
            f"throughput, bridge runs: the load generator was saturated ({b_cpu['loadgen']:.0f}%) "
            f"while the bridge was at {b_cpu['bridge']:.0f}%: the bridge's rate is a lower bound"
        )
    if d_cpu["upstream"] >= 90:
        findings.append(
            f"throughput, direct runs: the upstream was at {d_cpu['upstream']:.0f}% of its core: "
            "direct is bound by the token source, so the ratio flatters the bridge"
        )
    elif d_cpu["loadgen"] >= 90:
        findings.append(
            f"throughput, direct runs: bound by the direct reader ({d_cpu['loadgen']:.0f}% of its "
            "core)"
        )
    per_reply = bridge.frames / max(bridge.replies, 1)
    if per_reply >= 0.9 * args.openai_tokens:
        findings.append(
            f"throughput: the bridge sent {per_reply:.0f} update frames per {args.openai_tokens}-"
            "token reply: (nearly) every upstream chunk went out as a websocket frame of its own, "
            "one socket write each, while the direct reader takes whatever one read brings"
        )
    if len(paced) > 1:
        lo, hi = min(paced, key=lambda p: p.streams), max(paced, key=lambda p: p.streams)
        if hi.ttft_added_p50_ms > 2 * max(lo.ttft_added_p50_ms, 1.0):
            findings.append(
                f"time to first token: the bridge adds {lo.ttft_added_p50_ms:.1f} ms (p50) at "
                f"{lo.streams} streams and {hi.ttft_added_p50_ms:.1f} ms at {hi.streams} (starts "
                f"spread over {args.openai_pace_ms:g} ms): each stream's start costs the bridge "
                "loop time that the starts after it queue for (--profile-bridge shows where)"
            )
    for p in paced:
        for mode, pct in p.cpu_pct.items():
            busy = max((v for k, v in pct.items() if k.endswith("_busy")), default=0.0)
            if busy >= 90:
                findings.append(
                    f"paced x{p.streams} ({mode} runs): a core was {busy:.0f}% busy (these "
                    "processes and anyone else's): the latency figures include queueing for "
                    "the CPU"
                )
    if findings:
        print("\nfindings:")
        for f in findings:
            print(f"  - {f}")
    return ok


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stream_bench.py",
        description="Bridge vs MomoHub-direct streaming: chunks/s and per-chunk added latency.",
    )
    p.add_argument(
        "--mode",
        choices=(*MODES, "all"),
        default="momohub",
        help="momohub: bridge vs MomoHub direct (default); openai: bridge vs an "
        "OpenAI-compatible upstream read directly; all: both, one after the other",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 10 users, 1 round, few samples")
    p.add_argument("--users", type=int, help="concurrent users (default 100, quick 10)")
    p.add_argument("--rounds", type=int, help="messages per user, closed loop (default 3, quick 1)")
    p.add_argument(
        "--repeats",
        type=int,
        help="alternating direct/bridge load repeats; the median is reported (default 3, quick 1)",
    )
    p.add_argument(
        "--words", type=int, default=197, help="words per message (reply = words + 3 tokens)"
    )
    p.add_argument("--samples", type=int, help="paired burst samples (default 20, quick 5)")
    p.add_argument(
        "--paced-ms",
        type=float,
        default=2.0,
        help="token delay of the paced paired measurement (default 2; 0 = skip it)",
    )
    p.add_argument("--paced-samples", type=int, help="paced paired samples (default 10, quick 3)")
    add_bridge_args(p, profile_help="run the loaded bridge under cProfile and print its top costs")
    p.add_argument("--target-ratio", type=float, default=0.5)
    p.add_argument("--target-added-ms", type=float, default=1.0)
    g = p.add_argument_group("mode openai (bridge vs an OpenAI-compatible upstream)")
    g.add_argument("--openai-users", type=int, help="throughput users (default 50, quick 10)")
    g.add_argument(
        "--openai-rounds", type=int, help="throughput replies per user (default 3, quick 5)"
    )
    g.add_argument(
        "--openai-tokens", type=int, default=200, help="tokens per throughput reply (default 200)"
    )
    g.add_argument(
        "--openai-repeats",
        type=int,
        help="alternating direct/bridge repeats of each openai measurement (default 3, quick 1)",
    )
    g.add_argument(
        "--paced-streams",
        default="10,50",
        help="concurrent paced streams, comma-separated (default 10,50)",
    )
    g.add_argument(
        "--openai-pace-ms", type=float, default=20.0, help="paced: ms per token (default 20)"
    )
    g.add_argument(
        "--openai-first-ms",
        type=float,
        help="paced: ms from the request to token 0 (default: one token time)",
    )
    g.add_argument(
        "--openai-paced-tokens", type=int, help="tokens per paced stream (default 50, quick 25)"
    )
    g.add_argument(
        "--openai-paced-rounds",
        type=int,
        help="paced streams per slot, back to back (default 3, quick 1)",
    )
    g.add_argument(
        "--target-openai-cpu",
        type=float,
        default=0.035,
        help="max bridge CPU s per 1000 tokens (default 0.035)",
    )
    g.add_argument(
        "--target-paced-added-ms",
        default="0.5,2",
        help="max added p50 per chunk at each --paced-streams count (default 0.5,2)",
    )
    g.add_argument(
        "--target-ttft-ratio",
        type=float,
        default=1.5,
        help="max time-to-first-token p50 ratio bridge/direct at the widest paced count",
    )
    add_output_args(p)
    a = p.parse_args(argv)
    q = a.quick
    a.users = a.users if a.users is not None else (10 if q else 100)
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    a.repeats = a.repeats if a.repeats is not None else (1 if q else 3)
    a.samples = a.samples if a.samples is not None else (5 if q else 20)
    a.paced_samples = a.paced_samples if a.paced_samples is not None else (3 if q else 10)
    if min(a.users, a.rounds, a.words, a.samples, a.repeats) < 1 or a.paced_samples < 0:
        p.error("--users, --rounds, --words, --samples and --repeats must be positive")
    if a.paced_ms < 0:
        p.error("--paced-ms must be >= 0")
    a.openai_users = a.openai_users if a.openai_users is not None else (10 if q else 50)
    # quick: 5 rounds still, or the direct side's window is a few clock ticks long
    a.openai_rounds = a.openai_rounds if a.openai_rounds is not None else (5 if q else 3)
    a.openai_repeats = a.openai_repeats if a.openai_repeats is not None else (1 if q else 3)
    a.openai_paced_tokens = (
        a.openai_paced_tokens if a.openai_paced_tokens is not None else (25 if q else 50)
    )
    a.openai_paced_rounds = (
        a.openai_paced_rounds if a.openai_paced_rounds is not None else (1 if q else 3)
    )
    a.openai_first_ms = a.openai_first_ms if a.openai_first_ms is not None else a.openai_pace_ms
    try:
        a.paced_streams = [int(x) for x in a.paced_streams.split(",") if x.strip()]
        a.target_paced_added_ms = [
            float(x) for x in a.target_paced_added_ms.split(",") if x.strip()
        ]
    except ValueError:
        p.error("--paced-streams and --target-paced-added-ms are comma-separated numbers")
    if not a.paced_streams or min(a.paced_streams) < 1:
        p.error("--paced-streams needs at least one positive count")
    if len(a.target_paced_added_ms) != len(a.paced_streams):
        p.error("--target-paced-added-ms needs one target per --paced-streams count")
    if (
        min(a.openai_users, a.openai_rounds, a.openai_tokens, a.openai_repeats) < 1
        or min(a.openai_paced_tokens, a.openai_paced_rounds) < 1
        or a.openai_pace_ms < 0
        or a.openai_first_ms < 0
    ):
        p.error("the --openai-* counts must be positive and the paced times >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    return run_bench(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
