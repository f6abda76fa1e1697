"""One text frame in: `parse_request`, with shortcuts for the frames a hub sees all the time.

The general path (`envelope.envelope_of`, then `frames.typed_request`: a pydantic union with
Python validators) costs several times more than the rest of answering a heartbeat. A shortcut
builds the same request model directly from the parsed frame, but only when every field it
looks at is plainly valid: anything else, and every error, goes the general path, so refusals
keep their codes and reasons. `tests/miochat/test_inbound.py` holds each shortcut to the
general path's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from adapters.miochat.envelope import (
    AbortData,
    AckData,
    CompletionsData,
    FrameError,
    HeartbeatData,
    LoginData,
    bad_json,
    contact_id,
    conversation_id_of,
    envelope_of,
    heartbeat_timestamp,
    login_token,
    login_user_id,
    safe_request_id,
)
from adapters.miochat.frames import (
    REQUEST_MODELS,
    AbortRequest,
    AckRequest,
    CompletionsRequest,
    DeleteMessageRequest,
    ForwardRequest,
    HeartbeatRequest,
    LoginRequest,
    MessageRequest,
    ModelsRequest,
    RequestFrame,
    typed_request,
)
from adapters.miochat.onebot_data import delete_message_of, forward_of, send_message_of
from adapters.miochat.wire import INT64_MAX, WireError, loads

_new, _set = object.__new__, object.__setattr__
_TAGS: dict[type[BaseModel], tuple[str, str]] = {cls: key for key, cls in REQUEST_MODELS.items()}


def _model(cls: type[BaseModel], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An instance of `cls` holding already valid `values` (every field, in declaration order).

    What `model_construct` does, without its per-field alias and default lookups, which cost
    more than validating a heartbeat. None of these models has private attributes, extras or a
    post-init hook; the tests compare every attribute with the validated model's.
    """
    m = _new(cls)
    _set(m, "__dict__", values)
    _set(m, "__pydantic_fields_set__", fields_set)
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def _frame(cls: type[BaseModel], rid: Any, obj: dict[str, Any], data: Any) -> Any:
    protocol, ftype = _TAGS[cls]
    contact = obj.get("id")
    if contact is not None:
        contact = contact_id(contact)
    # `typed_request` always passes all five fields, so all five count as set.
    return _model(
        cls,
        {
            "request_id": rid,
            "contact": contact,
            "protocol": protocol,
            "type": ftype,
            "data": data,
        },
        {"request_id", "contact", "protocol", "type", "data"},
    )


# Each shortcut returns the request model, or None to leave the frame to the general path.
Shortcut = Callable[[Any, dict[str, Any]], Any]


def _heartbeat(rid: Any, obj: dict[str, Any]) -> Any:
    data = obj.get("data")
    if isinstance(data, dict) and "timestamp" in data:
        try:
            ts = heartbeat_timestamp(data["timestamp"])
        except ValueError:
            return None
        hb = _model(HeartbeatData, {"timestamp": ts}, {"timestamp"})
    else:  # no data, or not an object: no timestamp (HeartbeatRequest is lenient about it)
        hb = _model(HeartbeatData, {"timestamp": None}, set())
    return _frame(HeartbeatRequest, rid, obj, hb)


def _ack(rid: Any, obj: dict[str, Any]) -> Any:
    data = obj.get("data")
    if not isinstance(data, dict):
        return None
    seq = data.get("seq")
    if type(seq) is not int or not 0 <= seq <= INT64_MAX:
        return None
    return _frame(AckRequest, rid, obj, _model(AckData, {"seq": seq}, {"seq"}))


def _login(rid: Any, obj: dict[str, Any]) -> Any:
    data = obj.get("data")
    # By field name (populate_by_name) is rare: left to pydantic's alias rules.
    if not isinstance(data, dict) or "user_id" in data or "token" in data:
        return None
    if "mio-chat-id" not in data:
        return None
    try:
        values = {"user_id": login_user_id(data["mio-chat-id"]), "token": ""}
        fields_set = {"user_id"}
        if "mio-chat-token" in data:
            values["token"] = login_token(data["mio-chat-token"])
            fields_set.add("token")
    except ValueError:
        return None
    return _frame(LoginRequest, rid, obj, _model(LoginData, values, fields_set))


def _abort(rid: Any, obj: dict[str, Any]) -> Any:
    data = obj.get("data")
    if not isinstance(data, dict):
        return None
    target = data.get("request_id")
    if type(target) not in (str, int, float) or safe_request_id(target) is None:
        return None
    abort = _model(AbortData, {"request_id": target}, {"request_id"})
    return _frame(AbortRequest, rid, obj, abort)


def _models(rid: Any, obj: dict[str, Any]) -> Any:
    return _frame(ModelsRequest, rid, obj, obj.get("data"))


# Past 2**53 an int's conversion to float rounds; pydantic's rounding is left to pydantic.
_EXACT_FLOAT = 2**53


def _float(v: Any) -> tuple[bool, Any]:
    if v is None or type(v) is float:
        return True, v
    if type(v) is int and -_EXACT_FLOAT <= v <= _EXACT_FLOAT:
        return True, float(v)
    return False, None


def _dicts(v: Any) -> bool:
    return type(v) is list and all(type(item) is dict for item in v)


_FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_COMPLETION_FIELDS = frozenset(CompletionsData.model_fields)


def _completions(rid: Any, obj: dict[str, Any]) -> Any:
    data = obj.get("data")
    messages = data.get("messages") if isinstance(data, dict) else None
    if not messages or not _dicts(messages):
        return None
    values: dict[str, Any] = {"model": data.get("model", ""), "messages": data["messages"]}
    if type(values["model"]) is not str:
        return None
    for name in _FLOATS:
        ok, values[name] = _float(data.get(name))
        if not ok:
            return None
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and type(max_tokens) is not int:
        return None
    values["max_tokens"] = max_tokens
    values["stream"] = data.get("stream", True)
    if type(values["stream"]) is not bool:
        return None
    tools = data.get("tools")
    if tools is not None and not _dicts(tools):
        return None
    values["tools"] = tools
    try:
        values["conversation_id"] = conversation_id_of(data.get("conversation_id"))
    except ValueError:
        return None
    completion = _model(CompletionsData, values, data.keys() & _COMPLETION_FIELDS)
    return _frame(CompletionsRequest, rid, obj, completion)


def _parsed_data(cls: type[BaseModel], parse: Callable[[Any, str | None], Any]) -> Shortcut:
    """A shortcut for the onebot frames, whose data pydantic only hands to a plain parser."""

    def shortcut(rid: Any, obj: dict[str, Any]) -> Any:
        try:
            data = parse(obj.get("data"), contact_id(obj.get("id")))
        except Exception:  # the general path runs the parser again and reports as it always has
            return None
        return _frame(cls, rid, obj, data)

    return shortcut


SHORTCUTS: dict[tuple[str, str], Shortcut] = {
    ("system", "heartbeat"): _heartbeat,
    ("system", "ack"): _ack,
    ("system", "login"): _login,
    ("onebot", "message"): _parsed_data(MessageRequest, send_message_of),
    ("onebot", "del_message"): _parsed_data(DeleteMessageRequest, delete_message_of),
    ("onebot", "forward_msg"): _parsed_data(ForwardRequest, forward_of),
    ("openai", "models"): _models,
    ("openai", "completions"): _completions,
    ("openai", "abort"): _abort,
}


def shortcut_request(obj: Any, *, logged_in: bool = True) -> RequestFrame | None:
    """The request model of a frame parsed by `wire.loads` (so it holds no value that JSON
    cannot carry) when a shortcut vouches for it, else None."""
    if type(obj) is not dict:
        return None
    protocol, ftype = obj.get("protocol"), obj.get("type")
    if type(protocol) is not str or type(ftype) is not str:
        return None
    shortcut = SHORTCUTS.get((protocol, ftype))
    if shortcut is None or (not logged_in and ftype != "login"):
        return None
    rid = obj.get("request_id")
    if safe_request_id(rid) is None:
        return None
    return shortcut(rid, obj)


def general_request(obj: Any, *, logged_in: bool = True) -> RequestFrame | FrameError:
    """The request model of a frame parsed by `wire.loads`, or its `FrameError`, by the
    general path alone (envelope, then the pydantic union)."""
    try:
        req = envelope_of(obj)
    except FrameError as e:
        return e
    return typed_request(req, logged_in=logged_in, strict_wire=True)


def parse_request(raw: str | bytes, *, logged_in: bool = True) -> RequestFrame | FrameError:
    """One text frame → its typed request model, or the `FrameError` to answer it with.

    Never raises for any input. BAD_FRAME errors (from `parse_frame`) carry request_id None;
    the others are described at `frames.typed_request`.
    """
    try:
        obj = loads(raw)
    except WireError as e:
        return bad_json(e)
    fast = shortcut_request(obj, logged_in=logged_in)
    if fast is not None:
        return fast
    return general_request(obj, logged_in=logged_in)
