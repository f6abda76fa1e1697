"""OneBot v11 responses, both ways, and the errors that become them.

As the implementation the bridge answers with `ok`/`failed`; a frame it cannot act on raises
`ProtocolError`, whose `response()` is the `failed` answer. As the application it reads an
implementation's answers with `parse_response`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.onebot.fields import Int, LooseStr
from adapters.onebot.message import json_type_name
from bridge.models import JSON


class RetCode(IntEnum):
    OK = 0
    ASYNC = 1
    BAD_PARAMS = 100  # HTTP-era code some frameworks still check for
    INVALID_DATA = 102
    OPERATION_FAILED = 103
    BAD_REQUEST = 1400
    UNAUTHORIZED = 1401
    FORBIDDEN = 1403
    NOT_FOUND = 1404


class _Absent:
    """Marks an `echo` the request did not carry (a JSON null is a real echo and goes back)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_ECHO"

    def __bool__(self) -> bool:
        return False


NO_ECHO: Final = _Absent()


class ProtocolError(Exception):
    """A frame the peer must get a `failed` response for; the connection stays open."""

    def __init__(self, retcode: int, message: str, *, echo: Any = NO_ECHO) -> None:
        super().__init__(f"{retcode}: {message}")
        self.retcode = int(retcode)
        self.message = message
        # Kept when the frame had one, so the caller's pending request is answered, not timed out.
        self.echo = echo

    def response(self) -> JSON:
        return failed(self.retcode, self.message, self.echo)


def ok(data: Any = None, echo: Any = NO_ECHO) -> JSON:
    return _response("ok", RetCode.OK, data, "", echo)


def failed(retcode: int, message: str, echo: Any = NO_ECHO) -> JSON:
    return _response("failed", retcode, None, message, echo)


def _response(status: str, retcode: int, data: Any, message: str, echo: Any) -> JSON:
    # `wording` is go-cqhttp's human-readable twin of `message`; frameworks show either.
    out: JSON = {
        "status": status,
        "retcode": int(retcode),
        "data": data,
        "message": message,
        "wording": message,
    }
    if echo is not NO_ECHO:
        out["echo"] = echo
    return out


class ActionResponse(BaseModel):
    """A response from a OneBot implementation (application role)."""

    model_config = ConfigDict(extra="allow")

    status: str
    retcode: Int = 0
    data: Any = None
    message: LooseStr = ""
    wording: LooseStr = ""
    echo: Any = None

    @property
    def has_echo(self) -> bool:
        return "echo" in self.model_fields_set

    # The implementation-role builders, reachable from here too; they return plain dicts.
    ok = staticmethod(ok)
    failed = staticmethod(failed)

    @property
    def is_ok(self) -> bool:
        return self.status in ("ok", "async") and self.retcode in (RetCode.OK, RetCode.ASYNC)

    @property
    def reason(self) -> str:
        return self.wording or self.message or f"retcode {self.retcode}"


def is_response_frame(obj: Any) -> bool:
    """On a Universal connection a frame is an event or a response; events carry post_type."""
    return isinstance(obj, Mapping) and "post_type" not in obj and "status" in obj


def parse_response(raw: str | bytes | Mapping[str, Any]) -> ActionResponse:
    obj = load_object(raw, "response")
    try:
        return ActionResponse.model_validate(obj)
    except ValidationError as e:
        raise ProtocolError(RetCode.BAD_REQUEST, describe_validation_error(e)) from None


def describe_validation_error(error: ValidationError) -> str:
    """`<field>: <why>` for each problem, joined by `; `."""
    parts = []
    for err in error.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "missing":
            why = "is required"
        elif isinstance(cause, Exception):
            why = str(cause)
        else:
            why = err["msg"]
        loc = ".".join(str(p) for p in err["loc"])
        # Model-level checks already name their field ("user_id: is required ...").
        parts.append(f"{loc}: {why}" if loc else why)
    return "; ".join(parts)


def load_object(raw: Mapping[str, Any] | str | bytes, what: str) -> Mapping[str, Any]:
    """`raw` as a JSON object; anything else is a ProtocolError naming `what` it should be."""
    if isinstance(raw, str | bytes | bytearray):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(RetCode.BAD_REQUEST, f"{what} is not valid JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"{what} must be a JSON object, not {json_type_name(raw)}"
        )
    return raw
