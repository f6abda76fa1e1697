"""Machine-readable error codes shared by every edge, and the exception that carries them."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_FRAME = "BAD_FRAME"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    LOGIN_FAILED = "LOGIN_FAILED"
    FORBIDDEN = "FORBIDDEN"
    UNKNOWN_PROTOCOL = "UNKNOWN_PROTOCOL"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    INVALID_DATA = "INVALID_DATA"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    BUSY = "BUSY"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class BridgeError(Exception):
    """An error a client should see: a code from the contract plus a human reason."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class StartupRefused(Exception):
    """The bridge cannot start as configured (a cluster's Redis out of reach...): one line for
    the operator, no traceback."""
