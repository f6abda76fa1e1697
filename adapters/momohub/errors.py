"""The errors a MomoHub call can end in, as the bridge reports them."""

from __future__ import annotations

from bridge.errors import BridgeError, ErrorCode

__all__ = ["MomoHubAuthError", "MomoHubError"]


class MomoHubError(BridgeError):
    """A MomoHub failure as the bridge reports it. ``status`` is the HTTP status (None for transport
    failures); ``server_message`` is MomoHub's own text, kept so wrappers don't repeat prefixes."""

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.UPSTREAM_ERROR,
        status: int | None = None,
        server_code: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(code, reason)
        self.status = status
        self.server_code = server_code
        self.server_message = server_message if server_message is not None else reason


class MomoHubAuthError(MomoHubError):
    """MomoHub refused our credentials even after a refresh and a fresh sign-in."""

    def __init__(self, server_message: str, *, status: int | None = None) -> None:
        super().__init__(
            f"authentication failed: {server_message}",
            status=status,
            server_message=server_message,
        )
