"""What one running sandbox shares between its handlers: keys, money, agents, faults, counters."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from adapters.momoai.sandbox import errors
from adapters.momoai.sandbox.agents import Agent, make_agents
from adapters.momoai.sandbox.faults import FaultQueue
from adapters.momoai.sandbox.ratelimit import TIER_LIMITS, RateLimiter

StreamOutcome = Literal["completed", "aborted", "dropped", "stopped"]
# The calls kept for tests and /_sandbox/state: the latest this many (a long demo must not grow).
MAX_RECORDED = 1000


@dataclass(slots=True)
class Recorded:
    """One POST /agents/{id} call, recorded before anything else looks at it."""

    agent_id: int | str  # the path segment: an int when it is one
    body: Any  # the parsed JSON body; None when the body was not JSON
    api_key: str | None  # the bearer token as sent, valid or not
    time: float  # the sandbox clock (time.monotonic() unless a test passed `clock`)
    stream: bool = False
    fault: str | None = None  # the injected fault kind this call got, if any


class SandboxState:
    def __init__(
        self,
        *,
        keys: dict[str, str],
        balance: float,
        agents: list[dict[str, Any]],
        token_delay: float,
        clock: Callable[[], float],
    ) -> None:
        for key, tier in keys.items():
            if tier not in TIER_LIMITS:
                raise ValueError(f"tier of key {key!r} must be one of {list(TIER_LIMITS)}")
        self.keys = dict(keys)
        self.token_delay = token_delay
        self.clock = clock
        self._initial_balance = balance
        self._agent_specs = [dict(a) for a in agents]
        self.balance = round(balance, 6)
        self.agents: dict[int, Agent] = make_agents(self._agent_specs)
        self.limiter = RateLimiter(clock)
        self.faults = FaultQueue()
        # The latest calls (at most MAX_RECORDED); request_count counts every one since reset.
        self.requests: deque[Recorded] = deque(maxlen=MAX_RECORDED)
        self.request_count = 0
        self.open_streams = 0
        self.completed_streams = 0
        self.aborted = 0
        self.dropped = 0
        self._ids = itertools.count(1)
        # Open streams' transports: close() cuts them so no handler can hold shutdown up.
        self.stream_transports: set[asyncio.BaseTransport] = set()
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()

    # -- requests and keys -------------------------------------------------------------------

    def record(self, call: Recorded) -> None:
        """Keep `call` (forgetting the oldest past MAX_RECORDED) and wake the waiters."""
        self.requests.append(call)
        self.request_count += 1
        self.changed()

    def next_request_id(self) -> str:
        return f"req_{next(self._ids):06d}"

    def authenticate(self, request: web.Request) -> tuple[str, str]:
        """(key, tier) of the request's bearer key, or ApiError INVALID_API_KEY."""
        key = bearer_key(request)
        tier = self.keys.get(key) if key else None
        if key is None or tier is None:
            raise errors.invalid_api_key()
        return key, tier

    def check_rate(self, key: str, tier: str) -> None:
        retry_after = self.limiter.hit(key, tier)
        if retry_after is not None:
            limit = TIER_LIMITS[tier]
            raise errors.rate_limited(
                retry_after,
                f"当前套餐 ({tier}) 限制每分钟 {limit} 次请求,请在 {retry_after:g} 秒后重试",
            )

    def find_agent(self, agent_ref: str) -> Agent:
        try:
            agent = self.agents.get(int(agent_ref))
        except ValueError:
            agent = None
        if agent is None:
            raise errors.agent_not_found(agent_ref)
        return agent

    # -- money -------------------------------------------------------------------------------

    def reserve(self, amount: float) -> None:
        """Hold `amount` (the estimate) or raise INSUFFICIENT_BALANCE; no await between check and
        hold, so concurrent calls cannot overdraw."""
        if self.balance < amount:
            raise errors.insufficient_balance(self.balance, amount)
        self.balance = round(self.balance - amount, 6)

    def settle(self, agent: Agent, reserved: float, tokens: int, charged: float) -> None:
        """Give back the part of the hold that was not spent; count the tokens against the agent."""
        self.balance = round(self.balance + reserved - charged, 6)
        agent.remaining_tokens = max(0, agent.remaining_tokens - tokens)
        self.changed()

    # -- streams -----------------------------------------------------------------------------

    def stream_opened(self, transport: asyncio.BaseTransport | None) -> None:
        self.open_streams += 1
        if transport is not None:
            self.stream_transports.add(transport)
        self.changed()

    def stream_closed(
        self, transport: asyncio.BaseTransport | None, outcome: StreamOutcome
    ) -> None:
        self.open_streams -= 1
        self.stream_transports.discard(transport)  # type: ignore[arg-type]
        if outcome == "completed":
            self.completed_streams += 1
        elif outcome == "aborted":
            self.aborted += 1
        elif outcome == "dropped":
            self.dropped += 1
        self.changed()

    async def pause(self, seconds: float) -> bool:
        """Sleep, but wake when the sandbox closes. True if it is closing."""
        if seconds <= 0:
            await asyncio.sleep(0)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), seconds)
        return self.closing.is_set()

    # -- waiting -----------------------------------------------------------------------------

    def changed(self) -> None:
        # Wake every waiter; each re-checks its own condition against the new state.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    def reset(self) -> None:
        """Back to the configured balance and agents; forget faults, calls, rate windows, counts.

        Streams still open stay counted in open_streams (they are still open).
        """
        self.balance = round(self._initial_balance, 6)
        self.agents = make_agents(self._agent_specs)
        self.faults.clear()
        self.requests.clear()
        self.request_count = 0
        self.limiter.clear()
        self.completed_streams = self.aborted = self.dropped = 0
        self.changed()


def bearer_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


STATE = web.AppKey("momoai_sandbox_state", SandboxState)
