"""The upstream AI sections of the configuration: MomoHub (and its sandbox), OpenAI-compatible
providers, MOMO AI agents. Part of the one model tree in bridge.config, which re-exports them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from bridge.config_types import HttpURL, OptionalHttpURL, Section

_Section = Section


class MomoHubConfig(_Section):
    enabled: bool = True
    base_url: OptionalHttpURL = ""
    email: str = ""
    password: str = ""
    access_token: str = ""
    refresh_token: str = ""
    default_character: str = ""
    list_public: bool = False
    connect_timeout: float = Field(10.0, gt=0)
    request_timeout: float = Field(30.0, gt=0)
    first_event_timeout: float = Field(60.0, gt=0)
    idle_timeout: float = Field(30.0, gt=0)
    max_retry_after: float = Field(30.0, ge=0)
    cache_ttl: float = Field(60.0, gt=0)


class SandboxConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    responder: Literal["echo", "openai"] = "echo"
    token_delay: float = Field(0.02, ge=0)
    heartbeat_interval: float = Field(5.0, gt=0)
    access_token_ttl: float = Field(3600.0, gt=0)
    refresh_token_ttl: float = Field(7 * 86400.0, gt=0)
    openai_provider: str = ""
    openai_model: str = ""
    database: str = ""
    generation_timeout: float = Field(300.0, gt=0)
    # Test-only control endpoints under /_sandbox/ (fault injection, token expiry); off by default.
    fault_injection: bool = False


class OpenAIProvider(_Section):
    name: str = Field(min_length=1)
    base_url: HttpURL
    api_key: str = ""
    models: list[str] = Field(default_factory=list)
    timeout: float = Field(60.0, gt=0)


class OpenAIConfig(_Section):
    providers: list[OpenAIProvider] = Field(default_factory=list)
    default_model: str = ""
    models_cache_ttl: float = Field(300.0, gt=0)
    # A `model:<model>` conversation's context: its newest turns since its last /reset, at
    # most this many characters (the newest message always goes).
    history_turns: int = Field(20, ge=1, le=1000)
    history_chars: int = Field(24_000, ge=1000, le=2_000_000)

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, v: list[OpenAIProvider]) -> list[OpenAIProvider]:
        names = [p.name for p in v]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"provider names must be unique, repeated: {sorted(dupes)}")
        return v


# A MOMO AI agent id (adapters.momoai.wire.AGENT_ID_RE).
_AGENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class MomoAIConfig(_Section):
    """``[momoai]``: MOMO AI agents, each served as the model ``momoai:<id>`` (and, with
    ``as_contacts``, as a contact the bridge keeps the conversation of)."""

    enabled: bool = False
    base_url: HttpURL = "https://api.momoai.pro/v1"
    # Set it from the environment (MOMOBRIDGE_MOMOAI__API_KEY), not in the file.
    api_key: str = ""
    # The account's tier paces requests on our side (free 10, basic 60, pro 300 a minute,
    # enterprise unpaced); `requests_per_minute` overrides it (0: unpaced).
    tier: Literal["free", "basic", "pro", "enterprise"] = "free"
    requests_per_minute: int | None = Field(None, ge=0, le=100_000)
    # A request waits at most this long for a paced slot (or a Retry-After) before it is
    # refused with RATE_LIMITED.
    max_wait: float = Field(20.0, ge=0, le=600)
    as_contacts: bool = False
    # Offer only these agent ids (empty: every agent the account lists, up to max_agents).
    agents: list[str] = Field(default_factory=list)
    max_agents: int = Field(200, ge=1, le=5000)
    agents_refresh: float = Field(300.0, ge=10)
    # False asks for whole answers (each arrives as one update).
    stream: bool = True
    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    connect_timeout: float = Field(10.0, gt=0)
    # A streamed answer: until its first piece, then between two pieces.
    first_event_timeout: float = Field(60.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    # A whole (non-streamed) answer: from the request until it has come (it is generated
    # before its headers are sent).
    answer_timeout: float = Field(300.0, gt=0)
    # An agent conversation's prompt: its newest turns since its last /reset, at most this
    # many characters (the newest message always goes).
    history_turns: int = Field(20, ge=1, le=1000)
    history_chars: int = Field(12_000, ge=500, le=2_000_000)

    @field_validator("agents")
    @classmethod
    def _agent_ids(cls, v: list[str]) -> list[str]:
        ids = [a.strip().removeprefix("momoai:") for a in v]
        bad = [a for a in ids if not _AGENT_ID.fullmatch(a)]
        if bad:
            raise ValueError(
                f"agent ids are 1-64 characters of A-Z a-z 0-9 . _ - (as in momoai:<id>), got {bad}"
            )
        return ids
