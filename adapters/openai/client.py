"""OpenAI-compatible providers through the official SDK, streamed as neutral reply events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import structlog

from adapters.openai.chunks import ChunkAssembler
from bridge.config import OpenAIConfig, OpenAIProvider
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Failed, ModelGroup, ReplyEvent

log = structlog.get_logger(__name__)


def _upstream_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return e.message or str(e)


def failure_for(provider: str, e: BaseException) -> Failed:
    """An SDK error as a Failed event whose reason a person can act on."""
    if isinstance(e, openai.APITimeoutError):
        return Failed(ErrorCode.UPSTREAM_TIMEOUT, f"provider {provider} timed out")
    if isinstance(e, openai.APIStatusError):
        msg = _upstream_message(e)
        code = {404: ErrorCode.NOT_FOUND, 429: ErrorCode.RATE_LIMITED}.get(
            e.status_code, ErrorCode.UPSTREAM_ERROR
        )
        return Failed(code, f"provider {provider} returned {e.status_code}: {msg}")
    if isinstance(e, openai.APIConnectionError):
        return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: connection failed ({e})")
    return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: {type(e).__name__}: {e}")


class ProviderClient:
    def __init__(self, provider: OpenAIProvider, cache_ttl: float = 300.0) -> None:
        self.provider = provider
        self._cache_ttl = cache_ttl
        # Retries are ours to decide: a stream must never be re-sent behind the user's back.
        self._client = openai.AsyncOpenAI(
            base_url=provider.base_url,
            api_key=provider.api_key or "none",
            timeout=provider.timeout,
            max_retries=0,
        )
        self._models: list[str] = list(provider.models)
        self._models_at = time.monotonic() if provider.models else 0.0

    @property
    def name(self) -> str:
        return self.provider.name

    async def list_models(self) -> list[str]:
        if self.provider.models:
            return list(self.provider.models)
        if self._models and time.monotonic() - self._models_at < self._cache_ttl:
            return list(self._models)
        try:
            page = await self._client.models.list()
            self._models = sorted(m.id for m in page.data)
            self._models_at = time.monotonic()
        except openai.OpenAIError as e:
            if self._models:
                log.warning("openai.models_stale", provider=self.name, error=str(e))
                return list(self._models)
            raise BridgeError(ErrorCode.UPSTREAM_ERROR, failure_for(self.name, e).reason) from e
        return list(self._models)

    async def stream(self, request: CompletionRequest, model: str) -> AsyncIterator[ReplyEvent]:
        """Yields reply events ending in Done or Failed; never raises for upstream trouble.

        Closing the iterator early (abort, disconnect) closes the HTTP response at once.
        """
        params: dict[str, Any] = {"model": model, "messages": request.messages, "stream": True}
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens"):
            value = getattr(request, key)
            if value is not None:
                params[key] = value
        if request.tools:
            params["tools"] = request.tools
        assembler = ChunkAssembler()
        stream: Any = None
        try:
            async with asyncio.timeout(self.provider.timeout):
                stream = await self._client.chat.completions.create(**params)
            iterator = stream.__aiter__()
            while True:
                # The SDK's timeout covers each HTTP read but not a server that trickles
                # keep-alives; bound the wait for every chunk ourselves.
                try:
                    async with asyncio.timeout(self.provider.timeout):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                for event in assembler.feed(chunk.model_dump(exclude_none=True)):
                    yield event
            done = assembler.done()
            if done is None:
                yield Failed(
                    ErrorCode.UPSTREAM_ERROR,
                    f"provider {self.name}: stream ended before the reply finished",
                )
            else:
                yield done
        except TimeoutError:
            yield Failed(
                ErrorCode.UPSTREAM_TIMEOUT,
                f"provider {self.name} sent nothing for {self.provider.timeout:g} s",
            )
        except openai.OpenAIError as e:
            yield failure_for(self.name, e)
        except (OSError, ValueError) as e:  # a torn connection surfaces as transport errors
            yield Failed(ErrorCode.UPSTREAM_ERROR, f"provider {self.name}: {e}")
        finally:
            if stream is not None:
                await stream.close()

    async def close(self) -> None:
        await self._client.close()


class OpenAIRouter:
    """All configured providers; resolves `provider/model` or a bare model name."""

    def __init__(self, config: OpenAIConfig) -> None:
        self._clients = {
            p.name: ProviderClient(p, config.models_cache_ttl) for p in config.providers
        }

    async def model_groups(self) -> list[ModelGroup]:
        groups = []
        for client in self._clients.values():
            try:
                groups.append(ModelGroup(client.name, await client.list_models()))
            except BridgeError as e:
                log.warning("openai.models_unavailable", provider=client.name, reason=e.reason)
        return groups

    async def resolve(self, model: str) -> tuple[ProviderClient, str]:
        name, sep, rest = model.partition("/")
        if sep and name in self._clients:
            return self._clients[name], rest
        for client in self._clients.values():
            try:
                if model in await client.list_models():
                    return client, model
            except BridgeError:
                continue
        raise BridgeError(
            ErrorCode.NOT_FOUND,
            f"unknown model {model!r}: no provider lists it "
            "(use <provider>/<model> to name one explicitly)",
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
