"""Shared fixtures: a real bridge on an OS-chosen port with a temp database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import App
from bridge.config import Config
from tests.support.cluster_procs import ProcCluster
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient
from tests.support.postgres import postgres_dsn, postgres_server  # noqa: F401 - fixtures
from tests.support.redis_server import redis_server, redis_url  # noqa: F401 - fixtures

ADMIN_CODE = "admin-secret"


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"admin_code": ADMIN_CODE},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "log": {"level": "warning", "format": "console"},
        # Off unless a test asks for it: hub tests want a bridge with nothing behind the router.
        "momohub": {"enabled": False},
        "sandbox": {"token_delay": 0.0, "fault_injection": True},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Config.model_validate(raw)


class Bridge:
    """A running App plus helpers to open clients against it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = App(config)
        self.clients: list[HubClient] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.app.port}/api/gateway"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    async def client(self, user_id: Any = None, token: str = "", **kwargs: Any) -> HubClient:
        c = await HubClient.open(self.url, **kwargs)
        self.clients.append(c)
        if user_id is not None:
            await c.login(user_id, token)
        return c

    async def close_clients(self) -> None:
        for c in self.clients:
            await c.close()
        self.clients.clear()

    async def restart(self) -> None:
        """Stop and start again on the same port and database."""
        port = self.app.port
        await self.close_clients()
        await self.app.stop()
        self.config.server.port = port
        self.app = App(self.config)
        await self.app.start()


@pytest.fixture
async def bridge_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    started: list[Bridge] = []

    async def factory(**sections: dict[str, Any]) -> Bridge:
        config = make_config(tmp_path, **sections)
        # A server claims its database file, so a bridge started while an earlier one of the
        # test still runs gets a file of its own; once the earlier one stopped, the next reuses
        # its file, as a restart would. A path the test names itself is left as it is.
        running = {b.config.storage.path for b in started if b.app.storage is not None}
        if "path" not in sections.get("storage", {}) and config.storage.path in running:
            config.storage.path = str(tmp_path / f"bridge-{len(started) + 1}.db")
        b = Bridge(config)
        await b.app.start()
        started.append(b)
        return b

    yield factory
    for b in started:
        await b.close_clients()
        await b.app.stop()


@pytest.fixture
async def bridge(bridge_factory: Callable[..., Awaitable[Bridge]]) -> Bridge:
    return await bridge_factory()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    """A real OpenAI-compatible server on loopback (tests/support/fake_openai.py)."""
    s = FakeOpenAI()
    await s.start()
    yield s
    await s.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran bridge processes (tests/support/cluster_procs.py) gets each
    node's state and log tail in its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ProcCluster):
                report.sections.extend(value.failure_sections())
    return report
