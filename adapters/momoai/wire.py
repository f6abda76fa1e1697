"""MOMO AI's JSON read into plain values, and the request body sent to it (pure: no I/O).

The API (``https://api.momoai.pro/v1``, documented only in Chinese) wraps every answer in an
envelope: ``{"success": true, "data": {...}}`` or
``{"success": false, "error": {"code", "message", "details"}}``. The readers here take the
decoded JSON (whatever the upstream sent) and return frozen dataclasses, raising `WireError`
when the answer is not the documented shape. They are lenient about the variants such APIs send
in practice (a bare body without the envelope, ``data.items``, ids as numbers or strings, an
OpenAI-style ``choices`` answer) and strict about what ends up in the bridge: ids match
`AGENT_ID_RE`, numbers are finite, strings are bounded and never hold a lone surrogate.

Failures (the error envelope, error pages, Retry-After, the mapping to bridge errors) are read in
`adapters.momoai.failures`; their names are re-exported here, so ``wire`` stays the one module
callers import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.momoai.failures import (
    MAX_DETAILS,
    MAX_MESSAGE,
    MAX_RETRY_AFTER,
    ApiFailure,
    cap,
    describe,
    failure_error,
    finite_float,
    is_failure,
    is_key_refusal,
    is_rate_limit,
    parse_failure,
    parse_retry_after,
    scrub,
)

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
    "is_key_refusal",
    "is_rate_limit",
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
# What is kept of a request id, a currency.
MAX_ID = 200
MAX_CURRENCY = 16
# Integers past this are not token counts (orjson turns huge ones into floats).
_MAX_INT = (1 << 63) - 1


class WireError(ValueError):
    """The upstream answered something that is not the documented shape."""


# ----- small value readers -----------------------------------------------------------------------


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
        return cap(v, MAX_ID)
    return None


def _line_text(v: Any, limit: int) -> str:
    """A display string on one line (whitespace collapsed), capped; "" when not a string."""
    if not isinstance(v, str):
        return ""
    return cap(" ".join(v[: limit * 4].split()), limit)


def _data(body: Any, what: str) -> Any:
    """The envelope's ``data`` (or the body itself when it has no envelope)."""
    if isinstance(body, dict):
        if is_failure(body):
            f = parse_failure(0, body)
            raise WireError(f"MOMO AI answered {what} with an error: {describe(f)}")
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
        description=cap(entry["description"].strip(), MAX_DESCRIPTION)
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
