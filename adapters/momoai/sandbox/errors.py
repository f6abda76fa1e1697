"""MOMO AI's error envelope and the documented error codes, with Chinese messages as the docs give them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON = dict[str, Any]

# Documented codes -> (HTTP status, message). The docs give no statuses; these are the usual ones.
ERRORS: dict[str, tuple[int, str]] = {
    "INVALID_API_KEY": (401, "API 密钥无效"),
    "INSUFFICIENT_BALANCE": (402, "余额不足"),
    "RATE_LIMIT": (429, "请求过于频繁,请稍后再试"),
    "AGENT_NOT_FOUND": (404, "智能体不存在"),
    "INVALID_PARAMETERS": (400, "参数无效"),
}
# Not documented, but a server needs something for a failure inside a stream or an unknown path.
EXTRA_MESSAGES = {"INTERNAL_ERROR": "服务器内部错误", "NOT_FOUND": "接口不存在"}


def dumps(value: object) -> str:
    # Raw UTF-8 (not \\u escapes) as a Node server sends it, so clients must decode bytes properly.
    return json.dumps(value, ensure_ascii=False)


def yuan(amount: float) -> str:
    """0.5 -> "0.5", 1.2 -> "1.2", 0.000015 -> "0.000015" (never exponent notation)."""
    text = f"{round(amount, 6):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def error_body(code: str, message: str | None = None, details: str = "") -> JSON:
    if message is None:
        message = ERRORS[code][1] if code in ERRORS else EXTRA_MESSAGES.get(code, code)
    return {"success": False, "error": {"code": code, "message": message, "details": details}}


class ApiError(Exception):
    """Answered with the error envelope by the routes (raised anywhere below a handler)."""

    def __init__(
        self,
        code: str,
        details: str = "",
        *,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.status = status if status is not None else ERRORS.get(code, (500, ""))[0]
        self.body = error_body(code, message, details)
        self.headers = headers or {}
        super().__init__(f"{code}: {details}")

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status, headers=self.headers)


def json_response(
    body: JSON, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def ok(data: JSON) -> web.Response:
    return json_response({"success": True, "data": data})


def invalid_api_key() -> ApiError:
    return ApiError(
        "INVALID_API_KEY", "请在 Authorization 请求头中提供有效的 API 密钥: Bearer <API_KEY>"
    )


def agent_not_found(agent_ref: str) -> ApiError:
    return ApiError(
        "AGENT_NOT_FOUND",
        f"找不到 ID 为 {agent_ref} 的智能体",
        message=f"智能体 {agent_ref} 不存在",
    )


def invalid_parameter(field: str, problem: str) -> ApiError:
    return ApiError("INVALID_PARAMETERS", f"{field}: {problem}")


def insufficient_balance(balance: float, required: float) -> ApiError:
    return ApiError(
        "INSUFFICIENT_BALANCE", f"当前余额: {yuan(balance)} 元,本次请求需要: {yuan(required)} 元"
    )


def rate_limited(retry_after: float, details: str) -> ApiError:
    seconds = f"{retry_after:g}"
    return ApiError("RATE_LIMIT", details, headers={"Retry-After": seconds})
