"""`momobridge healthcheck` (the image's HEALTHCHECK) as a real subprocess against a real bridge.

The bridge runs in this test's event loop, so the command is started with asyncio's subprocess
API: a blocking call would keep the loop from answering the very probe it waits for.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bridge.config import Config
from bridge.healthcheck import probe_url
from tests.conftest import Bridge
from tests.e2e.test_health import closed_port

WAIT = 20.0
ROOT_DIR = Path(__file__).resolve().parents[2]


async def healthcheck(config: Path, **env: str) -> tuple[int, str]:
    """Exit code and combined output of `momobridge healthcheck --config CONFIG`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "healthcheck",
        "--config",
        str(config),
        cwd=ROOT_DIR,
        env={**clean, "PYTHONPATH": str(ROOT_DIR), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(WAIT):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def write_config(tmp_path: Path, port: int, host: str = "127.0.0.1") -> Path:
    path = tmp_path / "hc.toml"
    path.write_text(f'[server]\nhost = "{host}"\nport = {port}\n', encoding="utf-8")
    return path


async def test_healthy_when_the_configured_port_serves(
    bridge_factory: Callable[..., Awaitable[Bridge]], tmp_path: Path
) -> None:
    b = await bridge_factory()
    code, out = await healthcheck(write_config(tmp_path, b.app.port))
    assert code == 0, out
    assert f"127.0.0.1:{b.app.port}/healthz: ok" in out


async def test_unhealthy_when_nothing_listens(tmp_path: Path) -> None:
    port = closed_port()
    code, out = await healthcheck(write_config(tmp_path, port))
    assert code == 1
    assert f"unhealthy: http://127.0.0.1:{port}/healthz" in out


async def test_port_from_the_environment_wins_over_the_file(
    bridge_factory: Callable[..., Awaitable[Bridge]], tmp_path: Path
) -> None:
    """The container's MOMOBRIDGE_* variables reach the probe as they reach `serve`."""
    b = await bridge_factory()
    config = write_config(tmp_path, closed_port())
    assert (await healthcheck(config))[0] == 1
    code, out = await healthcheck(config, MOMOBRIDGE_SERVER__PORT=str(b.app.port))
    assert code == 0, out


async def test_bound_to_every_interface_probes_loopback(
    bridge_factory: Callable[..., Awaitable[Bridge]], tmp_path: Path
) -> None:
    """As in the image (host 0.0.0.0): the probe goes to 127.0.0.1."""
    b = await bridge_factory()
    code, out = await healthcheck(write_config(tmp_path, b.app.port, host="0.0.0.0"))
    assert code == 0, out


async def test_a_server_that_is_not_healthy_fails_the_check(tmp_path: Path) -> None:
    """Something answers on the port, but not the bridge's 200 {"status": "ok"}."""

    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        code, out = await healthcheck(write_config(tmp_path, port))
    finally:
        await runner.cleanup()
    assert code == 1
    assert "HTTP 503" in out


async def test_port_zero_has_nothing_to_probe(tmp_path: Path) -> None:
    code, out = await healthcheck(write_config(tmp_path, 0))
    assert code == 1
    assert "server.port is 0" in out


def test_probe_url_for_each_kind_of_host() -> None:
    def url(host: str) -> str:
        return probe_url(Config.model_validate({"server": {"host": host, "port": 4000}}))

    assert url("0.0.0.0") == "http://127.0.0.1:4000/healthz"
    assert url("::") == "http://[::1]:4000/healthz"
    assert url("::1") == "http://[::1]:4000/healthz"
    assert url("10.1.2.3") == "http://10.1.2.3:4000/healthz"


async def test_a_proxy_in_the_environment_is_not_used(
    bridge_factory: Callable[..., Awaitable[Bridge]], tmp_path: Path
) -> None:
    """Docker copies the host's proxy settings into containers: the loopback probe must not
    go to a proxy (here one that is not even there)."""
    b = await bridge_factory()
    dead = f"http://127.0.0.1:{closed_port()}"
    code, out = await healthcheck(
        write_config(tmp_path, b.app.port), HTTP_PROXY=dead, http_proxy=dead, NO_PROXY=""
    )
    assert code == 0, out
