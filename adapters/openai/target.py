"""OpenAI-compatible providers as a model target for `openai/models` and `openai/completions`.

The model list is served from a cache refreshed in the background: login and `openai/models` never
wait on a provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog

from adapters.openai.client import OpenAIRouter
from bridge.config import OpenAIConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Failed, ModelGroup, ReplyEvent
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)


class OpenAITarget:
    def __init__(self, config: OpenAIConfig) -> None:
        self._config = config
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
                groups = await self._router.model_groups()
                if groups:
                    self._groups = groups
            except Exception:
                log.warning("openai.models_refresh_failed", exc_info=True)
            self._loaded.set()
            await asyncio.sleep(self._config.models_cache_ttl)

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
                yield event
        finally:
            await stream.aclose()
