"""OpenAI-compatible providers as a model target for `openai/models` and `openai/completions`.

The model list is served from a cache refreshed in the background: login and `openai/models` never
wait on a provider.

Each provider's state goes to ``report(name, state, detail)`` for readiness: ``ok`` when listing
its models or a completion worked, ``unreachable`` / ``auth_failed`` / ``error`` when not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog

from adapters.openai.client import OpenAIRouter
from bridge.config import OpenAIConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Done, Failed, ModelGroup, ReplyEvent
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)


def provider_state(code: ErrorCode, reason: str) -> str:
    """A provider failure as a readiness state."""
    if code == ErrorCode.UPSTREAM_TIMEOUT or "connection failed" in reason or "timed out" in reason:
        return "unreachable"
    if " returned 401" in reason or " returned 403" in reason:
        return "auth_failed"
    if code == ErrorCode.UPSTREAM_ERROR and " returned 5" in reason:
        return "unreachable"
    return "error"


class OpenAITarget:
    # The `target` label of its replies in /metrics.
    metrics_kind = "openai"

    def __init__(
        self, config: OpenAIConfig, report: Callable[[str, str, str], None] | None = None
    ) -> None:
        self._config = config
        self._report = report or (lambda name, state, detail: None)
        self._router = OpenAIRouter(config)
        self._groups: list[ModelGroup] = [
            ModelGroup(p.name, list(p.models)) for p in config.providers if p.models
        ]
        self._names = {p.name for p in config.providers}
        self._tasks = TaskSet("openai-target")
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        self._tasks.spawn(self._refresher(), name="openai-models")
        try:
            async with asyncio.timeout(5):
                await self._loaded.wait()
        except TimeoutError:
            log.warning("openai.models_not_loaded_yet")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self._router.close()

    async def _refresher(self) -> None:
        while True:
            try:
                groups = await self._list_models()
                if groups:
                    self._groups = groups
            except Exception:
                log.warning("openai.models_refresh_failed", exc_info=True)
            self._loaded.set()
            await asyncio.sleep(self._config.models_cache_ttl)

    async def _list_models(self) -> list[ModelGroup]:
        """Every provider's models, one by one, reporting each provider's state on the way."""
        groups = []
        for provider in self._config.providers:
            try:
                client, _ = await self._router.resolve(f"{provider.name}/")
                models = await client.list_models()
            except BridgeError as e:
                log.warning("openai.models_unavailable", provider=provider.name, reason=e.reason)
                self._report(provider.name, provider_state(e.code, e.reason), e.reason)
                continue
            # Models named in the config are not fetched: completions tell how the provider is.
            detail = "models from config" if provider.models else f"{len(models)} models listed"
            self._report(provider.name, "ok", detail)
            groups.append(ModelGroup(provider.name, models))
        return groups

    def model_groups(self) -> list[ModelGroup]:
        return list(self._groups)

    def owns_model(self, model: str) -> bool:
        provider, sep, _ = model.partition("/")
        if sep and provider in self._names:
            return True
        return any(model in g.models for g in self._groups) or (bool(self._names) and not sep)

    def complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        return self._complete(request)

    async def _complete(self, request: CompletionRequest) -> AsyncIterator[ReplyEvent]:
        try:
            client, upstream_model = await self._router.resolve(request.model)
        except BridgeError as e:
            yield Failed(e.code, e.reason)
            return
        except Exception as e:  # a provider misbehaving while listing must not crash the stream
            yield Failed(
                ErrorCode.UPSTREAM_ERROR, f"could not resolve model {request.model!r}: {e}"
            )
            return
        stream = client.stream(request, upstream_model)
        try:
            async for event in stream:
                if isinstance(event, Done):
                    self._report(client.name, "ok", "last completion succeeded")
                elif isinstance(event, Failed):
                    # Only trouble with the provider itself; a request it refused (a bad
                    # parameter, an unknown model) says nothing about its health.
                    state = provider_state(event.error, event.reason)
                    if state in ("unreachable", "auth_failed"):
                        self._report(client.name, state, event.reason)
                yield event
        finally:
            await stream.aclose()
