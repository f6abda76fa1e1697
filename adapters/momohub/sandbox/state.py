"""Everything one running sandbox shares between handlers, plus the bearer-token checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from adapters.momohub.sandbox.api import ApiError
from adapters.momohub.sandbox.entities import JSON, User
from adapters.momohub.sandbox.faults import FaultQueue
from adapters.momohub.sandbox.responder import Responder, make_responder
from adapters.momohub.sandbox.store import Store
from bridge.config import OpenAIProvider, SandboxConfig
from bridge.tasks import TaskSet


@dataclass(slots=True)
class Stats:
    open_streams: int = 0
    generations: int = 0
    refreshes: int = 0
    sign_ins: int = 0
    requests: Counter[str] = field(default_factory=Counter)

    def to_api(self) -> JSON:
        return {
            "open_streams": self.open_streams,
            "generations": self.generations,
            "requests": dict(self.requests),
            "refreshes": self.refreshes,
            "sign_ins": self.sign_ins,
        }

    def reset(self) -> None:
        # Streams still open stay counted: resetting must not make a live stream look closed.
        self.refreshes = self.sign_ins = 0
        self.requests.clear()


class SandboxState:
    def __init__(self, config: SandboxConfig, providers: list[OpenAIProvider] | None) -> None:
        self.config = config
        self.store = Store(config.database)
        self.responder: Responder = make_responder(config, providers)
        self.stats = Stats()
        self.faults = FaultQueue()
        # Chats with a reply in progress; membership is checked and set without an await between.
        self.busy: set[str] = set()
        self.tasks = TaskSet("momohub-sandbox")
        self.closing = asyncio.Event()

    async def pause(self, seconds: float) -> bool:
        """Sleep, but wake at shutdown. True if the server is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
        return self.closing.is_set()

    def require_user(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # The real server's auth filter answers a missing token before its envelope layer runs.
            raise ApiError(401, "Unauthorized", bare=True)
        found = self.store.valid_token(token.strip(), "access")
        user = self.store.users.get(found.user_id) if found else None
        if user is None:
            raise ApiError(401, "access token is invalid or expired")
        return user

    def optional_user(self, request: web.Request) -> User | None:
        if "Authorization" not in request.headers:
            return None
        return self.require_user(request)


STATE = web.AppKey("momohub_sandbox_state", SandboxState)
