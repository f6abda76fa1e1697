"""Shared MOMO AI fixtures: a started sandbox (real HTTP on an OS-chosen loopback port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from adapters.momoai.sandbox import MomoAISandbox

SANDBOX_KEY = "sandbox-key"  # the default key ("pro" tier) of MomoAISandbox()


@pytest.fixture
async def momoai_sandbox() -> AsyncIterator[MomoAISandbox]:
    """A started sandbox with defaults (demo agents, key "sandbox-key", no token delay) and the
    `/_sandbox/` controls on. Closed (streams cut) after the test."""
    sandbox = MomoAISandbox(controls=True)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


@pytest.fixture
async def momoai_sandbox_factory() -> AsyncIterator[Callable[..., Awaitable[MomoAISandbox]]]:
    """`await make(**MomoAISandbox kwargs)` -> a started sandbox; all are closed after the test."""
    started: list[MomoAISandbox] = []

    async def make(**kwargs: Any) -> MomoAISandbox:
        sandbox = MomoAISandbox(**kwargs)
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    try:
        yield make
    finally:
        for sandbox in started:
            await sandbox.close()
