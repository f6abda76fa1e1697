"""OpenAI-compatible providers, streamed as neutral reply events.

The SDK lists models (and holds the provider's auth and base URL); streamed completions go out on
the bridge's own aiohttp session per provider. That is the hot path: the SDK's request set-up
costs more CPU per stream than the whole reply's relaying otherwise does, and its transport
costs several times aiohttp's per chunk read. Replies are read as raw SSE, with no SDK model
object per chunk.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import structlog

from adapters.openai.chunks import ChunkAssembler, merge_deltas
from adapters.openai.failures import (
    exception_failure,
    failure_for,
    status_failure,
    stream_error,
)
from adapters.openai.sse import SSEReader
from bridge.config import OpenAIConfig, OpenAIProvider
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Failed, ModelGroup, ReplyEvent

log = structlog.get_logger(__name__)

# The SDK's own pool bound (httpx's max_connections there): streams past it wait for a
# connection, within the provider's timeout.
MAX_CONNECTIONS = 1000
# An error answer is read this far at most (its reason shows a few hundred characters).
MAX_ERROR_BODY = 64 << 10
_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")
# What can go wrong reading a provider's reply; anything else is a bug of ours and is raised.
_UPSTREAM_TROUBLE = (aiohttp.ClientError, OSError, ValueError)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lenient_loads(payload: bytes, error: orjson.JSONDecodeError) -> Any:
    """A payload orjson refused, read by the stdlib parser, which takes what orjson does not.

    That is a lone surrogate escape (`"\\ud83d"`), which proxies cutting text by UTF-16 units
    send. It becomes U+FFFD here, as the hub would write it: a surrogate cannot be stored or
    encoded as UTF-8 further on. A payload neither parser takes fails as orjson said.
    """
    try:
        # Nesting orjson refused for depth can still overflow the stack here.
        return _no_surrogates(json.loads(payload))
    except (ValueError, RecursionError):
        raise error from None


def _no_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        if value.isascii() or _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_surrogates(v) for v in value]
    return value


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        # A lone surrogate or an integer past 64 bits from a client: json escapes what it can.
        return json.dumps(body).encode()


async def _error_body(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The start of an error answer's body, and whether that was all of it."""
    parts: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        part = await resp.content.read(MAX_ERROR_BODY - size)
        if not part:
            return b"".join(parts), True
        parts.append(part)
        size += len(part)
    return b"".join(parts), False


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``ALL_PROXY``, minus
    ``NO_PROXY``), which the SDK would use too.

    Looked up once: aiohttp's trust_env would look it up (and .netrc) in a worker thread on
    every request, two thread hops before each stream could start.
    """
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not proxies or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


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
        # The SDK's resolved base URL (it always ends in a slash).
        self._url = f"{self._client.base_url}chat/completions"
        self._headers = {
            "Authorization": f"Bearer {provider.api_key or 'none'}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": f"AsyncOpenAI/Python {openai.__version__}",
        }
        self._proxy = env_proxy(self._url)
        # Created on first use, inside the running loop (a session belongs to its loop).
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

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

    def _session(self) -> aiohttp.ClientSession:
        session = self._http
        if session is None:
            t = self.provider.timeout
            session = self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                # sock_read bounds every wait for bytes (the answer's headers, then each
                # piece of the stream), so a provider that stalls mid-reply times out too.
                timeout=aiohttp.ClientTimeout(total=None, connect=t, sock_read=t),
            )
        return session

    async def stream(self, request: CompletionRequest, model: str) -> AsyncIterator[ReplyEvent]:
        """Yields reply events ending in Done or Failed; never raises for upstream trouble.

        Closing the iterator early (abort, disconnect) closes the HTTP response at once.
        """
        if self._closed:
            yield Failed(ErrorCode.UNAVAILABLE, f"provider {self.name}: the client is closed")
            return
        body: dict[str, Any] = {"model": model, "messages": request.messages, "stream": True}
        for key in _PARAMS:
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.tools:
            body["tools"] = request.tools
        assembler = ChunkAssembler()
        sse = SSEReader()
        loads = orjson.loads
        resp: aiohttp.ClientResponse | None = None
        # Whether the response was read to its end: only then can its connection be reused.
        ended = False
        # The events of the read being parsed, which a failure in that read still delivers.
        events: list[ReplyEvent] = []
        try:
            resp = await self._session().post(
                self._url, data=_encode(body), headers=self._headers, proxy=self._proxy
            )
            if resp.status >= 400:
                body, ended = await _error_body(resp)
                yield status_failure(self.name, resp.status, body)
                return
            read = resp.content.readany
            while not ended:
                events = []
                piece = await read()
                if piece:
                    payloads = sse.feed(piece)
                else:
                    payloads, ended = sse.close(), True
                for payload in payloads:
                    if payload == b"[DONE]":
                        continue
                    try:
                        chunk = loads(payload)
                    except orjson.JSONDecodeError as e:
                        chunk = _lenient_loads(payload, e)
                    if isinstance(chunk, dict):
                        if chunk.get("error"):
                            yield stream_error(self.name, chunk)
                            return
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
        except _UPSTREAM_TROUBLE as e:  # TimeoutError is an OSError
            ended = False
            for event in merge_deltas(events):
                yield event
            yield exception_failure(
                self.name, e, answered=resp is not None, timeout=self.provider.timeout
            )
        finally:
            if resp is not None:
                if ended:
                    resp.release()
                else:
                    # Cut off mid-reply (abort, disconnect, a failure): the connection goes,
                    # which is how the provider learns to stop generating.
                    resp.close()

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None
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
