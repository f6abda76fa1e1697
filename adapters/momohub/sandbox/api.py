"""MomoHub's HTTP conventions: the envelope, error codes, paging and request validation."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiohttp import web

from adapters.momohub.sandbox.entities import CONTENT_TYPES, JSON, PART_FIELDS

_dumps = partial(json.dumps, ensure_ascii=False)

CODE_FOR_STATUS = {
    400: "BAD_REQUEST",
    401: "AUTHENTICATION_FAILED",
    403: "AUTHORIZATION_FAILED",
    404: "NOT_FOUND",
    405: "BAD_REQUEST",
    409: "CONFLICT",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    429: "HIT_LIMIT",
}
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


class ApiError(Exception):
    """A failure answered before any body is streamed: a 4xx/5xx, enveloped unless `bare`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        errors: dict[str, str] | None = None,
        bare: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or code_for(status)
        self.errors = errors
        self.bare = bare
        self.headers = headers or {}


def code_for(status: int) -> str:
    return CODE_FOR_STATUS.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "BAD_REQUEST")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(
    data: Any = None,
    *,
    success: bool = True,
    code: str | None = None,
    message: str = "OK",
    errors: dict[str, str] | None = None,
) -> JSON:
    return {
        "success": success,
        "code": code,
        "message": message,
        "data": data,
        "errors": errors,
        "timestamp": now_iso(),
    }


def ok(data: Any, status: int = 200, message: str = "OK") -> web.Response:
    return web.json_response(envelope(data, message=message), status=status, dumps=_dumps)


def raw_json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def no_content() -> web.Response:
    return web.Response(status=204)


def error_response(err: ApiError) -> web.Response:
    if err.bare:
        # Some real server paths (its auth filter) answer without the envelope; clients must cope.
        return web.Response(
            status=err.status, text=err.message, content_type="text/plain", headers=err.headers
        )
    body = envelope(None, success=False, code=err.code, message=err.message, errors=err.errors)
    return web.json_response(body, status=err.status, headers=err.headers, dumps=_dumps)


def validation_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "request validation failed", code="VALIDATION_ERROR", errors=errors)


def parse_paging(request: web.Request) -> tuple[int, int]:
    errors: dict[str, str] = {}
    values: dict[str, int] = {}
    for name, default, low, high in (
        ("page", 1, 1, None),
        ("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    ):
        raw = request.query.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        try:
            value = int(raw)
        except ValueError:
            errors[name] = f"{name} must be an integer"
            continue
        if value < low or (high is not None and value > high):
            errors[name] = f"{name} must be >= {low}" + (f" and <= {high}" if high else "")
            continue
        values[name] = value
    if errors:
        raise validation_error(errors)
    return values["page"], values["limit"]


def paged(items: Sequence[JSON], page: int, limit: int) -> JSON:
    total = len(items)
    total_pages = math.ceil(total / limit)
    start = (page - 1) * limit
    return {
        "items": list(items[start : start + limit]),
        "total": total,
        "page": page,
        "limit": limit,
        "totalPages": total_pages,
        "hasNext": page < total_pages,
        "hasPrevious": page > 1,
    }


def parse_uuid(request: web.Request, key: str) -> str:
    raw = request.match_info[key]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise validation_error({key: "must be a UUID"}) from None


async def read_object(request: web.Request) -> JSON:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON", code="BAD_REQUEST_BODY") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="BAD_REQUEST_BODY")
    return body


class Fields:
    """Collects field errors so one response can name every bad field, like the real server."""

    def __init__(self, body: JSON) -> None:
        self.body = body
        self.errors: dict[str, str] = {}

    def string(self, key: str, *, required: bool = False, max_len: int = 10_000) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                self.errors[key] = "must not be blank"
            return None
        if not isinstance(value, str):
            self.errors[key] = "must be a string"
            return None
        if required and not value.strip():
            self.errors[key] = "must not be blank"
        elif len(value) > max_len:
            self.errors[key] = f"must be at most {max_len} characters"
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, bool):
            self.errors[key] = "must be a boolean"
            return None
        return value

    def number(
        self, key: str, low: float, high: float | None, *, integer: bool = False
    ) -> float | int | None:
        value = self.body.get(key)
        if value is None:
            return None
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.errors[key] = "must be an integer" if integer else "must be a number"
            return None
        if value < low or (high is not None and value > high):
            self.errors[key] = f"must be between {low} and {high}" if high else f"must be >= {low}"
            return None
        return value

    def uuid(self, key: str) -> str | None:
        value = self.string(key, required=True)
        if value is None or key in self.errors:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            self.errors[key] = "must be a UUID"
            return None

    def content(self, key: str = "content") -> list[JSON]:
        value = self.body.get(key)
        if not isinstance(value, list) or not value:
            self.errors[key] = "must be a non-empty array of content parts"
            return []
        parts: list[JSON] = []
        for i, part in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(part, dict):
                self.errors[where] = "must be an object"
                continue
            kind = part.get("type")
            if kind not in CONTENT_TYPES:
                self.errors[f"{where}.type"] = "must be one of " + ", ".join(sorted(CONTENT_TYPES))
                continue
            if kind in ("text", "code") and not isinstance(part.get("content"), str):
                self.errors[f"{where}.content"] = "must be a string"
                continue
            parts.append(
                {"type": kind} | {f: part[f] for f in PART_FIELDS if part.get(f) is not None}
            )
        return parts

    def check(self) -> None:
        if self.errors:
            raise validation_error(self.errors)
