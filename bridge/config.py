"""One pydantic model tree for all configuration, loaded from TOML with env-var overrides.

Env vars: ``MOMOBRIDGE_<SECTION>__<KEY>`` (e.g. ``MOMOBRIDGE_AUTH__ADMIN_CODE``) override any scalar key,
so secrets never have to live in the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MOMOBRIDGE_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3080, ge=0, le=65535)
    public_url: str = ""
    max_frame_bytes: int = Field(1 << 20, ge=1024)
    idle_timeout: float = Field(90.0, gt=0)
    compression: bool = False
    max_connections: int = Field(10000, ge=1)
    title: str = "MomoBridge"


class AuthConfig(_Section):
    admin_code: str = ""
    user_code: str = ""
    admin_qq: str = "10001"
    bot_qq: str = "10000"
    login_timeout: float = Field(10.0, gt=0)


class StorageConfig(_Section):
    path: str = "data/momobridge.db"


class LimitsConfig(_Section):
    streams_per_user: int = Field(4, ge=1)
    outbox_per_user: int = Field(1000, ge=1)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MomoHubConfig(_Section):
    enabled: bool = True
    base_url: str = ""
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
    name: str
    base_url: str
    api_key: str = ""
    models: list[str] = Field(default_factory=list)
    timeout: float = Field(60.0, gt=0)


class OpenAIConfig(_Section):
    providers: list[OpenAIProvider] = Field(default_factory=list)
    default_model: str = ""
    models_cache_ttl: float = Field(300.0, gt=0)

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, v: list[OpenAIProvider]) -> list[OpenAIProvider]:
        names = [p.name for p in v]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"provider names must be unique, repeated: {sorted(dupes)}")
        return v


class FrameworkLink(_Section):
    url: str
    access_token: str = ""
    self_id: str = ""
    reconnect_interval: float = Field(1.0, gt=0)
    max_reconnect_interval: float = Field(60.0, gt=0)
    heartbeat_interval: float = Field(30.0, gt=0)
    action_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)


class OneBotConfig(_Section):
    frameworks: list[FrameworkLink] = Field(default_factory=list)
    user_message_type: Literal["private", "group"] = "private"


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    momohub: MomoHubConfig = Field(default_factory=MomoHubConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    onebot: OneBotConfig = Field(default_factory=OneBotConfig)


class ConfigError(Exception):
    """A config problem, phrased so a person can fix the file: names the key and why."""


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> None:
    """Apply MOMOBRIDGE_A__B__C=value; a numeric part indexes a list (providers, frameworks)."""
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node: Any = raw
        for part in path[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{name}: no list entry {part} to override")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"{name}: {part} is not a section")
        if isinstance(node, dict):
            node[path[-1]] = value
        else:
            raise ConfigError(f"{name}: cannot set {path[-1]} here")


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{key}: {e['msg']}")
    return "; ".join(lines)


def load_config(
    path: str | Path | None, environ: dict[str, str] | None = None, *, must_exist: bool = False
) -> tuple[Config, bool]:
    """Load config from ``path`` (TOML) plus env overrides.

    Returns the config and whether the file existed. A missing file means built-in defaults
    unless ``must_exist``.
    """
    raw: dict[str, Any] = {}
    found = False
    if path is not None:
        p = Path(path)
        if p.is_file():
            found = True
            try:
                raw = tomllib.loads(p.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{p}: not valid TOML: {e}") from e
            except UnicodeDecodeError as e:
                raise ConfigError(f"{p}: not UTF-8 text: {e}") from e
        elif must_exist:
            raise ConfigError(f"{p}: no such file")
    _apply_env(raw, dict(os.environ if environ is None else environ))
    try:
        return Config.model_validate(raw), found
    except ValidationError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{_describe(e)}") from e
