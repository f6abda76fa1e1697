"""The field types the configuration is made of: QQ numbers, URLs, listen addresses.

Each parses or refuses one value with a message naming what was wrong, so the section models in
bridge.config stay declarations.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

# QQ numbers are kept as canonical decimal strings (the hub shows them as contact ids; the OneBot
# side converts with int()). A number is positive and fits a signed 64-bit integer.
QQ_MAX = (1 << 63) - 1
_DIGITS = re.compile(r"[0-9]+")


def _qq_number(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"must be a QQ number (a positive integer), got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ValueError(f"must be a QQ number (a positive integer), got {value!r}")
    if not 1 <= number <= QQ_MAX:
        raise ValueError(f"must be a QQ number between 1 and {QQ_MAX}, got {value!r}")
    return str(number)


def _optional_qq_number(value: Any) -> str:
    if isinstance(value, str) and not value.strip():
        return ""
    return _qq_number(value)


QQNumber = Annotated[str, BeforeValidator(_qq_number)]
OptionalQQNumber = Annotated[str, BeforeValidator(_optional_qq_number)]


def _url_checker(schemes: tuple[str, ...], *, allow_empty: bool) -> AfterValidator:
    def check(value: str) -> str:
        if not value and allow_empty:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ValueError(f"not a valid URL ({e}): {value!r}") from None
        if parts.scheme.lower() not in schemes or not parts.hostname:
            wanted = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(
                f"must be a URL starting with {wanted} and naming a host, got {value!r}"
            )
        return value

    return AfterValidator(check)


HttpURL = Annotated[str, _url_checker(("http", "https"), allow_empty=False)]
OptionalHttpURL = Annotated[str, _url_checker(("http", "https"), allow_empty=True)]
WebSocketURL = Annotated[str, _url_checker(("ws", "wss"), allow_empty=False)]


def _loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Section(BaseModel):
    """A configuration table: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
