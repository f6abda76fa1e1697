"""Shared MOMO AI fixtures: a started sandbox (real HTTP on an OS-chosen loopback port)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.momoai.sandbox import MomoAISandbox
from tests.support.momoai import MakeSandbox, sandbox_factory

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
async def momoai_sandbox_factory() -> AsyncIterator[MakeSandbox]:
    """`await make(**MomoAISandbox kwargs)` -> a started sandbox; all are closed after the test."""
    async with sandbox_factory() as make:
        yield make
