"""Upstream trouble as `Failed` events whose reason a person can act on.

Two clients reach a provider: the SDK (model listing) and the bridge's own HTTP session (the
streamed completions). Both end up here so that a failure reads the same whichever one met it.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import aiohttp
import openai

from adapters.openai.chunks import MalformedChunk
from bridge.errors import ErrorCode
from bridge.models import Failed

# aiohttp >= 3.10 tells a connect timeout from a read timeout; older ones say neither.
_CONNECT_TIMEOUT: Any = getattr(aiohttp, "ConnectionTimeoutError", ())
BROKE_OFF = "the connection broke off mid-reply"
# An error page can be large (an HTML proxy page); the reason is for people, not a dump.
MAX_REASON_BODY = 300


def _status_code(status: int) -> ErrorCode:
    return {404: ErrorCode.NOT_FOUND, 429: ErrorCode.RATE_LIMITED}.get(
        status, ErrorCode.UPSTREAM_ERROR
    )


def _message_of(body: Any) -> str | None:
    """The provider's own words in an OpenAI-style error body (`{"error": {"message": ...}}`,
    or the variants other servers send: a bare string, a top-level message)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
    return None


def _upstream_message(e: openai.APIStatusError) -> str:
    return _message_of(e.body) or e.message or str(e)


def failure_for(provider: str, e: BaseException) -> Failed:
    """An SDK error as a Failed event."""
    if isinstance(e, openai.APITimeoutError):
        return Failed(ErrorCode.UPSTREAM_TIMEOUT, f"provider {provider} timed out")
    if isinstance(e, openai.APIStatusError):
        msg = _upstream_message(e)
        return Failed(
            _status_code(e.status_code), f"provider {provider} returned {e.status_code}: {msg}"
        )
    if isinstance(e, openai.APIConnectionError):
        return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: connection failed ({e})")
    return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: {type(e).__name__}: {e}")


def status_failure(provider: str, status: int, body: bytes) -> Failed:
    """An HTTP error answer (status >= 400) to a completion request as a Failed event."""
    try:
        message = _message_of(json.loads(body))
    except ValueError:  # not JSON (a proxy's HTML page, plain text) or not UTF-8
        message = None
    if message is None:
        text = " ".join(body.decode("utf-8", "replace").split())
        if len(text) > MAX_REASON_BODY:
            text = text[:MAX_REASON_BODY] + "..."
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        message = text or phrase
    return Failed(_status_code(status), f"provider {provider} returned {status}: {message}")


def stream_error(provider: str, chunk: dict[str, Any]) -> Failed:
    """An `error` object a provider sent inside a 200 stream."""
    err = chunk.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    return Failed(
        ErrorCode.UPSTREAM_ERROR, f"provider {provider}: {message or 'error in the stream'}"
    )


def exception_failure(provider: str, e: BaseException, *, answered: bool, timeout: float) -> Failed:
    """An exception met while requesting or reading a completion as a Failed event.

    ``answered``: whether the provider's response headers had arrived, which separates a
    provider that could not be reached from a stream that broke off.
    """
    if isinstance(e, _CONNECT_TIMEOUT):
        return Failed(ErrorCode.UPSTREAM_TIMEOUT, f"provider {provider} timed out connecting")
    if isinstance(e, TimeoutError):
        return Failed(
            ErrorCode.UPSTREAM_TIMEOUT, f"provider {provider} sent nothing for {timeout:g} s"
        )
    if isinstance(e, aiohttp.ClientPayloadError):
        # Its text is aiohttp's parser state, which tells a person nothing more.
        return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: {BROKE_OFF}")
    if isinstance(e, json.JSONDecodeError):  # orjson's too
        return Failed(
            ErrorCode.UPSTREAM_ERROR,
            f"provider {provider} sent a stream event that is not JSON ({_first_line(e)})",
        )
    if isinstance(e, MalformedChunk):
        return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider} sent a malformed chunk: {e}")
    if isinstance(e, aiohttp.ClientConnectionError | OSError) and not answered:
        return Failed(
            ErrorCode.UPSTREAM_ERROR, f"provider {provider}: connection failed ({_first_line(e)})"
        )
    if isinstance(e, aiohttp.ClientConnectionError | OSError):
        return Failed(
            ErrorCode.UPSTREAM_ERROR,
            f"provider {provider}: {BROKE_OFF} ({_first_line(e)})",
        )
    # A stream that is not SSE, a malformed HTTP answer.
    return Failed(ErrorCode.UPSTREAM_ERROR, f"provider {provider}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
