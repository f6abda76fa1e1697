"""A MOMO AI agents API sandbox: real HTTP on loopback, for tests and offline demos.

It imitates `https://api.momoai.pro/v1` (documented only in Chinese) under `<base_url>` =
`http://HOST:PORT/v1`: `GET /agents?page=&page_size=`, `POST /agents/{agent_id}` (plain JSON or a
`data: {"delta": ...}` stream), `GET /account/balance`, all behind `Authorization: Bearer <key>`,
answering `{"success": true, "data": ...}` or `{"success": false, "error": {code, message, details}}`.

Choices the docs leave open, made here:
- HTTP statuses: INVALID_API_KEY 401, INSUFFICIENT_BALANCE 402, RATE_LIMIT 429 (+ Retry-After),
  AGENT_NOT_FOUND 404, INVALID_PARAMETERS 400; an unknown path under /v1 is 404 NOT_FOUND (after the
  key check, so every /v1 path without a valid key is 401).
- Rate limits count POST /agents/{id} calls only (each with a valid key, whatever its outcome, except
  the refused ones); the GETs are free, so a client may list agents or poll its balance at will.
  The window slides over 60 s per key: free 10, basic 60, pro 300, enterprise unlimited.
- Checks run in the order key -> rate limit -> agent -> body -> balance. Before answering, the
  full reply's cost is held from the balance (402 if it does not fit); the unspent part comes back
  when the call ends (see `streaming` for what a call cut short pays).
- Optional body fields sent as null count as absent; unknown fields are ignored.
- Only the latest 1000 calls are kept (`MomoAISandbox.requests`), so a long demo stays small;
  `request_count` counts them all.

Module map: `agents` (demo agents, the deterministic reply and its cost), `faults` (injection),
`state` (shared state), `routes` (the API), `streaming` (the answers), `controls` (`/_sandbox/`),
`server` (MomoAISandbox, run_standalone).
"""

from adapters.momoai.sandbox.agents import DEFAULT_AGENTS, Agent
from adapters.momoai.sandbox.faults import Fault, Style
from adapters.momoai.sandbox.server import MomoAISandbox, run_standalone
from adapters.momoai.sandbox.state import Recorded

__all__ = [
    "DEFAULT_AGENTS",
    "Agent",
    "Fault",
    "MomoAISandbox",
    "Recorded",
    "Style",
    "run_standalone",
]
