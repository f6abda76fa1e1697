"""The field types OneBot v11 models share: numbers and strings as loosely as peers send them.

Implementations disagree on the wire: ids arrive as numbers or numeric strings, times in seconds
or milliseconds, strings as null or numbers, messages as CQ code or segments. Each annotated type
here accepts all of a field's forms in one place, so the event, action and response models that
use them need no per-model coercion.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, PlainValidator

from adapters.onebot.message import (
    ForwardNode,
    normalize_message,
    parse_forward_nodes,
    segments_to_json,
)
from bridge.models import Segment

_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
# An epoch above this in seconds is in the year 5138: the peer sent milliseconds.
_MS_THRESHOLD: Final = 100_000_000_000
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1


def _coerce_int(value: Any) -> int:
    # bool is an int in Python but never an id on the wire; floats only when integral
    # (some JSON encoders write 123.0).
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    raise ValueError("must be an integer or a numeric string")


def _coerce_time(value: Any) -> int:
    if isinstance(value, float) and not isinstance(value, bool):
        value = int(value)
    seconds = _coerce_int(value)
    return seconds // 1000 if seconds > _MS_THRESHOLD else seconds


def _coerce_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be a string")


def _coerce_forward_id(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be a forward id (string or integer)")


Int = Annotated[int, BeforeValidator(_coerce_int)]
EpochSeconds = Annotated[int, BeforeValidator(_coerce_time)]
LooseStr = Annotated[str, BeforeValidator(_coerce_str)]
ForwardId = Annotated[str, BeforeValidator(_coerce_forward_id)]
Message = Annotated[
    list[Segment],
    PlainValidator(normalize_message),
    PlainSerializer(segments_to_json, return_type=list),
]
ForwardNodes = Annotated[list[ForwardNode], PlainValidator(parse_forward_nodes)]
