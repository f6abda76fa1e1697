"""Fixtures for the MomoHub sandbox tests: a real SandboxServer on an OS-chosen port."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from adapters.momohub.sandbox import SandboxServer
from bridge.config import OpenAIProvider, SandboxConfig
from tests.momohub.sandbox_client import client, momo_sandbox  # noqa: F401 - fixtures

MOMO_ID = "6d6f6d6f-0000-4000-8000-000000000001"
PASSWORD = "correct horse"


class SandboxHub:
    """A running sandbox plus a client session and small helpers that speak its HTTP dialect."""

    def __init__(self, server: SandboxServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    @property
    def url(self) -> str:
        return self.server.base_url

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """(status, parsed JSON body or raw text or None for an empty body, response)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.url + path, json=json, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            body: Any = None
            if raw:
                body = (
                    await resp.json() if resp.content_type == "application/json" else raw.decode()
                )
            return resp.status, body, resp

    async def sign_up(self, email: str | None = None) -> str:
        email = email or f"u{uuid.uuid4().hex[:8]}@example.test"
        status, body, _ = await self.call(
            "POST",
            "/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": "Tester"},
        )
        assert status == 200, body
        return email

    async def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST", "/auth/sign-in/email", json={"email": email, "password": password}
        )
        assert status == 200, body
        return body["data"]

    async def account(self) -> str:
        """A fresh user's access token."""
        login = await self.sign_in(await self.sign_up())
        return login["tokens"]["accessToken"]

    async def chat(self, token: str, character_id: str = MOMO_ID) -> str:
        status, body, _ = await self.call(
            "POST", "/chats", token=token, json={"characterId": character_id}
        )
        assert status == 201, body
        return body["data"]["id"]

    def open_stream(self, token: str, chat_id: str, text: str) -> Any:
        """The raw POST for a message (use as `async with`); read its bytes yourself."""
        return self.http.post(
            f"{self.url}/chats/{chat_id}/messages",
            json={"content": [{"type": "text", "content": text}]},
            headers={"Authorization": f"Bearer {token}"},
        )

    async def send(self, token: str, chat_id: str, text: str) -> tuple[int, bytes]:
        async with self.open_stream(token, chat_id, text) as resp:
            return resp.status, await asyncio.wait_for(resp.read(), 10)

    async def messages(self, token: str, chat_id: str) -> list[dict[str, Any]]:
        status, body, _ = await self.call("GET", f"/chats/{chat_id}/messages", token=token)
        assert status == 200, body
        return body["data"]["items"]

    async def stats(self) -> dict[str, Any]:
        status, body, _ = await self.call("GET", "/_sandbox/stats")
        assert status == 200, body
        return body

    async def fault(self, **fault: Any) -> None:
        status, body, _ = await self.call("POST", "/_sandbox/faults", json=fault)
        assert status == 201, body

    @staticmethod
    async def eventually(
        check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Poll a condition on the server until it holds (no fixed sleeps in tests)."""
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    @staticmethod
    def events(raw: bytes) -> list[tuple[str, str]]:
        """(event, data) pairs, treating bare lines as data continuations (what clients must do)."""
        out: list[tuple[str, str]] = []
        for block in raw.decode().split("\n\n"):
            name, data = "", []
            for line in block.split("\n"):
                if line.startswith(":") or not line:
                    continue
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data.append(line[len("data: ") :])
                else:
                    data.append(line)
            if name:
                out.append((name, "\n".join(data)))
        return out


SandboxFactory = Callable[..., Awaitable[SandboxHub]]


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    hubs: list[SandboxHub] = []

    async def factory(
        providers: list[OpenAIProvider] | None = None, **overrides: Any
    ) -> SandboxHub:
        settings: dict[str, Any] = {"fault_injection": True, "token_delay": 0.0} | overrides
        server = SandboxServer(SandboxConfig(**settings), providers)
        await server.start()
        hub = SandboxHub(server, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)))
        hubs.append(hub)
        return hub

    yield factory
    for hub in hubs:
        await hub.http.close()
        await hub.server.stop()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> SandboxHub:
    return await sandbox_factory()
