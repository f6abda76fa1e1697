"""OpenAI-compatible providers through the official SDK, streamed as neutral reply events."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import structlog

from adapters.openai.chunks import ChunkAssembler, merge_deltas
from adapters.openai.sse import SSEReader
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


def _http_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client errors of whichever httpx the SDK runs on (releases moved to httpx2)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Raised by the raw reply stream (the SDK wraps them only on its own parsed streams).
HTTP_ERRORS = _http_errors()


def _stream_error(provider: str, chunk: dict[str, Any]) -> str:
    err = chunk.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    return f"provider {provider}: {message or 'error in the stream'}"


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
        sse = SSEReader()
        # The SDK still sends the request (auth, base URL, error types), but the reply is read
        # as raw SSE: no SDK model object per chunk.
        opened: Any = None
        try:
            async with asyncio.timeout(self.provider.timeout):
                opened = self._client.chat.completions.with_streaming_response.create(**params)
                response = await opened.__aenter__()
            pieces = response.iter_bytes().__aiter__()
            ended = False
            while not ended:
                # The SDK's timeout covers each HTTP read but not a server that trickles
                # keep-alives; bound the wait for every piece ourselves.
                try:
                    async with asyncio.timeout(self.provider.timeout):
                        piece = await pieces.__anext__()
                    payloads = sse.feed(piece)
                except StopAsyncIteration:
                    payloads, ended = sse.close(), True
                events: list[ReplyEvent] = []
                for payload in payloads:
                    if payload == b"[DONE]":
                        continue
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        yield Failed(ErrorCode.UPSTREAM_ERROR, _stream_error(self.name, chunk))
                        return
                    if isinstance(chunk, dict):
                        events.extend(assembler.feed(chunk))
                # Whatever arrived in one read goes on as one update.
                for event in merge_deltas(events):
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
        except HTTP_ERRORS as e:  # a torn connection, read while streaming
            yield Failed(ErrorCode.UPSTREAM_ERROR, f"provider {self.name}: {e or type(e).__name__}")
        except (OSError, ValueError) as e:  # ValueError: a payload that is not JSON
            yield Failed(ErrorCode.UPSTREAM_ERROR, f"provider {self.name}: {e}")
        finally:
            if opened is not None:
                await opened.__aexit__(None, None, None)

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
