"""Sans-I/O core of the Socket.IO transport (the mio-chat web client since 2025-03).

The client authenticates with the Socket.IO auth object `{id, token, firstLogin}` and exchanges
frames as JSON strings in one event, `message`, both ways, in the hub's envelope. This module
turns the auth object and those strings into typed values and builds the frames only this
transport sends (the pushed login frame, the onebot ack without a protocol); every other frame is
the plain hub's own (`protocol`). No sockets, no awaits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from adapters.miochat import llm_frames
from adapters.miochat.envelope import (
    FrameError,
    RequestId,
    bad_json,
    envelope_of,
    login_token,
    login_user_id,
    safe_request_id,
)
from adapters.miochat.inbound import general_request, shortcut_request
from adapters.miochat.wire import WireError, dumps, loads
from bridge.errors import ErrorCode
from bridge.models import ModelGroup

EVENT = "message"
PATH = "/socket.io"
MAX_MESSAGE_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Auth:
    user_id: str | None  # None: the client has no id yet (a first login whose setup failed)
    token: str
    first_login: bool


def parse_auth(raw: Any) -> Auth:
    """The handshake's auth object; ValueError with the reason the client is shown."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("auth must be an object {id, token}")
    uid = raw.get("id")
    user_id = None if uid is None or uid == "" else login_user_id(uid)
    return Auth(user_id, login_token(raw.get("token")), raw.get("firstLogin") is True)


def providers(groups: Iterable[ModelGroup]) -> dict[str, list[dict[str, Any]]]:
    """The bridge's model groups as the client's `models`: one provider per owner (an
    OpenAI-compatible provider, MomoHub), each `[{owner, models}]`; empty groups left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        if g.models:
            out.setdefault(g.owner, []).append({"owner": g.owner, "models": list(g.models)})
    return out


def login_frame(
    request_id: RequestId,
    *,
    boot_id: str,
    is_admin: bool,
    groups: Iterable[ModelGroup],
    onebot_enabled: bool,
    user_id: str,
    pending_tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Pushed right after connect; the client is not ready to send until it has it.
    `id` is the id the bridge knows the connection by (the client reads none; a connection
    that came without one learns its generated id here)."""
    return {
        "protocol": "system",
        "type": "login",
        "request_id": safe_request_id(request_id),
        "code": 0,
        "message": "success",
        "data": {
            "bootId": boot_id,
            "is_admin": is_admin,
            "id": user_id,
            "models": providers(groups),
            "models_meta": {},
            "onebot_enabled": onebot_enabled,
            "pendingTasks": list(pending_tasks or []),
        },
    }


def models_updated(
    request_id: RequestId,
    *,
    groups: Iterable[ModelGroup],
    llm_providers: list[dict[str, Any]],
    default_model: dict[str, str],
    timestamp: int,
) -> dict[str, Any]:
    """The model list changed (a provider listed new models, a character came or went): the
    client replaces its `models` and its providers."""
    return {
        "protocol": "system",
        "type": "models_updated",
        "request_id": safe_request_id(request_id),
        "data": {
            "providers": llm_providers,
            "models": providers(groups),
            "models_meta": {},
            "default_model": default_model,
            "timestamp": timestamp,
        },
    }


def onebot_ack(request_id: RequestId, message_id: int) -> dict[str, Any]:
    """An onebot request's ack. No `protocol`: the client would take it for a push."""
    return {
        "request_id": safe_request_id(request_id),
        "code": 0,
        "message": "ok",
        "data": {"message_id": message_id},
    }


def decode(data: Any) -> str | bytes:
    """The `message` event's payload as frame text; FrameError when it is no frame at all."""
    if isinstance(data, str | bytes):
        return data
    if isinstance(data, dict):  # an object rather than its JSON text: take it all the same
        return dumps(data)
    raise FrameError(ErrorCode.BAD_FRAME, "the message event carries a frame as a JSON string")


def parse(data: Any) -> Any:
    """A typed request (see `protocol.RequestFrame`, `llm_frames.LlmRequest`) or the FrameError
    that answers it."""
    try:
        raw = decode(data)
        obj = loads(raw)
    except FrameError as e:
        return e
    except WireError as e:
        return bad_json(e)
    if isinstance(obj, dict) and obj.get("protocol") == llm_frames.PROTOCOL:
        try:
            envelope_of(obj)  # the request_id checks every frame passes
        except FrameError as e:
            return e
        return llm_frames.parse(obj)
    fast = shortcut_request(obj, logged_in=True)
    return fast if fast is not None else general_request(obj, logged_in=True)


def encode(frame: dict[str, Any]) -> str:
    return dumps(frame)
