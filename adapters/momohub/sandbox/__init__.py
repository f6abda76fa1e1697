"""A MomoHub-compatible server for self-hosters and tests, quirks included.

It speaks the same REST + SSE dialect as the real MomoHub (see docs/spec `momohub.md`): the envelope,
millisecond token expiries, bare 401s, unescaped SSE data, 200 + `event: error` after a stream has
started, one message at a time per chat. Test-only controls (fault injection, token expiry, stats)
live under `/v1/_sandbox/` and exist only when `sandbox.fault_injection` is on.
"""

from adapters.momohub.sandbox.server import SandboxServer, create_app, run_sandbox

__all__ = ["SandboxServer", "create_app", "run_sandbox"]
