"""Where the sandbox's characters get their words: a deterministic echo or a real model.

A responder yields reply events; a model failure is a `ResponderError` (it becomes `event: error`).
Cancellation is the stop signal: the stream handler cancels the generating task when the client goes
away, so responders must not swallow `CancelledError`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from bridge.config import OpenAIProvider, SandboxConfig

log = structlog.get_logger(__name__)

SLOW_TOKEN_DELAY = 0.2


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallResult:
    name: str
    result: str


ReplyEvent = Delta | ToolCallStart | ToolCallResult


class ResponderError(Exception):
    """The model failed; the message is shown to the client as-is."""


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    character_name: str
    system_prompt: str | None
    # Oldest first, ending with the user's new message.
    history: list[Turn]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        return self.history[-1].text if self.history else ""


class Responder(Protocol):
    def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]: ...

    async def aclose(self) -> None: ...


def tokenize(text: str) -> list[str]:
    # Whitespace rides at the FRONT of each token, so a line break lands inside a token
    # ("\nline2"); the unescaped SSE writer then emits a bare continuation line, the quirk clients
    # must survive. Concatenating the tokens gives back the text exactly.
    return re.findall(r"\s*\S+|\s+", text)


class EchoResponder:
    """Deterministic and offline: "<Name>: you said <text>", streamed token by token.

    Triggers inside the user's text, for tests: `/tool` runs a fake clock tool first, `/fail`
    fails after one delta, `/slow` streams with a 0.2 s token delay, `/prompt` ends the reply
    with the system prompt the model got, as a JSON string (`` [system: "..."]``: a raw blank
    line would end the SSE event early).
    """

    def __init__(self, token_delay: float) -> None:
        self._delay = token_delay

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        text = request.user_text
        delay = SLOW_TOKEN_DELAY if "/slow" in text else self._delay
        if "/tool" in text:
            yield ToolCallStart("clock", {"tz": "UTC"})
            await asyncio.sleep(delay)
            yield ToolCallResult("clock", datetime.now(UTC).isoformat(timespec="seconds"))
        answer = f"{request.character_name}: you said {text}"
        if "/prompt" in text:
            answer += f" [system: {json.dumps(request.system_prompt or '', ensure_ascii=False)}]"
        for i, token in enumerate(tokenize(answer)):
            if i == 1 and "/fail" in text:
                raise ResponderError("model failure: the echo model was asked to /fail")
            await asyncio.sleep(delay)
            yield Delta(token)

    async def aclose(self) -> None:
        return None


class OpenAIResponder:
    """Streams a real chat completion from an OpenAI-compatible provider."""

    def __init__(self, provider: OpenAIProvider, model: str) -> None:
        # Imported here: the SDK takes half a second to import, and the echo responder (the
        # default) never needs it.
        import openai

        self._openai = openai
        self._model = model
        self._client = openai.AsyncOpenAI(
            base_url=provider.base_url,
            # The SDK refuses an empty key even for local servers that ignore it.
            api_key=provider.api_key or "sandbox",
            timeout=provider.timeout,
            max_retries=0,
        )

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        messages: list[Any] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages += [{"role": t.role, "content": t.text} for t in request.history]
        options: dict[str, Any] = {}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("topP", "top_p"),
            ("maxTokens", "max_tokens"),
        ):
            if request.settings.get(ours) is not None:
                options[theirs] = request.settings[ours]
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=messages,
                stream=True,
                **options,
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield Delta(choice.delta.content)
        except self._openai.OpenAIError as e:
            log.warning("sandbox.openai_failed", error=str(e))
            raise ResponderError(f"model failure: {e}") from e

    async def aclose(self) -> None:
        await self._client.close()


def make_responder(config: SandboxConfig, providers: list[OpenAIProvider] | None) -> Responder:
    if config.responder == "echo":
        return EchoResponder(config.token_delay)
    providers = providers or []
    wanted = config.openai_provider
    provider = next((p for p in providers if p.name == wanted), None) if wanted else None
    if provider is None and not wanted and providers:
        provider = providers[0]
    if provider is None:
        raise ValueError(
            f"sandbox.openai_provider: no [[openai.providers]] entry named {wanted!r}"
            if wanted
            else "sandbox.responder is 'openai' but no [[openai.providers]] are configured"
        )
    model = config.openai_model or (provider.models[0] if provider.models else "")
    if not model:
        raise ValueError(
            f"sandbox.openai_model: empty, and provider {provider.name!r} lists no models"
        )
    return OpenAIResponder(provider, model)
