"""One pydantic model tree for all configuration, loaded from TOML with env-var overrides.

Env vars: ``MOMOBRIDGE_<SECTION>__<KEY>`` (e.g. ``MOMOBRIDGE_AUTH__ADMIN_CODE``) override any scalar key,
so secrets never have to live in the file.

All validation, cross-field rules included, lives in the models (``Config``'s model validator), so
``momobridge serve`` and ``momobridge check-config`` cannot disagree about a file.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from bridge.config_types import (
    OptionalHttpURL,
    OptionalQQNumber,
    QQNumber,
    Section,
    WebSocketURL,
    _loopback,
)
from bridge.config_upstreams import (
    MomoAIConfig,
    MomoHubConfig,
    OpenAIConfig,
    SandboxConfig,
)
from bridge.config_upstreams import OpenAIProvider as OpenAIProvider  # re-exported

ENV_PREFIX = "MOMOBRIDGE_"


_Section = Section


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3080, ge=0, le=65535)
    public_url: OptionalHttpURL = ""
    max_frame_bytes: int = Field(1 << 20, ge=1024)
    idle_timeout: float = Field(90.0, gt=0)
    compression: bool = False
    max_connections: int = Field(10000, ge=1)
    title: str = "MomoBridge"
    send_timeout: float = Field(10.0, gt=0)
    max_send_queue: int = Field(8 << 20, ge=64 << 10)


class AuthConfig(_Section):
    admin_code: str = ""
    user_code: str = ""
    admin_qq: QQNumber = "10001"
    bot_qq: QQNumber = "10000"
    login_timeout: float = Field(10.0, gt=0)


class StorageConfig(_Section):
    """``[storage]``: ``path`` is the SQLite database and the data folder beside it (uploads, the
    admin code); ``url`` may name another database: ``postgresql://user:pass@host/db`` (several
    bridges may share it) or ``sqlite:///path/to/file.db``."""

    path: str = "data/momobridge.db"
    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError(
                "must be postgresql://user:password@host:port/database or sqlite:///path, "
                f"got {v.split('@')[-1]!r}"
            )
        return v

    @property
    def database(self) -> str:
        """Where the database is: a PostgreSQL URL, or a SQLite file path."""
        if self.url.startswith("sqlite:///"):
            return self.url[len("sqlite:///") :]
        return self.url or self.path

    @property
    def postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))


class LimitsConfig(_Section):
    streams_per_user: int = Field(4, ge=1)
    outbox_per_user: int = Field(1000, ge=1)
    conversations_per_user: int = Field(50, ge=1)
    frames_in_flight: int = Field(32, ge=1)


class ShareConfig(_Section):
    max_bytes: int = Field(262144, ge=1)
    per_minute: int = Field(10, ge=1)
    ttl_days: int = Field(30, ge=1)
    max_total: int = Field(10000, ge=1)


class MioChatConfig(_Section):
    """``[miochat]``: the current mio-chat web client (Socket.IO at /socket.io on the hub's port,
    the HTTP endpoints it calls, and optionally its build served at /)."""

    socketio: bool = True
    # A directory holding a mio-chat build (index.html, assets/); empty: nothing served at /.
    web_root: str = ""
    # Image uploads (POST /api/upload/image): one file at most this big, all of them together
    # at most the total (refused beyond, never evicted: URLs already sent keep working), and
    # this many uploads per client address a minute.
    max_upload_bytes: int = Field(10 << 20, ge=1024, le=1 << 30)
    max_upload_total_bytes: int = Field(1 << 30, ge=1 << 20)
    uploads_per_minute: int = Field(30, ge=1)

    @field_validator("web_root")
    @classmethod
    def _web_root(cls, v: str) -> str:
        # Checked here so `check-config` and `serve` refuse the same mistake, before the bridge
        # would answer every page with a 404.
        if not v.strip():
            return ""
        root = Path(v).expanduser()
        if not root.is_dir():
            raise ValueError(f"{v!r} is not a directory (point it at a mio-chat build's folder)")
        if not (root / "index.html").is_file():
            raise ValueError(
                f"no index.html in {v!r}: point it at a mio-chat build's folder "
                "(e.g. the backend's dist/)"
            )
        return str(root)


class ConsoleConfig(_Section):
    """``[console]``: the web console at /console, the /chat page and /metrics on the hub's port."""

    enabled: bool = True
    chat_page: bool = True
    metrics: bool = True
    # With a token, /metrics wants `Authorization: Bearer <token>`; without one it is open.
    metrics_token: str = ""
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # Wrong console codes per client address per minute (past it a wrong code is answered 429;
    # the right one still gets in), and 60 attempts of any kind: the code cannot be guessed at
    # line speed.
    login_per_minute: int = Field(5, ge=1, le=1000)
    # How often an open console page gets the overview and new log events.
    live_seconds: float = Field(2.0, gt=0, le=60)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ClusterConfig(_Section):
    """``[cluster]``: several bridges sharing one Redis (coordination) and one PostgreSQL
    database (``[storage] url``). Empty ``redis_url``: a single bridge, no Redis needed."""

    redis_url: str = ""
    # This bridge's name among the nodes (default: host name and process id).
    node_id: str = Field("", max_length=64)
    heartbeat: float = Field(1.0, gt=0, le=60)
    # A node not heard from for this long is gone.
    node_ttl: float = Field(5.0, gt=0, le=600)
    prefix: str = Field("momobridge:", min_length=1, max_length=64)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"must be redis://host:port/db (or rediss://), got {v.split('@')[-1]!r}"
            )
        return v

    @model_validator(mode="after")
    def _beat_under_ttl(self) -> ClusterConfig:
        if self.heartbeat > self.node_ttl / 2:
            raise ValueError(
                f"heartbeat ({self.heartbeat:g} s) must be at most half of node_ttl "
                f"({self.node_ttl:g} s): one late heartbeat must not drop a live node"
            )
        return self


class FrameworkLink(_Section):
    url: WebSocketURL
    access_token: str = ""
    self_id: OptionalQQNumber = ""
    reconnect_interval: float = Field(1.0, gt=0)
    max_reconnect_interval: float = Field(60.0, gt=0)
    # The longest wait between redials: a framework that comes back is relinked within it.
    reconnect_max: float = Field(10.0, gt=0)
    heartbeat_interval: float = Field(30.0, gt=0)
    action_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)


class QQConfig(_Section):
    """``[onebot.qq]``: real QQ accounts (NapCat, LLBot, Lagrange, go-cqhttp) dialling the bridge's
    reverse WebSocket; their private chats and groups talk to characters or models."""

    enabled: bool = False
    path: str = "/onebot/v11/ws"
    access_token: str = ""
    action_timeout: float = Field(30.0, gt=0)
    # What a session talks to until `/char use`: a character (id or name; empty: the MomoHub
    # default character) or `model:<provider>/<model>`.
    default_target: str = ""
    group_isolation: Literal["shared", "member"] = "shared"
    # Group messages that start with one of these (or a nickname) reach the character even
    # without an @ of the account.
    prefixes: list[str] = Field(default_factory=list)
    nicknames: list[str] = Field(default_factory=list)
    allow_users: list[QQNumber] = Field(default_factory=list)
    deny_users: list[QQNumber] = Field(default_factory=list)
    allow_groups: list[QQNumber] = Field(default_factory=list)
    deny_groups: list[QQNumber] = Field(default_factory=list)
    admins: list[QQNumber] = Field(default_factory=list)
    queue_size: int = Field(5, ge=1, le=100)
    merge_window: float = Field(1.5, ge=0, le=60)
    # Turns of one account running at once; the chats past it wait their turn (queued).
    max_active: int = Field(50, ge=1, le=10_000)
    rate_per_minute: int = Field(20, ge=1)
    max_event_age: float = Field(120.0, gt=0)
    recall_follows: bool = False
    reply_mode: Literal["segments", "whole"] = "segments"
    segment_interval: float = Field(1.0, ge=0, le=60)
    typing: bool = True
    forward_threshold: int = Field(1500, ge=100)
    # The longest plain message sent; longer text goes as several (the implementations' limits
    # are a few thousand characters).
    max_message_chars: int = Field(3000, ge=100, le=100_000)
    show_tool_calls: bool = False
    # A model session's context (None: `[openai] history_turns`).
    history_turns: int | None = Field(None, ge=1, le=1000)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v) or "?" in v:
            raise ValueError(f"must be a URL path such as /onebot/v11/ws, got {v!r}")
        v = v.rstrip("/")
        if v in ("", "/api/gateway", "/api/share", "/healthz", "/readyz"):
            raise ValueError(f"{v or '/'} is a path of the hub itself; use e.g. /onebot/v11/ws")
        return v


class OneBotConfig(_Section):
    frameworks: list[FrameworkLink] = Field(default_factory=list)
    user_message_type: Literal["private", "group"] = "private"
    qq: QQConfig = Field(default_factory=QQConfig)


class PluginsConfig(BaseModel):
    """``[plugins]``: which load, the command prefixes, and each plugin's own
    ``[plugins.<name>]`` table (validated by that plugin when it loads)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: list[str] = Field(default_factory=list)
    disabled: list[str] = Field(default_factory=list)
    prefixes: list[str] = Field(default_factory=lambda: ["/"], min_length=1)

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for prefix in v:
            if not prefix or len(prefix) > 4 or any(c.isspace() or c.isalnum() for c in prefix):
                raise ValueError(
                    f"{prefix!r} cannot be a command prefix: 1 to 4 characters, "
                    "no letters, digits or spaces"
                )
        return v

    @field_validator("enabled")
    @classmethod
    def _module_paths(cls, v: list[str]) -> list[str]:
        for path in v:
            if not all(part.isidentifier() for part in path.split(".")):
                raise ValueError(f"{path!r} is not a module path (such as my_plugins.weather)")
        return v

    @model_validator(mode="after")
    def _tables_only(self) -> PluginsConfig:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(
                    f"plugins.{key}: unknown key (a plugin's own settings go in a "
                    f"[plugins.{key}] table)"
                )
        return self

    def tables(self) -> dict[str, dict[str, Any]]:
        return dict(self.model_extra or {})


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    momohub: MomoHubConfig = Field(default_factory=MomoHubConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    momoai: MomoAIConfig = Field(default_factory=MomoAIConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    onebot: OneBotConfig = Field(default_factory=OneBotConfig)
    share: ShareConfig = Field(default_factory=ShareConfig)
    miochat: MioChatConfig = Field(default_factory=MioChatConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        problems: list[Problem] = []
        auth = self.auth
        if auth.admin_qq == auth.bot_qq:
            problems.append(
                Problem(
                    (("auth", "bot_qq"), ("auth", "admin_qq")),
                    f"must differ from auth.admin_qq (both are {auth.bot_qq})",
                )
            )
        for i, link in enumerate(self.onebot.frameworks):
            if link.self_id and link.self_id == auth.admin_qq:
                problems.append(
                    Problem(
                        (("onebot", "frameworks", i, "self_id"), ("auth", "admin_qq")),
                        f"the bot account must differ from auth.admin_qq ({auth.admin_qq})",
                    )
                )
        problems.extend(self._qq_problems())
        problems.extend(self._sandbox_problems())
        problems.extend(self._momoai_problems())
        if self.cluster.redis_url and not self.storage.postgres:
            problems.append(
                Problem(
                    (("cluster", "redis_url"), ("storage", "url")),
                    "a cluster shares one PostgreSQL database: set storage.url = "
                    '"postgresql://..." (each bridge\'s own SQLite file would split the users)',
                )
            )
        if problems:
            raise CrossFieldError(problems)
        return self

    def _qq_problems(self) -> list[Problem]:
        qq = self.onebot.qq
        if not qq.enabled:
            return []
        problems: list[Problem] = []
        token = qq.access_token.strip()
        if not _loopback(self.server.host) and token in ("", QQ_TOKEN_PLACEHOLDER):
            problems.append(
                Problem(
                    (("onebot", "qq", "access_token"), ("server", "host")),
                    f"{'empty' if not token else 'the placeholder ' + repr(token)} while "
                    f"server.host ({self.server.host!r}) is not a loopback address: anyone who "
                    "reaches the port could pose as a QQ account; set a long random token "
                    "(e.g. openssl rand -hex 16) and the same one in the QQ implementation",
                )
            )
        target = qq.default_target.strip()
        momoai = self.momoai
        if target.startswith("momoai:") and not (momoai.enabled and momoai.as_contacts):
            problems.append(
                Problem(
                    (("onebot", "qq", "default_target"), ("momoai", "as_contacts")),
                    f"{target!r} is a MOMO AI agent, which QQ chats can talk to only with "
                    "momoai.enabled and momoai.as_contacts set to true",
                )
            )
        if self.onebot.frameworks and qq.default_target.strip() == self.auth.bot_qq:
            problems.append(
                Problem(
                    (("onebot", "qq", "default_target"), ("auth", "bot_qq")),
                    f"{qq.default_target!r} is the bot frameworks' account (auth.bot_qq), which "
                    "answers on its own and cannot talk to QQ chats; name a character or "
                    "model:<provider>/<model>",
                )
            )
        return problems

    def _momoai_problems(self) -> list[Problem]:
        momoai = self.momoai
        if momoai.enabled and not momoai.api_key.strip():
            return [
                Problem(
                    (("momoai", "api_key"), ("momoai", "enabled")),
                    "empty while momoai.enabled is true; set MOMOBRIDGE_MOMOAI__API_KEY "
                    "to the key from your MOMO AI account",
                )
            ]
        return []

    def _sandbox_problems(self) -> list[Problem]:
        sandbox, providers = self.sandbox, self.openai.providers
        by_name = {p.name: p for p in providers}
        names = ", ".join(repr(n) for n in by_name) or "none configured"
        if sandbox.openai_provider and sandbox.openai_provider not in by_name:
            return [
                Problem(
                    (("sandbox", "openai_provider"),),
                    f"no [[openai.providers]] entry named {sandbox.openai_provider!r} "
                    f"(known: {names})",
                )
            ]
        if sandbox.responder != "openai":
            return []
        if not providers:
            return [
                Problem(
                    (("sandbox", "responder"),),
                    "'openai' needs at least one [[openai.providers]] entry",
                )
            ]
        provider = by_name.get(sandbox.openai_provider) or providers[0]
        if not sandbox.openai_model and not provider.models:
            return [
                Problem(
                    (("sandbox", "openai_model"),),
                    f"empty, and provider {provider.name!r} lists no models; name a model",
                )
            ]
        return []


# The compose file's token when QQ_TOKEN is not set.
QQ_TOKEN_PLACEHOLDER = "change-me"


class ConfigError(Exception):
    """A config problem, phrased so a person can fix the file: names the key and why."""


class Problem(typing.NamedTuple):
    """A cross-field rule broken: the keys involved (the first is reported) and why."""

    keys: tuple[tuple[str | int, ...], ...]
    message: str

    def __str__(self) -> str:
        return f"{_dotted(self.keys[0])}: {self.message}"


class CrossFieldError(ValueError):
    """Raised by ``Config``'s model validator; keeps each problem's keys for the error message."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"
