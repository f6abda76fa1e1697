"""The MomoHub sandbox on a real socket and a client signed in to it: shared by the client and
chat-book tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.momohub.client import MomoHubClient
from adapters.momohub.sandbox import SandboxServer
from bridge.config import MomoHubConfig, SandboxConfig

EMAIL = "bridge@example.test"
PASSWORD = "sandbox-password"
WAIT = 10.0


class Sandbox:
    def __init__(self, server: SandboxServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.url = server.base_url

    async def control(self, method: str, name: str, json: Any = None) -> Any:
        async with self.http.request(method, f"{self.url}/_sandbox/{name}", json=json) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json() if resp.status != 204 else None


@pytest.fixture
async def momo_sandbox() -> AsyncIterator[Sandbox]:
    server = SandboxServer(SandboxConfig(token_delay=0.0, fault_injection=True))
    await server.start()
    await server.ensure_account(EMAIL, PASSWORD)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
    try:
        yield Sandbox(server, http)
    finally:
        await http.close()
        await server.stop()


@pytest.fixture
async def client(momo_sandbox: Sandbox) -> AsyncIterator[MomoHubClient]:
    c = MomoHubClient(MomoHubConfig(email=EMAIL, password=PASSWORD), base_url=momo_sandbox.url)
    await c.start()
    try:
        yield c
    finally:
        await c.close()
