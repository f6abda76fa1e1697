"""MOMO AI agents as the models ``momoai:<id>`` (owner ``momoai``) for `openai/models` and
`openai/completions`, and the turns of agent conversations (adapters.momoai.contacts).

The agent list is a cache refreshed in the background: login and `openai/models` never wait on
the API. The API is stateless and takes one prompt, so a request's messages become that prompt
(adapters.momoai.prompt). Its failures map onto the hub's codes with MOMO AI's own message in the
reason (adapters.momoai.wire.failure_error); a refused API key is a configuration problem, logged
once and shown in /readyz until a request succeeds again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog

from adapters.momoai import client as client_mod
from adapters.momoai import wire
from adapters.momoai.client import MomoAIClient, MomoAIError
from adapters.momoai.prompt import build_prompt
from adapters.momoai.stream import TextDelta
from bridge.config import MomoAIConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Delta, Done, Failed, ModelGroup, ReplyEvent
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

OWNER = "momoai"
# After a failed agent list, the next try comes sooner than the regular refresh.
RETRY_LIST = 30.0
# The first list start() waits for; the bridge serves meanwhile either way.
FIRST_LIST_WAIT = 5.0


class MomoAITarget:
    # The `target` label of its replies in /metrics.
    metrics_kind = "momoai"

    def __init__(
        self, config: MomoAIConfig, report: Callable[[str, str], None] | None = None
    ) -> None:
        self._config = config
        self._report = report or (lambda state, detail: None)
        self.client = MomoAIClient(config)
        self._agents: dict[str, wire.Agent] = {}
        # Set once a list was read: from then on only listed agents are offered.
        self._listed = False
        # Whether the newest list read worked: until it does again, a request that works does
        # not make the component ready (the catalogue is what readiness means here).
        self._list_ok = False
        self.loaded = asyncio.Event()
        self._allowed = set(config.agents)
        self._key_refused = False
        self._tasks = TaskSet("momoai-target")

    async def start(self) -> None:
        self._tasks.spawn(self._refresher(), name="momoai-agents")
        try:
            async with asyncio.timeout(FIRST_LIST_WAIT):
                await self.loaded.wait()
        except TimeoutError:
            log.warning("momoai.agents_not_loaded_yet")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self.client.close()

    # ----- the agent list -------------------------------------------------------------------------

    async def _refresher(self) -> None:
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self._config.agents_refresh if ok else RETRY_LIST)

    async def refresh(self) -> bool:
        """Read the agent list once; False (the old list kept) when it failed."""
        # With an allow-list the whole catalogue is read, so an allowed agent past the first
        # `max_agents` is listed too.
        limit = client_mod.PAGE_SIZE * client_mod.MAX_PAGES if self._allowed else None
        try:
            agents = await self.client.list_agents(limit or self._config.max_agents)
        except MomoAIError as e:
            self._failed(e.failure, listing=True)
            return False
        except BridgeError as e:
            log.warning("momoai.agents_unavailable", reason=e.reason)
            self._list_ok = False
            self._report("unreachable", e.reason)
            return False
        except Exception as e:  # an API that misbehaves must not end the refresher
            log.warning("momoai.agents_refresh_failed", exc_info=True)
            self._list_ok = False
            self._report("error", f"could not read the agent list: {e}")
            return False
        finally:
            self.loaded.set()
        if self._allowed:
            agents = [a for a in agents if a.id in self._allowed][: self._config.max_agents]
        self._agents = {a.id: a for a in agents}
        self._listed = True
        self._list_ok = True
        self._succeeded(f"{len(agents)} agents listed")
        return True

    def agents(self) -> list[wire.Agent]:
        return list(self._agents.values())

    def agent(self, agent_id: str) -> wire.Agent | None:
        return self._agents.get(agent_id)

    def offers(self, agent_id: str) -> bool:
        """Whether the bridge offers this agent: listed, or (the list unread or stale) at least
        not excluded by ``[momoai] agents``."""
        if agent_id in self._agents:
            return True
        if self._allowed:
            return agent_id in self._allowed
        return not self._listed

    # ----- ModelTarget ----------------------------------------------------------------------------

    def model_groups(self) -> list[ModelGroup]:
        agents = self.agents()
        if not agents:
            return []
        return [ModelGroup(OWNER, [a.model for a in agents], {a.model: a.name for a in agents})]

    def owns_model(self, model: str) -> bool:
        return model.startswith(wire.MODEL_PREFIX)

    def completion_contact(self, model: str) -> str:
        """The contact whose conversation a completion of ``model`` belongs to: the agent's
        own (adapters.momoai.contacts), so /persona and /reset are shared with it."""
        return model

    def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        return self._complete(request)

    async def _complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        agent_id = request.model[len(wire.MODEL_PREFIX) :]
        if not self.offers(agent_id):
            yield Failed(ErrorCode.NOT_FOUND, f"no MOMO AI agent {agent_id!r} on this bridge")
            return
        cfg = self._config
        prompt = build_prompt(request.messages, cfg.history_chars)
        temperature = request.temperature if request.temperature is not None else cfg.temperature
        answer = self.client.call(
            agent_id,
            prompt,
            temperature=temperature,
            max_tokens=request.max_tokens or cfg.max_tokens,
            stream=cfg.stream and request.stream,
        )
        said = False
        try:
            async for event in answer:
                if isinstance(event, TextDelta):
                    said = True
                    yield Delta(event.text)
                    continue
                if not said:
                    # Nothing to show or to keep as the agent's turn: not an answer.
                    yield Failed(ErrorCode.UPSTREAM_ERROR, "MOMO AI answered with no text")
                    return
                self._succeeded("the last request succeeded")
                usage: dict[str, object] = {}
                if event.tokens_used is not None:
                    usage["total_tokens"] = event.tokens_used
                if event.cost is not None:
                    usage["cost"] = event.cost
                agent = self.agent(agent_id)
                yield Done(
                    event.finish_reason,
                    usage or None,
                    ref_system=OWNER,
                    reply_ref=event.request_id,
                    sender_name=agent.name if agent else "",
                )
                return
        except MomoAIError as e:
            self._failed(e.failure)
            code, reason = wire.failure_error(e.failure)
            yield Failed(code, reason)
        except BridgeError as e:
            if e.code == ErrorCode.UPSTREAM_TIMEOUT or "connection failed" in e.reason:
                self._report("unreachable", e.reason)
            yield Failed(e.code, e.reason)
        finally:
            await answer.aclose()

    # ----- health ---------------------------------------------------------------------------------

    def _succeeded(self, detail: str) -> None:
        if self._key_refused:
            self._key_refused = False
            log.info("momoai.api_key_accepted")
        if self._list_ok:  # a listing sets it first: until then readiness is the list's
            self._report("ok", detail)

    def _failed(self, failure: wire.ApiFailure, *, listing: bool = False) -> None:
        """A refusal as readiness: the key (a configuration problem: said once, loudly) and
        server errors always; while listing agents, anything (the list is what readiness
        means here). A refused request (balance, parameters, one agent) says nothing of it."""
        _, reason = wire.failure_error(failure)
        if listing:
            self._list_ok = False
        if wire.is_key_refusal(failure):
            if not self._key_refused:
                log.error("momoai.api_key_refused", reason=reason)
                self._key_refused = True
            self._report("auth_failed", reason)
        elif wire.is_rate_limit(failure) and not listing:
            log.info("momoai.rate_limited", reason=reason)
        elif failure.status >= 500 or failure.code.startswith("HTTP_5"):
            log.warning("momoai.server_error", reason=reason)
            self._report("unreachable", reason)
        elif listing:
            log.warning("momoai.agents_refused", code=failure.code, reason=reason)
            self._report("error", f"could not read the agent list: {reason}")
        elif wire.failure_error(failure)[0] == ErrorCode.UNAVAILABLE:
            log.warning("momoai.balance_too_low", reason=reason)
        else:
            log.info("momoai.request_refused", code=failure.code, reason=reason)

    async def balance(self) -> wire.Balance:
        """The account's balance (for /balance); BridgeError with MOMO AI's reason if refused."""
        try:
            return await self.client.balance()
        except MomoAIError as e:
            self._failed(e.failure)
            code, reason = wire.failure_error(e.failure)
            raise BridgeError(code, reason) from None
        except wire.WireError as e:
            raise BridgeError(
                ErrorCode.UPSTREAM_ERROR, f"MOMO AI answered something unreadable: {e}"
            ) from None
