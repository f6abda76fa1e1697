"""How a JSON value's type is named in an error message, the same way on every edge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def json_type_name(value: Any) -> str:
    """ "an array", "null", ... (never the value itself: it may be long or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
