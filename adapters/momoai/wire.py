"""MOMO AI's JSON as plain values, and its failures as bridge errors (pure: no I/O).

The API (``https://api.momoai.pro/v1``, documented only in Chinese) wraps every answer in an
envelope: ``{"success": true, "data": {...}}`` or
``{"success": false, "error": {"code", "message", "details"}}``. The readers here take the
decoded JSON (whatever the upstream sent) and return frozen dataclasses, raising `WireError`
when the answer is not the documented shape. They are lenient about the variants such APIs send
in practice (a bare body without the envelope, ``data.items``, ids as numbers or strings, an
OpenAI-style ``choices`` answer) and strict about what ends up in the bridge: ids match
`AGENT_ID_RE`, numbers are finite, strings are bounded and never hold a lone surrogate.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

from bridge.errors import ErrorCode

__all__ = [
    "AGENT_ID_RE",
    "MAX_DESCRIPTION",
    "MAX_DETAILS",
    "MAX_MESSAGE",
    "MAX_NAME",
    "MAX_RETRY_AFTER",
    "MODEL_PREFIX",
    "Agent",
    "Answer",
    "ApiFailure",
    "Balance",
    "WireError",
    "failure_error",
    "finite_float",
    "is_failure",
    "non_negative_int",
    "parse_agents_page",
    "parse_answer",
    "parse_balance",
    "parse_failure",
    "parse_retry_after",
    "request_body",
    "scrub",
]

MODEL_PREFIX = "momoai:"
# An agent id as the bridge keeps it (the API sends numbers; strings are accepted too).
AGENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

MAX_NAME = 100
MAX_DESCRIPTION = 500
MAX_MESSAGE = 500
MAX_DETAILS = 1000
# What is kept of an error code, a request id, a currency.
MAX_CODE = 64
MAX_ID = 200
MAX_CURRENCY = 16
# Retry-After is clamped to this (an hour); a longer wait is not one a request should make.
MAX_RETRY_AFTER = 3600.0
# A message made from an error page's text keeps this many characters.
MAX_TEXT_MESSAGE = 200
# An error page is read this far for its message (the regexes below never see more).
_MAX_PAGE = 64 << 10
# Integers past this are not token counts (orjson turns huge ones into floats).
_MAX_INT = (1 << 63) - 1

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


class WireError(ValueError):
    """The upstream answered something that is not the documented shape."""


# ----- small value readers -----------------------------------------------------------------------


def scrub(s: str) -> str:
    """``s`` with every lone surrogate replaced by U+FFFD (a surrogate cannot be UTF-8 encoded)."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return s


def _cap(s: str, limit: int) -> str:
    return scrub(s[:limit])


def non_negative_int(v: Any) -> int | None:
    """A count: an int (not a bool), an integral float or a string of digits; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 0 <= v <= _MAX_INT else None
    if isinstance(v, float):
        return int(v) if v.is_integer() and 0 <= v <= _MAX_INT else None
    if isinstance(v, str) and 0 < len(v) <= 19 and v.isascii() and v.isdigit():
        return int(v)
    return None


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


def _agent_id(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        v = str(v)
    if isinstance(v, str):
        v = v.strip()
        if AGENT_ID_RE.fullmatch(v):
            return v
    return None


def _request_id(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and v:
        return _cap(v, MAX_ID)
    return None


def _line_text(v: Any, limit: int) -> str:
    """A display string on one line (whitespace collapsed), capped; "" when not a string."""
    if not isinstance(v, str):
        return ""
    return _cap(" ".join(v[: limit * 4].split()), limit)


def _data(body: Any, what: str) -> Any:
    """The envelope's ``data`` (or the body itself when it has no envelope)."""
    if isinstance(body, dict):
        if is_failure(body):
            f = parse_failure(0, body)
            raise WireError(f"MOMO AI answered {what} with an error: {_inner(f)}")
        if "data" in body:
            return body["data"]
        return body
    if isinstance(body, list):
        return body
    raise WireError(f"MOMO AI answered {what} with {_kind(body)}, not a JSON object")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(v), "a number" if isinstance(v, int | float) else type(v).__name__
    )


def is_failure(body: Any) -> bool:
    """Whether a decoded body is an error envelope (``"success": false`` or an ``error`` and no
    ``data``), which `parse_failure` reads, whatever the HTTP status was."""
    if not isinstance(body, dict):
        return False
    if body.get("success") is False:
        return True
    return bool(body.get("error")) and body.get("data") is None and body.get("success") is not True


# ----- agents ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    description: str = ""
    price_per_1k_tokens: float | None = None
    rating: float | None = None

    @property
    def model(self) -> str:
        """The bridge's model name for this agent: ``momoai:<id>``."""
        return MODEL_PREFIX + self.id


def _agent(entry: Any) -> Agent | None:
    if not isinstance(entry, dict):
        return None
    agent_id = _agent_id(entry.get("id", entry.get("agent_id")))
    if agent_id is None:
        return None
    price = finite_float(entry.get("price_per_1k_tokens"))
    return Agent(
        id=agent_id,
        name=_line_text(entry.get("name"), MAX_NAME) or agent_id,
        description=_cap(entry["description"].strip(), MAX_DESCRIPTION)
        if isinstance(entry.get("description"), str)
        else "",
        price_per_1k_tokens=price if price is not None and price >= 0 else None,
        rating=finite_float(entry.get("rating")),
    )


def parse_agents_page(body: Any) -> tuple[list[Agent], int | None]:
    """One page of ``GET /agents``: its agents (in order, first of each id) and ``total``.

    Accepts ``data.agents``, ``data.items``, a bare list as ``data`` and a body without the
    envelope. An entry that is not an object, has no usable id (`AGENT_ID_RE`) is skipped; one
    without a name is named by its id.
    """
    data = _data(body, "the agent list")
    total = None
    if isinstance(data, dict):
        entries = data.get("agents")
        if entries is None:
            entries = data.get("items")
        total = non_negative_int(data.get("total"))
    else:
        entries = data
    if not isinstance(entries, list):
        raise WireError(f"MOMO AI's agent list has no list of agents (got {_kind(entries)})")
    agents: list[Agent] = []
    seen: set[str] = set()
    for entry in entries:
        agent = _agent(entry)
        if agent is not None and agent.id not in seen:
            seen.add(agent.id)
            agents.append(agent)
    return agents, total


# ----- balance -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    balance: float | None
    currency: str
    # (agent_id, remaining_tokens) for each agent the account holds a token package of.
    agents: tuple[tuple[str, int | None], ...]


def parse_balance(body: Any) -> Balance:
    """``GET /account/balance``. The currency defaults to CNY (the only one the docs show)."""
    data = _data(body, "the balance request")
    if not isinstance(data, dict):
        raise WireError(f"MOMO AI's balance is {_kind(data)}, not an object")
    rows: list[tuple[str, int | None]] = []
    entries = data.get("agents")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict):
                agent_id = _agent_id(entry.get("agent_id", entry.get("id")))
                if agent_id is not None:
                    rows.append((agent_id, non_negative_int(entry.get("remaining_tokens"))))
    return Balance(
        balance=finite_float(data.get("balance")),
        currency=_line_text(data.get("currency"), MAX_CURRENCY) or "CNY",
        agents=tuple(rows),
    )


# ----- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    content: str
    tokens_used: int | None = None
    cost: float | None = None
    request_id: str | None = None


def _tokens(d: dict[str, Any]) -> int | None:
    n = non_negative_int(d.get("tokens_used"))
    if n is None:
        usage = d.get("usage")
        if isinstance(usage, dict):
            n = non_negative_int(usage.get("total_tokens", usage.get("tokens_used")))
    return n


def parse_answer(body: Any) -> Answer:
    """A non-streamed ``POST /agents/{id}`` answer.

    The text is ``data.content``, else ``data.reply``, ``data.text`` or an OpenAI-style
    ``choices[0].message.content``; `WireError` when none of them is a string.
    """
    data = _data(body, "the request")
    if not isinstance(data, dict):
        raise WireError(f"MOMO AI's answer is {_kind(data)}, not an object")
    content: Any = None
    for key in ("content", "reply", "text"):
        content = data.get(key)
        if isinstance(content, str):
            break
    else:
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if isinstance(message, dict):
                content = message.get("content")
    if not isinstance(content, str):
        raise WireError("MOMO AI's answer has no text (no string data.content)")
    cost = finite_float(data.get("cost"))
    return Answer(
        content=scrub(content),
        tokens_used=_tokens(data),
        cost=cost if cost is not None and cost >= 0 else None,
        request_id=_request_id(data.get("id", data.get("request_id"))),
    )


# ----- failures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiFailure:
    code: str
    message: str
    details: str = ""
    status: int = 0
    retry_after: float | None = None


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
    message = _cap(message.strip(), MAX_MESSAGE)
    details = _cap(details.strip(), MAX_DETAILS) if details else ""
    return ApiFailure(
        code=scrub(code),
        message=message,
        details="" if details == message else details,
        status=status,
        retry_after=wait,
    )


def _inner(f: ApiFailure) -> str:
    """``CODE: message; details`` (the parts that are there)."""
    said = "; ".join(s for s in (f.message, f.details) if s)
    return f"{f.code}: {said}" if said else f.code


def failure_error(f: ApiFailure) -> tuple[ErrorCode, str]:
    """The bridge's error code for a failure, and a reason for a person that always carries
    MOMO AI's own message (and details)."""
    code = f.code.upper()
    inner = _inner(f)
    if code in _KEY_CODES:
        return ErrorCode.UPSTREAM_ERROR, (
            f"MOMO AI refused the API key ({inner}); check [momoai] api_key"
        )
    if code in _BALANCE_CODES:
        return ErrorCode.UNAVAILABLE, f"MOMO AI balance is too low ({inner})"
    if code in _RATE_CODES:
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


# ----- requests ----------------------------------------------------------------------------------


def request_body(
    prompt: str, *, temperature: float | None, max_tokens: int | None, stream: bool
) -> dict[str, Any]:
    """The JSON body of ``POST /agents/{id}``.

    ``temperature`` is clamped to [0, 1], the API's documented range (OpenAI clients send up to
    2); a missing or non-finite one is left out. ``max_tokens`` below 1 is left out.
    """
    body: dict[str, Any] = {"prompt": scrub(prompt), "stream": bool(stream)}
    t = finite_float(temperature) if not isinstance(temperature, str) else None
    if t is not None:
        body["temperature"] = min(max(t, 0.0), 1.0)
    n = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None
    if n is None and isinstance(max_tokens, float) and max_tokens.is_integer():
        n = int(max_tokens)
    if n is not None and n >= 1:
        body["max_tokens"] = n
    return body
