"""Fixtures shared by the bot-framework link tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.fake_framework import FakeFramework


@pytest.fixture
async def fw() -> AsyncIterator[FakeFramework]:
    """A raw OneBot framework peer (reverse-WS server) with access token "tok"."""
    f = FakeFramework(token="tok")
    yield f
    await f.stop()
