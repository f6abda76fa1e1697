"""MOMO AI's JSON read into plain values, its failures mapped to bridge errors, request bodies."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from adapters.momoai import failures, wire
from adapters.momoai.wire import (
    AGENT_ID_RE,
    MAX_DESCRIPTION,
    MAX_DETAILS,
    MAX_MESSAGE,
    MAX_NAME,
    MODEL_PREFIX,
    Agent,
    Answer,
    ApiFailure,
    Balance,
    WireError,
    failure_error,
    finite_float,
    is_failure,
    is_key_refusal,
    is_rate_limit,
    non_negative_int,
    parse_agents_page,
    parse_answer,
    parse_balance,
    parse_failure,
    parse_retry_after,
    request_body,
    scrub,
)
from bridge.errors import ErrorCode

# ----- the documented examples ------------------------------------------------------------------

AGENTS = {
    "success": True,
    "data": {
        "agents": [
            {
                "id": 159,
                "name": "gpt5.2",
                "description": "通用对话智能体",
                "price_per_1k_tokens": 0.01,
                "rating": 4.8,
            }
        ],
        "total": 100,
        "page": 1,
        "page_size": 20,
    },
}

BALANCE = {
    "success": True,
    "data": {
        "balance": 98.5,
        "currency": "CNY",
        "agents": [{"agent_id": 159, "remaining_tokens": 50000}],
    },
}

ANSWER = {
    "success": True,
    "data": {"id": "req_123456", "content": "你好!", "tokens_used": 150, "cost": 0.015},
}

BALANCE_ERROR = {
    "success": False,
    "error": {
        "code": "INSUFFICIENT_BALANCE",
        "message": "余额不足",
        "details": "当前余额: 0.5 元,本次请求需要: 1.2 元",
    },
}


def test_model_prefix_and_id_pattern() -> None:
    assert MODEL_PREFIX == "momoai:"
    assert AGENT_ID_RE.fullmatch("159")
    assert AGENT_ID_RE.fullmatch("agent_1.v-2")
    assert not AGENT_ID_RE.fullmatch("a/b")
    assert not AGENT_ID_RE.fullmatch("")
    assert not AGENT_ID_RE.fullmatch("x" * 65)


# ----- agents -----------------------------------------------------------------------------------


def test_documented_agent_page() -> None:
    agents, total = parse_agents_page(AGENTS)
    assert agents == [Agent("159", "gpt5.2", "通用对话智能体", 0.01, 4.8)]
    assert total == 100
    assert agents[0].model == "momoai:159"


def test_agent_defaults() -> None:
    agent = Agent("7", "x")
    assert (agent.description, agent.price_per_1k_tokens, agent.rating) == ("", None, None)
    with pytest.raises(AttributeError):
        agent.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    "body",
    [
        {"success": True, "data": {"agents": [{"id": 1, "name": "a"}]}},
        {"success": True, "data": {"items": [{"id": 1, "name": "a"}]}},
        {"success": True, "data": [{"id": 1, "name": "a"}]},
        {"agents": [{"id": 1, "name": "a"}]},
        [{"id": 1, "name": "a"}],
        {"data": {"agents": [{"agent_id": "1", "name": "a"}]}},
    ],
)
def test_agent_list_shapes(body: object) -> None:
    agents, total = parse_agents_page(body)
    assert agents == [Agent("1", "a")]
    assert total is None


def test_malformed_entries_are_skipped_not_fatal() -> None:
    body = {
        "success": True,
        "data": {
            "agents": [
                "not an object",
                None,
                {"name": "no id"},
                {"id": True, "name": "bool id"},
                {"id": 1.5, "name": "float id"},
                {"id": "a/b", "name": "bad chars"},
                {"id": "", "name": "empty"},
                {"id": "x" * 65, "name": "too long"},
                {"id": ["1"], "name": "list"},
                {"id": 2},
                {"id": " 3 ", "name": 42},
                {"id": "ok", "name": "fine", "description": 5, "price_per_1k_tokens": "0.5"},
                {"id": 4, "name": "n", "price_per_1k_tokens": -1, "rating": float("nan")},
                {"id": 5, "name": "n", "price_per_1k_tokens": True, "rating": "x"},
                {"id": 2, "name": "duplicate"},
            ],
            "total": True,
        },
    }
    agents, total = parse_agents_page(body)
    assert agents == [
        Agent("2", "2"),
        Agent("3", "3"),
        Agent("ok", "fine", "", 0.5),
        Agent("4", "n"),
        Agent("5", "n"),
    ]
    assert total is None  # a bool is not a count


def test_agent_strings_are_bounded_and_clean() -> None:
    body = {
        "data": {
            "agents": [
                {
                    "id": 1,
                    "name": "  a\n  very\tlong " + "n" * 500,
                    "description": "d" * 2000 + "\ud800",
                },
                {"id": 2, "name": "bad \udc00 half", "description": " spaced \ud83d "},
                {"id": 3, "name": "   "},
            ],
            "total": "12",
        }
    }
    agents, total = parse_agents_page(body)
    assert total == 12
    assert len(agents[0].name) == MAX_NAME
    assert agents[0].name.startswith("a very long n")
    assert len(agents[0].description) == MAX_DESCRIPTION
    assert agents[1].name == "bad \ufffd half"
    assert agents[1].description == "spaced \ufffd"
    assert agents[2].name == "3"
    for agent in agents:
        agent.name.encode()
        agent.description.encode()


@pytest.mark.parametrize(
    "body",
    [None, "text", 5, {"success": True, "data": None}, {"success": True, "data": {"x": 1}}],
)
def test_agent_list_wrong_shape(body: object) -> None:
    with pytest.raises(WireError):
        parse_agents_page(body)


def test_agent_list_error_envelope() -> None:
    with pytest.raises(WireError, match="INVALID_API_KEY: bad key"):
        parse_agents_page(
            {"success": False, "error": {"code": "INVALID_API_KEY", "message": "bad key"}}
        )
    with pytest.raises(WireError, match="nope"):
        parse_agents_page({"error": "nope"})


# ----- balance ----------------------------------------------------------------------------------


def test_documented_balance() -> None:
    assert parse_balance(BALANCE) == Balance(98.5, "CNY", (("159", 50000),))


def test_balance_leniency() -> None:
    body = {
        "data": {
            "balance": "12.25",
            "agents": [
                {"agent_id": "a1", "remaining_tokens": None},
                {"id": 3, "remaining_tokens": "100"},
                {"agent_id": "bad/id", "remaining_tokens": 1},
                {"remaining_tokens": 1},
                "junk",
                {"agent_id": 4, "remaining_tokens": -5},
                {"agent_id": 5, "remaining_tokens": 2.0},
            ],
        }
    }
    assert parse_balance(body) == Balance(
        12.25, "CNY", (("a1", None), ("3", 100), ("4", None), ("5", 2))
    )
    assert parse_balance({"success": True, "data": {}}) == Balance(None, "CNY", ())
    assert parse_balance({"data": {"balance": math.inf, "currency": "USD", "agents": 5}}) == (
        Balance(None, "USD", ())
    )


@pytest.mark.parametrize("body", [None, [], {"success": True, "data": [1]}, "x"])
def test_balance_wrong_shape(body: object) -> None:
    with pytest.raises(WireError):
        parse_balance(body)


def test_balance_error_envelope() -> None:
    with pytest.raises(WireError, match="余额不足"):
        parse_balance(BALANCE_ERROR)


# ----- answers ----------------------------------------------------------------------------------


def test_documented_answer() -> None:
    assert parse_answer(ANSWER) == Answer("你好!", 150, 0.015, "req_123456")


@pytest.mark.parametrize(
    "data",
    [
        {"content": "hi"},
        {"reply": "hi"},
        {"text": "hi"},
        {"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
        {"content": None, "reply": "hi"},
        {"content": 5, "text": "hi"},
    ],
)
def test_answer_text_shapes(data: dict[str, object]) -> None:
    assert parse_answer({"success": True, "data": data}).content == "hi"


def test_answer_counts_and_ids() -> None:
    body = {"data": {"content": "", "usage": {"total_tokens": 9}, "cost": -1, "request_id": 77}}
    assert parse_answer(body) == Answer("", 9, None, "77")
    body = {"data": {"content": "x", "tokens_used": True, "cost": "nan", "id": ""}}
    assert parse_answer(body) == Answer("x")
    assert parse_answer({"content": "bare"}) == Answer("bare")
    assert parse_answer({"data": {"content": "a\ud800b"}}).content == "a\ufffdb"


@pytest.mark.parametrize(
    "body",
    [
        {"success": True, "data": {}},
        {"success": True, "data": {"content": None}},
        {"success": True, "data": {"content": ["x"]}},
        {"success": True, "data": {"choices": []}},
        {"success": True, "data": {"choices": [{"message": {"content": None}}]}},
        {"success": True, "data": "text"},
        None,
        42,
    ],
)
def test_answer_without_text(body: object) -> None:
    with pytest.raises(WireError):
        parse_answer(body)


def test_answer_error_envelope() -> None:
    with pytest.raises(WireError, match="INSUFFICIENT_BALANCE: 余额不足; 当前余额"):
        parse_answer(BALANCE_ERROR)


def test_is_failure() -> None:
    assert is_failure(BALANCE_ERROR)
    assert is_failure({"success": False})
    assert is_failure({"error": "x"})
    assert is_failure({"error": {"message": "x"}})
    assert not is_failure(ANSWER)
    assert not is_failure({"error": None, "data": {}})
    assert not is_failure({"success": True, "error": "x", "data": {}})
    assert not is_failure([1])
    assert not is_failure(None)


# ----- failures ---------------------------------------------------------------------------------


def test_documented_error_envelope() -> None:
    f = parse_failure(402, BALANCE_ERROR)
    assert f == ApiFailure(
        "INSUFFICIENT_BALANCE", "余额不足", "当前余额: 0.5 元,本次请求需要: 1.2 元", 402, None
    )
    code, reason = failure_error(f)
    assert code is ErrorCode.UNAVAILABLE
    assert reason == (
        "MOMO AI balance is too low (INSUFFICIENT_BALANCE: 余额不足; 当前余额: 0.5 元,本次请求需要: 1.2 元)"
    )


@pytest.mark.parametrize(
    ("body", "code", "message", "details"),
    [
        ({"error": "some string"}, "HTTP_500", "some string", ""),
        ({"message": "top-level message"}, "HTTP_500", "top-level message", ""),
        ({"code": "RATE_LIMIT", "message": "slow down"}, "RATE_LIMIT", "slow down", ""),
        ({"code": 429, "msg": "太频繁"}, "RATE_LIMIT", "太频繁", ""),
        ({"code": 10001, "msg": "custom"}, "10001", "custom", ""),
        ({"code": 0, "msg": "zero"}, "HTTP_500", "zero", ""),
        ({"error": {"type": "invalid_api_key", "message": "m"}}, "INVALID_API_KEY", "m", ""),
        ({"error": {"code": "x y", "message": "m", "details": {"a": 1}}}, "X_Y", "m", '{"a":1}'),
        ({"error": {"code": "C", "message": "same", "details": "same"}}, "C", "same", ""),
        ({"error": {"code": "C", "message": 5, "detail": ["d"]}}, "C", "5", '["d"]'),
        ({"success": False}, "HTTP_500", "Internal Server Error", ""),
    ],
)
def test_envelope_variants(body: object, code: str, message: str, details: str) -> None:
    f = parse_failure(500, body)
    assert (f.code, f.message, f.details, f.status) == (code, message, details, 500)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "INVALID_PARAMETERS"),
        (401, "INVALID_API_KEY"),
        (402, "INSUFFICIENT_BALANCE"),
        (403, "INVALID_API_KEY"),
        (404, "HTTP_404"),
        (422, "INVALID_PARAMETERS"),
        (429, "RATE_LIMIT"),
        (500, "HTTP_500"),
        (502, "HTTP_502"),
        (503, "HTTP_503"),
        (418, "HTTP_418"),
        (302, "HTTP_302"),
        (0, "UNKNOWN_ERROR"),
        (200, "UNKNOWN_ERROR"),
    ],
)
def test_code_from_status(status: int, code: str) -> None:
    assert parse_failure(status, None).code == code


def test_message_from_status_phrase_and_text() -> None:
    assert parse_failure(502, None).message == "Bad Gateway"
    assert parse_failure(599, None).message == ""
    assert parse_failure(0, None).message == ""
    assert parse_failure(503, None, "  upstream\n\n  overloaded  ").message == (
        "upstream overloaded"
    )
    long = parse_failure(500, None, "word " * 100).message
    assert len(long) <= 201 and long.endswith("…")


def test_message_from_an_html_page() -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
        "<body><script>var x = '<b>';</script><center><h1>502 Bad Gateway</h1></center>"
        "<hr><center>nginx &amp; friends</center></body></html>"
    )
    assert parse_failure(502, None, page).message == "502 Bad Gateway nginx & friends"
    assert parse_failure(
        502, None, "<html><head><title>Only title</title></head></html>"
    ).message == ("Only title")
    assert parse_failure(502, None, "<p>a</p><p>b</p>").message == "a b"
    # A head never closed does not hide the body.
    assert parse_failure(502, None, "<head><title>t</title><body>shown").message == "shown"
    assert parse_failure(502, None, "a < b and c<d").message == "a < b and c<d"
    assert parse_failure(502, None, "x<!-- hidden -->y").message == "xy"
    # Pathological markup (html.parser is quadratic on unclosed tags) stays cheap.
    start = time.perf_counter()
    for page in ("<" * 100_000, "<head" * 20_000, "<a " * 30_000, "<!--" * 20_000,
                 "<p>x</p>" * 10_000, "<head></head>" * 10_000, "<title>" * 10_000,
                 "<script>" + "a<" * 40_000):  # fmt: skip
        assert isinstance(parse_failure(502, None, page).message, str)
    assert time.perf_counter() - start < 2


def test_json_text_without_a_body_is_read() -> None:
    text = json.dumps(BALANCE_ERROR, ensure_ascii=False)
    f = parse_failure(400, None, text)
    assert (f.code, f.message) == ("INSUFFICIENT_BALANCE", "余额不足")
    assert parse_failure(400, None, "{broken").message == "{broken"
    assert parse_failure(500, "plain string body").message == "plain string body"


def test_strings_are_capped_and_clean() -> None:
    body = {
        "error": {
            "code": "C" * 500,
            "message": "m" * 5000 + "\ud800",
            "details": "\udc00" + "d" * 5000,
        }
    }
    f = parse_failure(400, body)
    assert len(f.code) == 64
    assert len(f.message) == MAX_MESSAGE
    assert len(f.details) == MAX_DETAILS
    assert f.details.startswith("\ufffd")
    assert parse_failure(400, {"error": "x\ud83d"}).message == "x\ufffd"
    for s in (f.code, f.message, f.details):
        s.encode()


# ----- Retry-After ------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("999999", 3600.0),
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
        (format_datetime(datetime.fromtimestamp(NOW + 86400, UTC), usegmt=True), 3600.0),
        # A date without a zone is GMT.
        (datetime.fromtimestamp(NOW + 60, UTC).strftime("%a, %d %b %Y %H:%M:%S"), 60.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        ("3 s", None),
        ("Mon, 99 Foo 2024 99:99:99 GMT", None),
        ("9" * 200, None),
    ],
)
def test_retry_after_forms(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_in_a_failure() -> None:
    assert parse_failure(429, None, retry_after="7").retry_after == 7.0
    assert parse_failure(429, None, retry_after="garbage").retry_after is None
    assert parse_failure(429, None).retry_after is None
    # Without the header, a retry_after in the body.
    body = {"error": {"code": "RATE_LIMIT", "message": "m", "retry_after": 12}}
    assert parse_failure(429, body).retry_after == 12.0
    assert parse_failure(429, {"message": "m", "retry_after": "99999"}).retry_after == 3600.0
    assert parse_failure(429, body, retry_after="2").retry_after == 2.0


# ----- failure mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "code", "reason"),
    [
        (
            ApiFailure("INVALID_API_KEY", "无效的API密钥"),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI refused the API key (INVALID_API_KEY: 无效的API密钥); check [momoai] api_key",
        ),
        (
            ApiFailure("INSUFFICIENT_BALANCE", "余额不足", "当前余额: 0.5 元,本次请求需要: 1.2 元"),
            ErrorCode.UNAVAILABLE,
            "MOMO AI balance is too low (INSUFFICIENT_BALANCE: 余额不足; 当前余额: 0.5 元,本次请求需要: 1.2 元)",
        ),
        (
            ApiFailure("RATE_LIMIT", "请求过于频繁", retry_after=3.0),
            ErrorCode.RATE_LIMITED,
            "MOMO AI is rate limiting requests (RATE_LIMIT: 请求过于频繁); retry in 3 s",
        ),
        (
            ApiFailure("RATE_LIMIT", "请求过于频繁", retry_after=2.2),
            ErrorCode.RATE_LIMITED,
            "MOMO AI is rate limiting requests (RATE_LIMIT: 请求过于频繁); retry in 3 s",
        ),
        (
            ApiFailure("RATE_LIMIT", "请求过于频繁", retry_after=0.0),
            ErrorCode.RATE_LIMITED,
            "MOMO AI is rate limiting requests (RATE_LIMIT: 请求过于频繁); retry in 1 s",
        ),
        (
            ApiFailure("RATE_LIMIT", "请求过于频繁"),
            ErrorCode.RATE_LIMITED,
            "MOMO AI is rate limiting requests (RATE_LIMIT: 请求过于频繁)",
        ),
        (
            ApiFailure("AGENT_NOT_FOUND", "智能体不存在", "agent 999"),
            ErrorCode.NOT_FOUND,
            "MOMO AI has no such agent (AGENT_NOT_FOUND: 智能体不存在; agent 999)",
        ),
        (
            ApiFailure("INVALID_PARAMETERS", "参数错误", "temperature 必须在 0-1 之间"),
            ErrorCode.INVALID_DATA,
            "MOMO AI refused the request's parameters (INVALID_PARAMETERS: 参数错误; temperature 必须在 0-1 之间)",
        ),
        (
            ApiFailure("HTTP_502", "Bad Gateway", status=502),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI returned HTTP 502: Bad Gateway",
        ),
        (
            ApiFailure("HTTP_500", "boom", "trace id 1", status=500),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI returned HTTP 500: boom; trace id 1",
        ),
        (
            ApiFailure("HTTP_404", "Not Found", status=404),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI returned HTTP 404: Not Found",
        ),
        (
            ApiFailure("HTTP_599", "", status=599),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI returned HTTP 599",
        ),
        (
            ApiFailure("MODEL_OVERLOADED", "模型繁忙", "稍后再试"),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI reported an error (MODEL_OVERLOADED: 模型繁忙; 稍后再试)",
        ),
        (
            ApiFailure("UNKNOWN_ERROR", ""),
            ErrorCode.UPSTREAM_ERROR,
            "MOMO AI reported an error (UNKNOWN_ERROR)",
        ),
        (
            ApiFailure("AGENT_NOT_FOUND", "", "only details"),
            ErrorCode.NOT_FOUND,
            "MOMO AI has no such agent (AGENT_NOT_FOUND: only details)",
        ),
    ],
)
def test_failure_mapping(failure: ApiFailure, code: ErrorCode, reason: str) -> None:
    assert failure_error(failure) == (code, reason)
    assert failure.message in reason
    assert failure.details in reason


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("UNAUTHORIZED", ErrorCode.UPSTREAM_ERROR),
        ("invalid_api_key", ErrorCode.UPSTREAM_ERROR),
        ("INSUFFICIENT_QUOTA", ErrorCode.UNAVAILABLE),
        ("RATE_LIMITED", ErrorCode.RATE_LIMITED),
        ("TOO_MANY_REQUESTS", ErrorCode.RATE_LIMITED),
        ("INVALID_PARAMETER", ErrorCode.INVALID_DATA),
    ],
)
def test_code_aliases(code: str, error: ErrorCode) -> None:
    assert failure_error(ApiFailure(code, "m"))[0] is error


@pytest.mark.parametrize(
    ("status", "body", "text", "code", "words"),
    [
        (401, {"success": False, "error": {"code": "INVALID_API_KEY", "message": "密钥无效"}},
         "", ErrorCode.UPSTREAM_ERROR, ["密钥无效", "api_key"]),
        (401, None, "Unauthorized", ErrorCode.UPSTREAM_ERROR, ["Unauthorized", "api_key"]),
        (402, None, "", ErrorCode.UNAVAILABLE, ["Payment Required"]),
        (404, {"success": False, "error": {"code": "AGENT_NOT_FOUND", "message": "智能体不存在"}},
         "", ErrorCode.NOT_FOUND, ["智能体不存在"]),
        (404, None, "<h1>Not Found</h1>", ErrorCode.UPSTREAM_ERROR, ["HTTP 404", "Not Found"]),
        (429, None, "", ErrorCode.RATE_LIMITED, ["Too Many Requests"]),
        (400, {"success": False, "error": {"code": "INVALID_PARAMETERS", "message": "参数错误",
               "details": "max_tokens"}}, "", ErrorCode.INVALID_DATA, ["参数错误", "max_tokens"]),
        (503, None, "upstream connect error", ErrorCode.UPSTREAM_ERROR,
         ["HTTP 503", "upstream connect error"]),
        (0, {"error": {"message": "stream broke"}}, "", ErrorCode.UPSTREAM_ERROR,
         ["UNKNOWN_ERROR", "stream broke"]),
    ],
)  # fmt: skip
def test_end_to_end_reasons(
    status: int, body: object, text: str, code: ErrorCode, words: list[str]
) -> None:
    got, reason = failure_error(parse_failure(status, body, text))
    assert got is code
    for word in words:
        assert word in reason


def test_rate_limit_reason_with_header() -> None:
    f = parse_failure(429, {"success": False, "error": {"code": "RATE_LIMIT", "message": "慢点"}},
                      retry_after="3")  # fmt: skip
    assert failure_error(f) == (
        ErrorCode.RATE_LIMITED,
        "MOMO AI is rate limiting requests (RATE_LIMIT: 慢点); retry in 3 s",
    )


# The failures every alias and status reading below stands for: (status, body, text).
KEY_REFUSALS = [
    (401, {"success": False, "error": {"code": "INVALID_API_KEY", "message": "无效的API密钥"}}, ""),
    (200, {"success": False, "error": {"code": "invalid_api_key", "message": "m"}}, ""),
    (401, {"error": {"code": "UNAUTHORIZED", "message": "m"}}, ""),
    (0, {"error": {"code": "Invalid Token", "message": "m"}}, ""),
    (401, {"code": "AUTHENTICATION_FAILED", "message": "m"}, ""),
    (403, {"error": {"code": "FORBIDDEN"}}, ""),
    (401, None, "Unauthorized"),  # no code: read from the status
    (403, None, "<h1>403 Forbidden</h1>"),
    (200, {"code": 401, "msg": "token expired"}, ""),  # a status number as the code
    (400, {"error": {"code": "UNAUTHORIZED"}}, ""),  # the body's code wins over the status
]
RATE_LIMITS = [
    (429, {"success": False, "error": {"code": "RATE_LIMIT", "message": "请求过于频繁"}}, ""),
    (429, {"error": {"code": "rate_limited"}}, ""),
    (200, {"error": {"code": "RATE_LIMIT_EXCEEDED", "message": "m"}}, ""),
    (0, {"code": "Too Many Requests", "message": "m"}, ""),
    (429, None, ""),
    (200, {"code": 429, "msg": "slow down"}, ""),
    (503, {"error": {"code": "TOO_MANY_REQUESTS"}}, ""),
]
OTHERS = [
    (402, None, ""),
    (402, {"error": {"code": "INSUFFICIENT_QUOTA"}}, ""),
    (404, {"error": {"code": "AGENT_NOT_FOUND"}}, ""),
    (400, None, ""),
    (404, None, "<h1>Not Found</h1>"),
    (500, None, "boom"),
    (503, {"error": {"code": "SERVICE_UNAVAILABLE"}}, ""),
    (0, {"error": {"message": "stream broke"}}, ""),
    # A code the body names wins over the status, both ways.
    (401, {"error": {"code": "MODEL_OVERLOADED"}}, ""),
    (429, {"error": {"code": "INVALID_PARAMETERS"}}, ""),
]


@pytest.mark.parametrize(("status", "body", "text"), KEY_REFUSALS)
def test_is_key_refusal(status: int, body: object, text: str) -> None:
    f = parse_failure(status, body, text)
    assert is_key_refusal(f) and not is_rate_limit(f)
    assert failure_error(f)[1].startswith("MOMO AI refused the API key")


@pytest.mark.parametrize(("status", "body", "text"), RATE_LIMITS)
def test_is_rate_limit(status: int, body: object, text: str) -> None:
    f = parse_failure(status, body, text)
    assert is_rate_limit(f) and not is_key_refusal(f)
    assert failure_error(f)[0] is ErrorCode.RATE_LIMITED


@pytest.mark.parametrize(("status", "body", "text"), OTHERS)
def test_neither_a_key_refusal_nor_a_rate_limit(status: int, body: object, text: str) -> None:
    f = parse_failure(status, body, text)
    assert not is_key_refusal(f) and not is_rate_limit(f)
    error, reason = failure_error(f)
    assert error is not ErrorCode.RATE_LIMITED and "API key" not in reason


def test_predicates_agree_with_failure_error() -> None:
    """Exactly what failure_error calls a refused key or a rate limit, whatever the spelling."""
    codes = ["INVALID_API_KEY", "UNAUTHORIZED", "INVALID_TOKEN", "AUTHENTICATION_FAILED",
             "FORBIDDEN", "RATE_LIMIT", "RATE_LIMITED", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS",
             "INSUFFICIENT_BALANCE", "AGENT_NOT_FOUND", "INVALID_PARAMETERS", "HTTP_401",
             "HTTP_429", "UNKNOWN_ERROR", "API_KEY", "RATE", ""]  # fmt: skip
    for code in codes + [c.lower() for c in codes]:
        f = ApiFailure(code, "m", status=401)
        error, reason = failure_error(f)
        assert is_key_refusal(f) == reason.startswith("MOMO AI refused the API key"), code
        assert is_rate_limit(f) == (error is ErrorCode.RATE_LIMITED), code
    # A failure built by hand with only a status is judged by its code, as failure_error does.
    assert not is_key_refusal(ApiFailure("HTTP_401", "", status=401))
    assert not is_rate_limit(ApiFailure("HTTP_429", "", status=429))


def test_failures_module_is_re_exported_without_a_cycle() -> None:
    for name in wire.__all__:
        assert hasattr(wire, name), name
        if hasattr(failures, name):
            assert getattr(wire, name) is getattr(failures, name), name
    shared = set(failures.__all__) & set(wire.__all__)
    assert {"ApiFailure", "parse_failure", "failure_error", "parse_retry_after", "is_failure",
            "is_key_refusal", "is_rate_limit", "scrub", "finite_float"} <= shared  # fmt: skip
    # failures is the lower layer: importing it alone never imports wire.
    code = "import sys, adapters.momoai.failures; print('adapters.momoai.wire' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"


# ----- request bodies ---------------------------------------------------------------------------


def test_request_body() -> None:
    assert request_body("hi", temperature=0.7, max_tokens=100, stream=True) == {
        "prompt": "hi",
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 100,
    }
    assert request_body("hi", temperature=None, max_tokens=None, stream=False) == {
        "prompt": "hi",
        "stream": False,
    }


@pytest.mark.parametrize(
    ("given", "sent"),
    [(1.5, 1.0), (2, 1.0), (-0.3, 0.0), (0, 0.0), (1, 1.0), (0.25, 0.25), (math.nan, None),
     (math.inf, None), (True, None)],
)  # fmt: skip
def test_request_temperature(given: float, sent: float | None) -> None:
    body = request_body("p", temperature=given, max_tokens=None, stream=False)
    assert body.get("temperature") == sent


@pytest.mark.parametrize(
    ("given", "sent"),
    [(1, 1), (4096, 4096), (0, None), (-1, None), (True, None), (8.0, 8), (8.5, None)],
)
def test_request_max_tokens(given: int, sent: int | None) -> None:
    body = request_body("p", temperature=None, max_tokens=given, stream=False)
    assert body.get("max_tokens") == sent


def test_request_prompt_is_encodable() -> None:
    body = request_body("a\ud800b", temperature=None, max_tokens=None, stream=True)
    assert body["prompt"] == "a\ufffdb"
    json.dumps(body, ensure_ascii=False).encode()


# ----- value helpers ----------------------------------------------------------------------------


def test_value_helpers() -> None:
    assert [non_negative_int(v) for v in (5, 0, -1, True, 2.0, 2.5, "12", "1e3", "", None)] == [
        5, 0, None, None, 2, None, 12, None, None, None
    ]  # fmt: skip
    assert [finite_float(v) for v in (1, 2.5, "3.5", True, "x", math.nan, 10**400, None)] == [
        1.0, 2.5, 3.5, None, None, None, None, None
    ]  # fmt: skip
    assert scrub("plain") == "plain"
    assert scrub("中文") == "中文"
    # Two surrogates that make a pair become its character; lone ones become U+FFFD.
    assert scrub("\ud83d\ude00") == "😀"
    assert scrub("\ude00\ud83d") == "\ufffd\ufffd"
    assert scrub("😀") == "😀"
