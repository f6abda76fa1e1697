"""MOMO AI sandboxes for tests: started on demand, all closed (streams cut) at the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from adapters.momoai.sandbox import MomoAISandbox

MakeSandbox = Callable[..., Awaitable[MomoAISandbox]]


@contextlib.asynccontextmanager
async def sandbox_factory() -> AsyncIterator[MakeSandbox]:
    """``make(**MomoAISandbox kwargs)`` -> a started sandbox."""
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
