"""OneBot v11 action requests: the frame a framework sends and the typed parameters of each
action the bridge answers (implementation role); `ActionRequest.to_json` also serves the
application role, when the bridge calls an action itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters.onebot.events import Event, parse_event
from adapters.onebot.fields import ForwardId, ForwardNodes, Int, Message
from adapters.onebot.message import ForwardNode, json_type_name
from adapters.onebot.responses import (
    NO_ECHO,
    ProtocolError,
    RetCode,
    describe_validation_error,
    failed,
    ok,
)
from bridge.models import JSON, Segment

# ----- action requests ---------------------------------------------------------------------------


class ActionRequest(BaseModel):
    """`{"action", "params", "echo"}`. `has_echo` tells an absent echo from a JSON null."""

    model_config = ConfigDict(extra="ignore")

    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    echo: Any = None

    @property
    def has_echo(self) -> bool:
        return "echo" in self.model_fields_set

    @property
    def echo_or_absent(self) -> Any:
        return self.echo if self.has_echo else NO_ECHO

    @property
    def base_action(self) -> str:
        return base_action(self.action)

    def ok(self, data: Any = None) -> JSON:
        return ok(data, self.echo_or_absent)

    def failed(self, retcode: int, message: str) -> JSON:
        return failed(retcode, message, self.echo_or_absent)

    def to_json(self) -> JSON:
        """The frame to send when the bridge calls an action (application role)."""
        out: JSON = {"action": self.action, "params": dict(self.params)}
        if self.has_echo:
            out["echo"] = self.echo
        return out


def base_action(action: str) -> str:
    """The action without OneBot's `_async` / `_rate_limited` suffix."""
    for suffix in ("_async", "_rate_limited"):
        if action.endswith(suffix) and len(action) > len(suffix):
            return action[: -len(suffix)]
    return action


def parse_action(raw: str | bytes | Mapping[str, Any]) -> ActionRequest:
    if isinstance(raw, str | bytes | bytearray):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(RetCode.BAD_REQUEST, f"request is not valid JSON: {e}") from None
    else:
        obj = raw
    if not isinstance(obj, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"request must be a JSON object, not {json_type_name(obj)}"
        )
    echo = obj["echo"] if "echo" in obj else NO_ECHO
    if "action" not in obj:
        raise ProtocolError(RetCode.BAD_REQUEST, "action: is required", echo=echo)
    action = obj["action"]
    if not isinstance(action, str) or not action:
        raise ProtocolError(RetCode.BAD_REQUEST, "action: must be a non-empty string", echo=echo)
    params = obj.get("params")
    if params is None:  # absent and null both mean "no parameters"
        params = {}
    if not isinstance(params, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST,
            f"params: must be an object, not {json_type_name(params)}",
            echo=echo,
        )
    fields: JSON = {"action": action, "params": dict(params)}
    if echo is not NO_ECHO:
        fields["echo"] = echo
    return ActionRequest.model_validate(fields)


# ----- action parameters (implementation role) -------------------------------------------------


_BOOL: Final = TypeAdapter(bool)


class ActionParams(BaseModel):
    """Base of the typed parameter models `validate_params` returns."""

    # Frameworks send extra, implementation-specific parameters; they are not errors.
    model_config = ConfigDict(extra="ignore")


class _SendParams(ActionParams):
    message: Message
    auto_escape: bool = False

    @model_validator(mode="before")
    @classmethod
    def _auto_escape(cls, data: Any) -> Any:
        # auto_escape turns a string message into plain text; it must act before `message` is
        # parsed as CQ code, so it is resolved here (an invalid value is reported by its field).
        if isinstance(data, Mapping) and isinstance(data.get("message"), str):
            try:
                plain = _BOOL.validate_python(data.get("auto_escape", False))
            except ValidationError:
                return data
            if plain:
                return {**data, "message": [{"type": "text", "data": {"text": data["message"]}}]}
        return data

    @field_validator("message")
    @classmethod
    def _not_empty(cls, value: list[Segment]) -> list[Segment]:
        if not value:
            raise ValueError("is empty")
        return value


def _resolve_target(params: Any) -> None:
    # OneBot: without message_type, the presence of group_id decides.
    if params.message_type is None:
        params.message_type = "group" if params.group_id is not None else "private"
    if params.message_type == "group" and params.group_id is None:
        raise ValueError("group_id: is required for a group message")
    if params.message_type == "private" and params.user_id is None:
        raise ValueError("user_id: is required for a private message")


class SendPrivateMsgParams(_SendParams):
    user_id: Int


class SendGroupMsgParams(_SendParams):
    group_id: Int


class SendMsgParams(_SendParams):
    message_type: Literal["private", "group"] | None = None
    user_id: Int | None = None
    group_id: Int | None = None

    @model_validator(mode="after")
    def _target(self) -> SendMsgParams:
        _resolve_target(self)
        return self


class DeleteMsgParams(ActionParams):
    message_id: Int


class GetMsgParams(ActionParams):
    message_id: Int


class GetForwardMsgParams(ActionParams):
    id: ForwardId | None = None
    message_id: ForwardId | None = None

    @model_validator(mode="after")
    def _one_id(self) -> GetForwardMsgParams:
        if self.id is None and self.message_id is None:
            raise ValueError("id: is required (or message_id)")
        return self

    @property
    def forward_id(self) -> str:
        return self.id if self.id is not None else str(self.message_id)


class _ForwardParams(ActionParams):
    messages: ForwardNodes

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ForwardNode]) -> list[ForwardNode]:
        if not value:
            raise ValueError("is empty")
        return value


class SendPrivateForwardMsgParams(_ForwardParams):
    user_id: Int


class SendGroupForwardMsgParams(_ForwardParams):
    group_id: Int


class SendForwardMsgParams(_ForwardParams):
    message_type: Literal["private", "group"] | None = None
    user_id: Int | None = None
    group_id: Int | None = None

    @model_validator(mode="after")
    def _target(self) -> SendForwardMsgParams:
        _resolve_target(self)
        return self


class GetStrangerInfoParams(ActionParams):
    user_id: Int
    no_cache: bool = False


class GetGroupInfoParams(ActionParams):
    group_id: Int
    no_cache: bool = False


class GetGroupMemberInfoParams(ActionParams):
    group_id: Int
    user_id: Int
    no_cache: bool = False


class GetGroupMemberListParams(ActionParams):
    group_id: Int
    no_cache: bool = False


class HandleQuickOperationParams(ActionParams):
    context: dict[str, Any]
    operation: dict[str, Any]

    @property
    def event(self) -> Event:
        """The event the quick operation answers (the framework echoes it back as `context`)."""
        return parse_event(self.context)


PARAM_MODELS: Final[Mapping[str, type[ActionParams]]] = {
    "send_private_msg": SendPrivateMsgParams,
    "send_group_msg": SendGroupMsgParams,
    "send_msg": SendMsgParams,
    "delete_msg": DeleteMsgParams,
    "get_msg": GetMsgParams,
    "get_forward_msg": GetForwardMsgParams,
    "send_private_forward_msg": SendPrivateForwardMsgParams,
    "send_group_forward_msg": SendGroupForwardMsgParams,
    "send_forward_msg": SendForwardMsgParams,
    "get_stranger_info": GetStrangerInfoParams,
    "get_group_info": GetGroupInfoParams,
    "get_group_member_info": GetGroupMemberInfoParams,
    "get_group_member_list": GetGroupMemberListParams,
    ".handle_quick_operation": HandleQuickOperationParams,
}


def validate_params(action: str, params: Any) -> ActionParams | None:
    """Typed parameters for `action`, or None when no model exists for it.

    Raises ProtocolError(1400, "<field>: <why>") when the parameters do not fit.
    """
    model = PARAM_MODELS.get(base_action(action))
    if model is None:
        return None
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ProtocolError(
            RetCode.BAD_REQUEST, f"params: must be an object, not {json_type_name(params)}"
        )
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise ProtocolError(RetCode.BAD_REQUEST, describe_validation_error(e)) from None
