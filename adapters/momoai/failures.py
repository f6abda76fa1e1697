"""MOMO AI's failures: an error answer read into an `ApiFailure`, and mapped to a bridge error.

Pure (no I/O). A failed request is read from whatever the upstream sent: the documented envelope
``{"success": false, "error": {"code", "message", "details"}}``, the variants such APIs use
(``{"error": "..."}``, ``code``/``message``/``msg`` at the top level, a status number as the
code), a proxy's HTML error page (its visible text, in linear time) or nothing at all (the code
then comes from the HTTP status). Codes other APIs spell differently are folded into MOMO AI's
documented ones (`is_key_refusal`, `is_rate_limit`), and `failure_error` turns a failure into
the bridge's `ErrorCode` and a reason for a person that always carries MOMO AI's own words.

The bounded-text and number sanitizers (`scrub`, `cap`, `finite_float`) live here too, as the
lowest layer: `adapters.momoai.wire` imports them (and re-exports this module's names), never
the other way round.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

from bridge.errors import ErrorCode

__all__ = [
    "MAX_DETAILS",
    "MAX_MESSAGE",
    "MAX_RETRY_AFTER",
    "MAX_TEXT_MESSAGE",
    "UNKNOWN_CODE",
    "ApiFailure",
    "cap",
    "describe",
    "failure_error",
    "finite_float",
    "is_failure",
    "is_key_refusal",
    "is_rate_limit",
    "parse_failure",
    "parse_retry_after",
    "scrub",
]

MAX_MESSAGE = 500
MAX_DETAILS = 1000
# What is kept of an error code.
MAX_CODE = 64
# Retry-After is clamped to this (an hour); a longer wait is not one a request should make.
MAX_RETRY_AFTER = 3600.0
# A message made from an error page's text keeps this many characters.
MAX_TEXT_MESSAGE = 200
# An error page is read this far for its message (nothing past it is looked at).
_MAX_PAGE = 64 << 10

# MOMO AI's documented codes, and the spellings other such APIs use for the same thing.
_KEY_CODES = frozenset(
    {"INVALID_API_KEY", "UNAUTHORIZED", "INVALID_TOKEN", "AUTHENTICATION_FAILED", "FORBIDDEN"}
)
_BALANCE_CODES = frozenset({"INSUFFICIENT_BALANCE", "INSUFFICIENT_QUOTA", "PAYMENT_REQUIRED"})
_RATE_CODES = frozenset({"RATE_LIMIT", "RATE_LIMITED", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS"})
_AGENT_CODES = frozenset({"AGENT_NOT_FOUND"})
_PARAM_CODES = frozenset({"INVALID_PARAMETERS", "INVALID_PARAMETER", "INVALID_REQUEST"})
# The code a failure gets from its HTTP status when the body names none.
_STATUS_CODES = {
    400: "INVALID_PARAMETERS",
    401: "INVALID_API_KEY",
    402: "INSUFFICIENT_BALANCE",
    403: "INVALID_API_KEY",
    422: "INVALID_PARAMETERS",
    429: "RATE_LIMIT",
}
# A failure whose status says nothing (an error inside a 200 stream) and whose body names no code.
UNKNOWN_CODE = "UNKNOWN_ERROR"


# ----- bounded values (shared with wire) ---------------------------------------------------------


def scrub(s: str) -> str:
    """``s`` with every lone surrogate replaced by U+FFFD (a surrogate cannot be UTF-8 encoded)."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return s


def cap(s: str, limit: int) -> str:
    """The first ``limit`` characters of ``s``, scrubbed (`scrub`)."""
    return scrub(s[:limit])


def finite_float(v: Any) -> float | None:
    """A finite number (not a bool), also from a numeric string; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        f = float(v) if -1e300 < v < 1e300 else math.inf
    elif isinstance(v, str) and 0 < len(v) <= 40:
        try:
            f = float(v)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


# ----- failures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiFailure:
    """A failed request as MOMO AI explained it (see `parse_failure`)."""

    code: str
    message: str
    details: str = ""
    status: int = 0
    retry_after: float | None = None


def is_failure(body: Any) -> bool:
    """Whether a decoded body is an error envelope (``"success": false`` or an ``error`` and no
    ``data``), which `parse_failure` reads, whatever the HTTP status was."""
    if not isinstance(body, dict):
        return False
    if body.get("success") is False:
        return True
    return bool(body.get("error")) and body.get("data") is None and body.get("success") is not True


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP date), clamped to
    [0, `MAX_RETRY_AFTER`]; None when absent or unreadable. ``now``: the clock (for tests)."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 100:
        return None
    seconds: float | None
    if value[0].isdigit() or value[0] in "+-.":
        seconds = finite_float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        try:
            # A date without a zone is GMT, as HTTP dates are.
            stamp = when.timestamp() if when.tzinfo else when.replace(tzinfo=UTC).timestamp()
        except (OverflowError, OSError, ValueError):
            return None
        seconds = stamp - (time.time() if now is None else now)
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _Finder:
    """``str.find`` over one text for positions that only move forward, remembering each
    needle's last answer, so that a page of unclosed tags costs linear time, not quadratic."""

    __slots__ = ("_found", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._found: dict[str, tuple[int, int]] = {}

    def __call__(self, needle: str, pos: int) -> int:
        known = self._found.get(needle)
        if known is not None and known[0] <= pos and (known[1] < 0 or known[1] >= pos):
            return known[1]
        at = self._text.find(needle, pos)
        self._found[needle] = (pos, at)
        return at


# Elements whose content is not the page's message.
_HIDDEN_TAGS = frozenset({"head", "script", "style", "template", "noscript"})


def _page_text(page: str) -> str:
    """The visible text of an HTML error page (a proxy's, a gateway's); its title when the body
    says nothing. Tags become spaces; scripts, styles and the head are dropped. Linear time,
    whatever the markup (html.parser is quadratic on unclosed tags)."""
    low = page.lower()
    find = _Finder(low)
    out: list[str] = []
    title = ""
    pos = 0
    n = len(page)
    while pos < n:
        lt = page.find("<", pos)
        if lt < 0:
            out.append(page[pos:])
            break
        out.append(page[pos:lt])
        if low.startswith("<!--", lt):
            end = find("-->", lt + 4)
            if end < 0:
                break
            pos = end + 3
            continue
        c = page[lt + 1 : lt + 2]
        if not (c.isalpha() or c in ("/", "!", "?")):
            out.append("<")
            pos = lt + 1
            continue
        gt = find(">", lt)
        if gt < 0:  # no tag can close from here on: the rest is text
            out.append(page[lt:])
            break
        out.append(" ")
        start = lt + 1
        end = start
        while end < gt and low[end].isalnum():
            end += 1
        name = low[start:end]
        pos = gt + 1
        if name == "title" and not title:
            close = find("</title", pos)
            title = page[pos : close if close >= 0 else n]
        if name in _HIDDEN_TAGS:
            close = find("</" + name, pos)
            if name == "head":  # a page that never closed its head
                body = find("<body", pos)
                if body >= 0 and (close < 0 or body < close):
                    close = body
                if not title:
                    at = find("<title", pos)
                    if 0 <= at and (close < 0 or at < close):
                        open_end = low.find(">", at)
                        if open_end >= 0:
                            title_end = low.find("</title", open_end)
                            title = page[open_end + 1 : title_end if title_end >= 0 else n]
            if close < 0:
                break
            pos = close
    text = html.unescape("".join(out)).strip()
    return text or html.unescape(title)


def _text_message(text: str) -> str:
    """An error page's text as one line: markup dropped, whitespace collapsed, first 200 chars."""
    text = text[:_MAX_PAGE]
    if "<" in text:
        text = _page_text(text)
    text = " ".join(text.split())
    if len(text) > MAX_TEXT_MESSAGE:
        text = text[:MAX_TEXT_MESSAGE].rstrip() + "…"
    return text


def _as_text(v: Any) -> str | None:
    """An envelope field as text: strings as they are, structures as compact JSON."""
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict | list):
        try:
            return json.dumps(v, ensure_ascii=False, separators=(",", ":"))[: MAX_DETAILS * 2]
        except (TypeError, ValueError, RecursionError):
            return None
    return str(v)


def _status_code(status: int) -> str:
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if 300 <= status <= 599:
        return f"HTTP_{status}"
    return UNKNOWN_CODE


def _code(v: Any) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        # `{"code": 429, "msg": ...}`: a status number where a name should be. 0 and 1xx-3xx
        # are "success" numbers, which name nothing; other numbers are the API's own codes.
        if 400 <= v <= 599:
            return _status_code(v)
        return None if v == 0 or 100 <= v < 400 else str(v)
    if isinstance(v, str):
        v = "_".join(v.split()).upper()
        return v[:MAX_CODE] or None
    return None


def parse_failure(
    status: int, body: Any, text: str = "", retry_after: str | None = None
) -> ApiFailure:
    """A failed request as MOMO AI explained it.

    ``status``: the HTTP status (0 for an error met inside a 200 stream); ``body``: the decoded
    JSON when the answer was JSON (else None); ``text``: the raw body text; ``retry_after``: the
    Retry-After header. The code and message come from the error envelope (also
    ``{"error": "..."}``, or ``code``/``message``/``msg`` at the top level); without a code, from
    the status (401/403 INVALID_API_KEY, 402 INSUFFICIENT_BALANCE, 429 RATE_LIMIT, 400/422
    INVALID_PARAMETERS, else ``HTTP_<status>``; ``UNKNOWN_ERROR`` when the status says nothing),
    and without a message, from the text (an error page: tags stripped) or the reason phrase.
    """
    if body is None and isinstance(text, str) and text.lstrip()[:1] == "{":
        try:
            body = json.loads(text[:_MAX_PAGE])
        except (ValueError, RecursionError):
            body = None
    code = message = details = None
    retry_body: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = _code(err.get("code", err.get("type")))
            message = _as_text(err.get("message", err.get("msg")))
            details = _as_text(err.get("details", err.get("detail")))
            retry_body = err.get("retry_after")
        elif isinstance(err, str) and err:
            message = err
        if code is None:
            code = _code(body.get("code"))
        if message is None:
            message = _as_text(body.get("message", body.get("msg")))
        if details is None:
            details = _as_text(body.get("details", body.get("detail")))
        if retry_body is None:
            retry_body = body.get("retry_after")
    elif isinstance(body, str) and body and not text:
        text = body
    if code is None:
        code = _status_code(status)
    if message is None:
        message = _text_message(text) if isinstance(text, str) else ""
    if not message and status:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = ""
    wait = parse_retry_after(retry_after)
    if wait is None and retry_body is not None:
        seconds = finite_float(retry_body)
        if seconds is not None:
            wait = min(max(seconds, 0.0), MAX_RETRY_AFTER)
    message = cap(message.strip(), MAX_MESSAGE)
    details = cap(details.strip(), MAX_DETAILS) if details else ""
    return ApiFailure(
        code=scrub(code),
        message=message,
        details="" if details == message else details,
        status=status,
        retry_after=wait,
    )


def describe(f: ApiFailure) -> str:
    """``CODE: message; details`` (the parts that are there): MOMO AI's own words, for reasons."""
    said = "; ".join(s for s in (f.message, f.details) if s)
    return f"{f.code}: {said}" if said else f.code


def is_key_refusal(failure: ApiFailure) -> bool:
    """Whether MOMO AI refused the API key: INVALID_API_KEY or a spelling of it other APIs use
    (UNAUTHORIZED, INVALID_TOKEN, AUTHENTICATION_FAILED, FORBIDDEN), which is also what a bare
    401 or 403 is read as. Exactly the failures `failure_error` calls a refused key."""
    return failure.code.upper() in _KEY_CODES


def is_rate_limit(failure: ApiFailure) -> bool:
    """Whether MOMO AI is rate limiting: RATE_LIMIT or a spelling of it other APIs use
    (RATE_LIMITED, RATE_LIMIT_EXCEEDED, TOO_MANY_REQUESTS), which is also what a bare 429 is read
    as. Exactly the failures `failure_error` maps to RATE_LIMITED."""
    return failure.code.upper() in _RATE_CODES


def failure_error(f: ApiFailure) -> tuple[ErrorCode, str]:
    """The bridge's error code for a failure, and a reason for a person that always carries
    MOMO AI's own message (and details)."""
    code = f.code.upper()
    inner = describe(f)
    if is_key_refusal(f):
        return ErrorCode.UPSTREAM_ERROR, (
            f"MOMO AI refused the API key ({inner}); check [momoai] api_key"
        )
    if code in _BALANCE_CODES:
        return ErrorCode.UNAVAILABLE, f"MOMO AI balance is too low ({inner})"
    if is_rate_limit(f):
        reason = f"MOMO AI is rate limiting requests ({inner})"
        if f.retry_after is not None:
            reason += f"; retry in {max(1, math.ceil(f.retry_after))} s"
        return ErrorCode.RATE_LIMITED, reason
    if code in _AGENT_CODES:
        return ErrorCode.NOT_FOUND, f"MOMO AI has no such agent ({inner})"
    if code in _PARAM_CODES:
        return ErrorCode.INVALID_DATA, f"MOMO AI refused the request's parameters ({inner})"
    if code.startswith("HTTP_") and code[5:].isdigit():
        said = "; ".join(s for s in (f.message, f.details) if s)
        return ErrorCode.UPSTREAM_ERROR, f"MOMO AI returned HTTP {code[5:]}" + (
            f": {said}" if said else ""
        )
    return ErrorCode.UPSTREAM_ERROR, f"MOMO AI reported an error ({inner})"
