"""Real bridge processes as the nodes of one cluster, for the multi-process end-to-end tests.

`ProcCluster` starts `momobridge serve` (``python -m bridge.cli serve --config <toml>``) once per
node: each with a TOML config of its own in the test's temp dir (its own data dir, port 0, JSON
logs at info), all on one PostgreSQL database (`[storage] url`) and one Redis
(`[cluster] redis_url`), with a short heartbeat and node ttl so a killed node is gone within
about two seconds. A node has started when its log says ``momobridge.ready`` (the line carries
the port the OS gave it) and is ready when `/readyz` answers 200 listing as many nodes as asked.

Every process is registered in bench/_common.py's `LIVE` (killed at exit, whatever happened) and
gets SIGKILL from the kernel if the test process dies (``PR_SET_PDEATHSIG``); `close()`, which the
fixture runs at teardown even when the test failed, kills and reaps every node. Each node's
stdout and stderr go to ``<node>.log`` in the temp dir; tests/conftest.py attaches the logs'
tails to the report of a failed test (`failure_sections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import LIVE, launch_server
from bridge.config import Config
from tests.support.cli import momobridge
from tests.support.hub_client import HubClient

HOST = "127.0.0.1"
ADMIN_CODE = "cluster-admin-secret"
REPO = Path(__file__).resolve().parents[2]
# A process starts in a second or two; three at once on two busy cores take much longer.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0  # SIGTERM grace before SIGKILL
REAP_TIMEOUT = 10.0  # a SIGKILLed process is gone within this
POLL = 0.05  # between looks at a log file or /readyz: a child process offers nothing to wait on
LOG_TAIL = 60  # lines of each node's log shown with a failure


class NodeFailed(AssertionError):
    """A node exited, or did not start or get ready in time; the message has its log's tail."""


# ----- config ------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """``{"section": {"key": value}}`` as TOML; a dotted section name (``plugins.schedule``)
    is a nested table, dicts and lists of dicts inside a section are inline tables."""
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


# ----- one node ------------------------------------------------------------------------------------


class NodeProc:
    """One `momobridge serve` process and the hub clients a test opened on it."""

    def __init__(self, node_id: str, config_path: Path, log_path: Path) -> None:
        self.node_id = node_id
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.clients: list[HubClient] = []

    # -- where it is ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/api/gateway"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------------

    def launch(self) -> None:
        self.proc = launch_server(
            momobridge("serve", "--config", str(self.config_path)), self.log_path, cwd=REPO
        )

    async def wait_started(self, timeout: float = START_TIMEOUT) -> int:
        """Until the log says ``momobridge.ready``; returns (and keeps) the port it names."""

        def started() -> bool:
            for event in self.events("momobridge.ready"):
                self.port = int(event["url"].split(":")[2].split("/")[0])
                return True
            return False

        await self._poll(started, timeout, "to start (momobridge.ready)")
        return self.port

    async def wait_ready(self, nodes: int = 0, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Until /readyz answers 200 (every component ok) listing at least ``nodes`` nodes;
        returns its body."""
        seen: dict[str, Any] = {}

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                status, body = await self.readyz()
                if status == 200 and len(body.get("nodes") or []) >= nodes:
                    seen.update(body)
                    return True
            return False

        await self._poll(ready, timeout, f"to be ready with {nodes} node(s) in /readyz")
        return seen

    async def kill(self) -> None:
        """SIGKILL, and reap it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        await self._reap(REAP_TIMEOUT)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a graceful stop: it leaves the cluster, releases its leases), SIGKILL if it
        has not exited within ``timeout``; reaps it and returns its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
        await self._reap(REAP_TIMEOUT)
        return proc.returncode

    async def _reap(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None
        await asyncio.to_thread(proc.wait, timeout)
        if proc in LIVE:
            LIVE.remove(proc)

    async def close_clients(self) -> None:
        clients, self.clients = self.clients, []
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()

    # -- talking to it ----------------------------------------------------------------------------

    async def client(self, user_id: Any = None, token: str = "") -> HubClient:
        """A hub connection (logged in as ``user_id`` unless None), closed at teardown."""
        c = await HubClient.open(self.url)
        self.clients.append(c)
        if user_id is not None:
            await c.login(user_id, token)
        return c

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(self.http + "/readyz") as r:
                return r.status, await r.json(content_type=None)

    # -- its log ----------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (named ``name``, or all) the node wrote so far."""
        found = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue  # a traceback, a one-line refusal on stderr
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        text = self.log_text().splitlines()[-lines:]
        return "\n".join(text) or "(empty log)"

    def describe(self) -> str:
        state = "not launched"
        if self.proc is not None:
            code = self.proc.poll()
            state = f"pid {self.proc.pid}, " + ("running" if code is None else f"exit {code}")
        return f"node {self.node_id} ({state}, port {self.port or '?'}, log {self.log_path})"

    async def _poll(
        self, check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if not self.running():
                raise NodeFailed(
                    f"{self.describe()} exited while waiting {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise NodeFailed(
                    f"{self.describe()} took over {timeout:.0f} s {what}:\n{self.log_tail()}"
                )
            await asyncio.sleep(POLL)


# ----- the cluster ---------------------------------------------------------------------------------


class ProcCluster:
    """Bridge processes on one PostgreSQL database and one Redis. ``sections`` given here apply
    to every node; `start` may add more for the nodes it starts."""

    def __init__(
        self,
        tmp_path: Path,
        dsn: str,
        redis_url: str,
        *,
        heartbeat: float = 0.5,
        node_ttl: float = 2.0,
        **sections: dict[str, Any],
    ) -> None:
        self.dir = tmp_path
        self.dsn = dsn
        self.redis_url = redis_url
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.sections = sections
        self.nodes: dict[str, NodeProc] = {}

    def config(self, node_id: str, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
        data = self.dir / node_id
        data.mkdir(parents=True, exist_ok=True)
        flat: dict[str, dict[str, Any]] = {
            "server": {"host": HOST, "port": 0},
            "auth": {"admin_code": ADMIN_CODE},
            # `path` too: the data dir (uploads, the admin code) sits next to it.
            "storage": {"url": self.dsn, "path": str(data / "bridge.db")},
            "cluster": {
                "redis_url": self.redis_url,
                "node_id": node_id,
                "heartbeat": self.heartbeat,
                "node_ttl": self.node_ttl,
            },
            "log": {"level": "info", "format": "json"},
            # Off unless a test asks for it: no embedded sandbox per node.
            "momohub": {"enabled": False},
        }
        for extra in (self.sections, sections):
            for name, values in extra.items():
                flat.setdefault(name, {})
                _merge(flat[name], values)
        return flat

    def add(self, node_id: str, **sections: dict[str, Any]) -> NodeProc:
        """Writes the node's config (checked here: a bad key fails now, naming it) and
        launches it; see `start` for waiting on it."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already added")
        text = to_toml(self.config(node_id, **sections))
        Config.model_validate(tomllib.loads(text))
        path = self.dir / node_id / "config.toml"
        path.write_text(text, encoding="utf-8")
        node = NodeProc(node_id, path, self.dir / f"{node_id}.log")
        self.nodes[node_id] = node
        node.launch()
        return node

    async def start(self, *node_ids: str, **sections: dict[str, Any]) -> list[NodeProc]:
        """Launches the nodes together and waits until each has started and its /readyz lists
        every live node of the cluster."""
        started = [self.add(n, **sections) for n in node_ids]
        await asyncio.gather(*(n.wait_started() for n in started))
        live = len(self.live())
        await asyncio.gather(*(n.wait_ready(nodes=live) for n in started))
        return started

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes.values() if n.running()]

    def __getitem__(self, node_id: str) -> NodeProc:
        return self.nodes[node_id]

    async def close(self) -> None:
        """Closes the clients and kills every node (nothing of theirs is wanted afterwards),
        reaping each; safe after a node was killed or stopped already."""
        for node in self.nodes.values():
            await node.close_clients()
        errors = []
        for node in self.nodes.values():
            try:
                await node.kill()
            except Exception as e:  # keep going: every node must be killed
                errors.append(f"{node.describe()}: {e!r}")
        if errors:
            raise RuntimeError("could not reap: " + "; ".join(errors))

    def failure_sections(self) -> list[tuple[str, str]]:
        """Each node's state and log tail, for the report of a failed test."""
        return [
            (f"bridge {n.node_id}", f"{n.describe()}\n{n.log_tail()}") for n in self.nodes.values()
        ]
