"""Config: defaults, TOML, env overrides, and errors that name the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from bridge.config import (
    AuthConfig,
    Config,
    ConfigError,
    FrameworkLink,
    LimitsConfig,
    LogConfig,
    MomoHubConfig,
    OpenAIProvider,
    SandboxConfig,
    ServerConfig,
    ShareConfig,
    StorageConfig,
)
from bridge.config_load import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_a_file() -> None:
    config, found = load_config(None, environ={})
    assert found is False
    assert config == Config()
    assert config.server.host == "127.0.0.1" and config.server.port == 3080
    assert config.server.max_frame_bytes == 1 << 20 and config.server.idle_timeout == 90.0
    assert config.auth.login_timeout == 10.0 and config.auth.user_code == ""
    assert config.auth.admin_qq == "10001" and config.auth.bot_qq == "10000"
    assert config.limits.streams_per_user == 4 and config.limits.outbox_per_user == 1000
    assert config.openai.providers == [] and config.onebot.frameworks == []


def test_missing_file_means_defaults_unless_it_must_exist(tmp_path: Path) -> None:
    config, found = load_config(tmp_path / "nope.toml", environ={})
    assert found is False and config == Config()
    with pytest.raises(ConfigError, match="no such file") as ei:
        load_config(tmp_path / "nope.toml", environ={}, must_exist=True)
    assert "nope.toml" in str(ei.value)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path, environ={}, must_exist=True)


def test_example_config_is_valid_and_matches_defaults() -> None:
    config, found = load_config(EXAMPLE, environ={}, must_exist=True)
    assert found is True
    assert config == Config()  # "every key below shows its default"


def test_toml_file_values(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
[server]
port = 4000
idle_timeout = 5
compression = true

[auth]
admin_code = "s3cret"

[log]
level = "debug"

[[openai.providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
models = ["llama3"]

[[openai.providers]]
name = "remote"
base_url = "https://api.example.com/v1"

[[onebot.frameworks]]
url = "ws://127.0.0.1:8080/onebot/v11/ws"
""",
    )
    config, found = load_config(p, environ={})
    assert found is True
    assert config.server.port == 4000 and config.server.idle_timeout == 5.0
    assert config.server.compression is True and config.server.host == "127.0.0.1"
    assert config.auth.admin_code == "s3cret" and config.log.level == "debug"
    assert [p.name for p in config.openai.providers] == ["local", "remote"]
    assert config.openai.providers[0].models == ["llama3"]
    assert config.openai.providers[1].timeout == 60.0
    assert config.onebot.frameworks[0].url.endswith("/ws")


def test_env_overrides_are_nested_and_type_coerced(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nport = 4000\nhost = "0.0.0.0"\n')
    config, _ = load_config(
        p,
        environ={
            "MOMOBRIDGE_SERVER__PORT": "5555",
            "MOMOBRIDGE_SERVER__COMPRESSION": "true",
            "MOMOBRIDGE_SERVER__IDLE_TIMEOUT": "2.5",
            "MOMOBRIDGE_AUTH__ADMIN_CODE": "from-env",
            "MOMOBRIDGE_MOMOHUB__PASSWORD": "pw",
            "MOMOBRIDGE_LIMITS__OUTBOX_PER_USER": "7",
            "MOMOBRIDGE_UNRELATED": "ignored (no section)",
            "OTHER_SERVER__PORT": "1",
        },
    )
    assert config.server.port == 5555 and isinstance(config.server.port, int)
    assert config.server.compression is True
    assert config.server.idle_timeout == 2.5
    assert config.server.host == "0.0.0.0"  # untouched file value
    assert config.auth.admin_code == "from-env"
    assert config.momohub.password == "pw"
    assert config.limits.outbox_per_user == 7


def test_env_overrides_without_a_file() -> None:
    config, found = load_config(None, environ={"MOMOBRIDGE_AUTH__USER_CODE": "letmein"})
    assert found is False and config.auth.user_code == "letmein"


def test_env_overrides_a_secret_in_a_list_entry(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[[openai.providers]]\nname = "a"\nbase_url = "http://a"\napi_key = "in-file"\n'
        '[[openai.providers]]\nname = "b"\nbase_url = "http://b"\n',
    )
    config, _ = load_config(p, environ={"MOMOBRIDGE_OPENAI__PROVIDERS__1__API_KEY": "sk-env"})
    assert config.openai.providers[0].api_key == "in-file"
    assert config.openai.providers[1].api_key == "sk-env"


def test_env_override_of_a_missing_list_entry_names_the_variable(tmp_path: Path) -> None:
    p = write(tmp_path, '[[openai.providers]]\nname = "a"\nbase_url = "http://a"\n')
    with pytest.raises(ConfigError, match="MOMOBRIDGE_OPENAI__PROVIDERS__3__API_KEY"):
        load_config(p, environ={"MOMOBRIDGE_OPENAI__PROVIDERS__3__API_KEY": "x"})


def test_env_override_below_a_scalar_names_the_variable(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 1\n")
    with pytest.raises(ConfigError, match="MOMOBRIDGE_SERVER__PORT__X"):
        load_config(p, environ={"MOMOBRIDGE_SERVER__PORT__X": "1"})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[server]\nprot = 80\n", "server.prot"),
        ('[auth]\nbogus = "x"\n', "auth.bogus"),
        ("[auth]\nlogin_timeout = 0\n", "auth.login_timeout"),
        ("[limits]\nstreams_per_user = 0\n", "limits.streams_per_user"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ("server = 5\n", "server"),
        ('[[openai.providers]]\nname = "x"\n', "openai.providers.0.base_url"),
        (
            '[[openai.providers]]\nname = "x"\nbase_url = "u"\nextra_key = 1\n',
            "openai.providers.0.extra_key",
        ),
        ("[[onebot.frameworks]]\naccess_token = 't'\n", "onebot.frameworks.0.url"),
    ],
)
def test_bad_values_name_the_key_path(tmp_path: Path, toml: str, key: str) -> None:
    p = write(tmp_path, toml)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert f"{key}:" in msg, msg
    assert str(p) in msg


def test_bad_env_value_names_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"server\.port:"):
        load_config(None, environ={"MOMOBRIDGE_SERVER__PORT": "not-a-port"})
    with pytest.raises(ConfigError, match=r"auth\.bogus:"):
        load_config(None, environ={"MOMOBRIDGE_AUTH__BOGUS": "1"})


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nport = -1\n[auth]\nbogus = 1\n[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "server.port:" in msg and "auth.bogus:" in msg and "log.format:" in msg


def test_duplicate_provider_names(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[[openai.providers]]\nname = "same"\nbase_url = "http://a"\n'
        '[[openai.providers]]\nname = "other"\nbase_url = "http://b"\n'
        '[[openai.providers]]\nname = "same"\nbase_url = "http://c"\n',
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "openai.providers:" in msg and "unique" in msg and "same" in msg
    assert "other" not in msg


@pytest.mark.parametrize(
    "text", ["[server\nport = 1\n", "port = \n", "[server]\nport = 1\nport = 2\n"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert "not valid TOML" in str(ei.value) and str(p) in str(ei.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes('[server]\ntitle = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p, environ={})


def test_config_assignment_is_validated() -> None:
    config = Config()
    config.server.port = 0  # tests reuse ports this way
    with pytest.raises(ValueError):
        config.server.port = 70000  # type: ignore[assignment]


# --- new keys ---------------------------------------------------------------------------


def test_new_keys_and_their_defaults() -> None:
    config = Config()
    assert config.server.send_timeout == 10.0
    assert config.server.max_send_queue == 8 * 1024 * 1024
    assert config.limits.conversations_per_user == 50
    assert config.limits.frames_in_flight == 32
    share = config.share
    assert (share.max_bytes, share.per_minute, share.ttl_days, share.max_total) == (
        262144,
        10,
        30,
        10000,
    )


def _keys_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def test_example_config_documents_every_key() -> None:
    """Every key of every section (list entries included, where they are commented out)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    sections = [
        ServerConfig,
        AuthConfig,
        StorageConfig,
        LimitsConfig,
        ShareConfig,
        LogConfig,
        MomoHubConfig,
        SandboxConfig,
        OpenAIProvider,
        FrameworkLink,
    ]
    missing = {f"{m.__name__}.{k}" for m in sections for k in _keys_of(m) if k not in keys}
    assert not missing
    for section in Config.model_fields:
        assert f"[{section}]" in text or f"[[{section}." in text, section


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nsend_timeout = 0\n", "server.send_timeout"),
        ("[server]\nmax_send_queue = 65535\n", "server.max_send_queue"),
        ("[limits]\nconversations_per_user = 0\n", "limits.conversations_per_user"),
        ("[limits]\nframes_in_flight = 0\n", "limits.frames_in_flight"),
        ("[share]\nmax_bytes = 0\n", "share.max_bytes"),
        ("[share]\nper_minute = 0\n", "share.per_minute"),
        ("[share]\nttl_days = 0\n", "share.ttl_days"),
        ("[share]\nmax_total = 0\n", "share.max_total"),
        ('[share]\nttl_days = "long"\n', "share.ttl_days"),
    ],
)
def test_new_keys_are_bounded(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{key}:")):
        load_config(write(tmp_path, toml), environ={})


def test_new_keys_smallest_values_are_accepted(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "[server]\nsend_timeout = 0.5\nmax_send_queue = 65536\n"
        "[limits]\nconversations_per_user = 1\nframes_in_flight = 1\n"
        "[share]\nmax_bytes = 1\nper_minute = 1\nttl_days = 1\nmax_total = 1\n",
    )
    config, _ = load_config(p, environ={"MOMOBRIDGE_SHARE__PER_MINUTE": "3"})
    assert config.server.max_send_queue == 65536 and config.limits.frames_in_flight == 1
    assert config.share.per_minute == 3 and config.share.max_total == 1


# --- QQ numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("123456", "123456"),
        ('"123456"', "123456"),
        ("3000000001", "3000000001"),
        ('"3000000001"', "3000000001"),
        ('" 42 "', "42"),
        ('"007"', "7"),
        ("9223372036854775807", "9223372036854775807"),
        ('"9223372036854775807"', "9223372036854775807"),
    ],
)
def test_qq_numbers_accept_integers_and_numeric_strings(
    tmp_path: Path, literal: str, expected: str
) -> None:
    config, _ = load_config(write(tmp_path, f"[auth]\nbot_qq = {literal}\n"), environ={})
    assert config.auth.bot_qq == expected and isinstance(config.auth.bot_qq, str)


def test_qq_numbers_are_one_type_whatever_was_written(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[auth]\nadmin_qq = 20002\nbot_qq = "20001"\n'
        '[[onebot.frameworks]]\nurl = "ws://h/ws"\nself_id = 30003\n'
        '[[onebot.frameworks]]\nurl = "ws://h/ws2"\nself_id = "30004"\n'
        '[[onebot.frameworks]]\nurl = "ws://h/ws3"\n',
    )
    config, _ = load_config(p, environ={})
    assert config.auth.admin_qq == "20002" and config.auth.bot_qq == "20001"
    assert [f.self_id for f in config.onebot.frameworks] == ["30003", "30004", ""]
    config, _ = load_config(p, environ={"MOMOBRIDGE_AUTH__ADMIN_QQ": "555"})
    assert config.auth.admin_qq == "555"


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("auth.bot_qq", '"mybot"'),
        ("auth.admin_qq", '"mybot"'),
        ("auth.bot_qq", "0"),
        ("auth.bot_qq", "-5"),
        ("auth.bot_qq", '"-5"'),
        ("auth.bot_qq", '""'),
        ("auth.bot_qq", "9223372036854775808"),
        ("auth.bot_qq", '"9223372036854775808"'),
        ("auth.bot_qq", "true"),
        ("auth.bot_qq", "1.5"),
        ("auth.bot_qq", '"1e5"'),
        ("auth.bot_qq", '"12 34"'),
        ("auth.bot_qq", "[1]"),
    ],
)
def test_bad_qq_numbers_name_the_key(tmp_path: Path, key: str, literal: str) -> None:
    section, name = key.split(".")
    p = write(tmp_path, f"[{section}]\n{name} = {literal}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert f"{key}: must be a QQ number" in msg, msg
    assert str(p) in msg


def test_mybot_message_is_clear(tmp_path: Path) -> None:
    p = write(tmp_path, '[auth]\nbot_qq = "mybot"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert str(ei.value) == (
        f"{p}: auth.bot_qq: must be a QQ number (a positive integer), got 'mybot'"
    )


def test_bad_framework_self_id(tmp_path: Path) -> None:
    p = write(tmp_path, '[[onebot.frameworks]]\nurl = "ws://h/ws"\nself_id = "bot"\n')
    with pytest.raises(ConfigError, match=r"onebot\.frameworks\.0\.self_id: must be a QQ number"):
        load_config(p, environ={})


@pytest.mark.parametrize(
    "auth",
    [
        'admin_qq = "10000"',  # equal to the default bot_qq
        'admin_qq = 777\nbot_qq = "777"',  # same number, different spelling
        'admin_qq = "0777"\nbot_qq = 777',
    ],
)
def test_admin_and_bot_qq_must_differ(tmp_path: Path, auth: str) -> None:
    p = write(tmp_path, f"[auth]\n{auth}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "auth.bot_qq: must differ from auth.admin_qq" in msg and str(p) in msg


def test_framework_self_id_must_not_be_the_admin(tmp_path: Path) -> None:
    p = write(tmp_path, '[[onebot.frameworks]]\nurl = "ws://h/ws"\nself_id = 10001\n')
    with pytest.raises(ConfigError, match=r"onebot\.frameworks\.0\.self_id: .*admin_qq"):
        load_config(p, environ={})


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[momohub]\nbase_url = "hub.example.com/v1"\n', "momohub.base_url"),
        ('[momohub]\nbase_url = "ws://hub.example.com/v1"\n', "momohub.base_url"),
        ('[momohub]\nbase_url = "https://"\n', "momohub.base_url"),
        ('[server]\npublic_url = "example.com"\n', "server.public_url"),
        (
            '[[openai.providers]]\nname = "a"\nbase_url = "ftp://h/v1"\n',
            "openai.providers.0.base_url",
        ),
        ('[[openai.providers]]\nname = "a"\nbase_url = ""\n', "openai.providers.0.base_url"),
        (
            '[[openai.providers]]\nname = "a"\nbase_url = "http://h:99999"\n',
            "openai.providers.0.base_url",
        ),
        ('[[onebot.frameworks]]\nurl = "http://h/ws"\n', "onebot.frameworks.0.url"),
        ('[[onebot.frameworks]]\nurl = "127.0.0.1:8080/ws"\n', "onebot.frameworks.0.url"),
        ('[[onebot.frameworks]]\nurl = ""\n', "onebot.frameworks.0.url"),
    ],
)
def test_urls_need_the_right_scheme(tmp_path: Path, toml: str, key: str) -> None:
    p = write(tmp_path, toml)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert f"{key}: " in str(ei.value) and "URL" in str(ei.value)


def test_good_urls(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[server]\npublic_url = "https://chat.example.com/"\n'
        '[momohub]\nbase_url = "HTTPS://hub.example.com/v1"\n'
        '[[openai.providers]]\nname = "a"\nbase_url = "http://[::1]:11434/v1"\n'
        '[[onebot.frameworks]]\nurl = "wss://bot.example.com/onebot/v11/ws"\n'
        '[[onebot.frameworks]]\nurl = "ws://127.0.0.1:8080/ws"\n',
    )
    config, _ = load_config(p, environ={})
    assert config.momohub.base_url == "HTTPS://hub.example.com/v1"
    assert len(config.onebot.frameworks) == 2


# --- cross-field rules ------------------------------------------------------------------

PROVIDER = '[[openai.providers]]\nname = "local"\nbase_url = "http://127.0.0.1:1/v1"\n'


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[sandbox]\nresponder = "openai"\n', "sandbox.responder: 'openai' needs at least one"),
        (
            '[sandbox]\nresponder = "openai"\nopenai_provider = "remote"\n' + PROVIDER,
            "sandbox.openai_provider: no [[openai.providers]] entry named 'remote' "
            "(known: 'local')",
        ),
        (
            # Named but unused (echo responder): still a dangling reference.
            '[sandbox]\nopenai_provider = "nope"\n',
            "sandbox.openai_provider: no [[openai.providers]] entry named 'nope'",
        ),
        (
            '[sandbox]\nresponder = "openai"\n' + PROVIDER,
            "sandbox.openai_model: empty, and provider 'local' lists no models",
        ),
    ],
)
def test_sandbox_cross_field_rules(tmp_path: Path, toml: str, expected: str) -> None:
    p = write(tmp_path, toml)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert expected in str(ei.value) and str(p) in str(ei.value)


@pytest.mark.parametrize(
    "sandbox",
    [
        'responder = "openai"\nopenai_model = "m"',
        'responder = "openai"\nopenai_provider = "local"\nopenai_model = "m"',
        'responder = "echo"\nopenai_provider = "local"',
    ],
)
def test_sandbox_with_a_provider_is_fine(tmp_path: Path, sandbox: str) -> None:
    config, _ = load_config(write(tmp_path, f"[sandbox]\n{sandbox}\n{PROVIDER}"), environ={})
    assert config.sandbox.responder in ("openai", "echo")


def test_cross_field_rules_live_in_the_model() -> None:
    """serve and check-config both go through Config validation; so does direct use."""
    with pytest.raises(ValidationError, match=r"sandbox\.responder"):
        Config.model_validate({"sandbox": {"responder": "openai"}})
    with pytest.raises(ValidationError, match="must differ"):
        Config.model_validate({"auth": {"admin_qq": 1, "bot_qq": "1"}})


def test_cross_field_errors_are_reported_with_field_errors(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nport = "x"\n[sandbox]\nresponder = "openai"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    # Field errors come first; cross-field rules only run once every field is valid.
    assert "server.port:" in str(ei.value)
    p = write(tmp_path, '[auth]\nadmin_qq = 5\nbot_qq = 5\n[sandbox]\nopenai_provider = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert "auth.bot_qq:" in str(ei.value) and "sandbox.openai_provider:" in str(ei.value)


# --- errors caused by the environment ---------------------------------------------------


def test_env_error_names_the_variable_not_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 4000\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={"MOMOBRIDGE_SERVER__PORT": "abc"})
    msg = str(ei.value)
    assert msg.startswith("MOMOBRIDGE_SERVER__PORT=abc: server.port: "), msg
    assert str(p) not in msg


def test_env_and_file_errors_each_name_their_source(tmp_path: Path) -> None:
    p = write(tmp_path, '[auth]\nbot_qq = "mybot"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={"MOMOBRIDGE_LIMITS__FRAMES_IN_FLIGHT": "0"})
    msg = str(ei.value)
    assert f"{p}: auth.bot_qq: must be a QQ number" in msg
    assert "MOMOBRIDGE_LIMITS__FRAMES_IN_FLIGHT=0: limits.frames_in_flight: " in msg


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"MOMOBRIDGE_AUTH__BOT_QQ": "mybot"}, "MOMOBRIDGE_AUTH__BOT_QQ=mybot: auth.bot_qq: "),
        (
            {"MOMOBRIDGE_AUTH__ADMIN_QQ": "10000"},
            "MOMOBRIDGE_AUTH__ADMIN_QQ=10000: auth.bot_qq: must differ",
        ),
        (
            {"MOMOBRIDGE_SANDBOX__RESPONDER": "openai"},
            "MOMOBRIDGE_SANDBOX__RESPONDER=openai: sandbox.responder: ",
        ),
        (
            {"MOMOBRIDGE_MOMOHUB__BASE_URL": "hub"},
            "MOMOBRIDGE_MOMOHUB__BASE_URL=hub: momohub.base_url: ",
        ),
        (
            {"MOMOBRIDGE_SERVER__PROT": "1"},
            "MOMOBRIDGE_SERVER__PROT=1: server.prot: unknown key, did you mean 'port'?",
        ),
        (
            {"MOMOBRIDGE_SERVR__PORT": "1"},
            "MOMOBRIDGE_SERVR__PORT=1: servr: unknown key, did you mean 'server'?",
        ),
    ],
)
def test_env_caused_errors_name_the_variable(
    tmp_path: Path, environ: dict[str, str], expected: str
) -> None:
    p = write(tmp_path, "[server]\nport = 4000\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ=environ)
    msg = str(ei.value)
    assert msg.startswith(expected), msg
    assert str(p) not in msg


def test_env_error_does_not_echo_a_secret() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(None, environ={"MOMOBRIDGE_MOMOHUB__PASSWORDD": "hunter2"})
    msg = str(ei.value)
    assert "MOMOBRIDGE_MOMOHUB__PASSWORDD=***" in msg and "did you mean 'password'?" in msg
    assert "hunter2" not in msg


def test_env_override_of_a_list_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"MOMOBRIDGE_OPENAI__PROVIDERS__0__NAME: no list entry"):
        load_config(None, environ={"MOMOBRIDGE_OPENAI__PROVIDERS__0__NAME": "x"})


# --- unknown keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[server]\nprot = 80\n", "server.prot: unknown key, did you mean 'port'?"),
        ("[servr]\nport = 80\n", "servr: unknown key, did you mean 'server'?"),
        ("[auth]\nadmin_cod = 'x'\n", "auth.admin_cod: unknown key, did you mean 'admin_code'?"),
        ("[auth]\nadminqq = 1\n", "auth.adminqq: unknown key, did you mean 'admin_qq'?"),
        ("[limits]\nframes_in_flite = 1\n", "did you mean 'frames_in_flight'?"),
        ("[share]\nttl = 1\n", "share.ttl: unknown key, did you mean 'ttl_days'?"),
        (
            '[[openai.providers]]\nname = "a"\nbase_url = "http://h"\nmodel = []\n',
            "openai.providers.0.model: unknown key, did you mean 'models'?",
        ),
        (
            '[[onebot.frameworks]]\nurl = "ws://h"\nselfid = "1"\n',
            "onebot.frameworks.0.selfid: unknown key, did you mean 'self_id'?",
        ),
        ("[server]\nzzzzzz = 1\n", "server.zzzzzz: unknown key"),
    ],
)
def test_unknown_keys_suggest_the_closest(tmp_path: Path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, toml), environ={})
    assert expected in str(ei.value), str(ei.value)


def test_unknown_key_without_a_close_match_suggests_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "[server]\nzzzzzz = 1\n"), environ={})
    assert "did you mean" not in str(ei.value)


def test_error_message_is_one_paragraph(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nport = -1\nprot = 1\n[auth]\nbot_qq = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={"MOMOBRIDGE_SHARE__TTL_DAYS": "soon"})
    assert "\n" not in str(ei.value)


def test_list_keys_take_json_arrays_or_comma_lists_from_the_environment() -> None:
    config, _ = load_config(
        None,
        environ={
            "MOMOBRIDGE_ONEBOT__QQ__ADMINS": "123, 456",
            "MOMOBRIDGE_ONEBOT__QQ__NICKNAMES": '["momo", "小桃"]',
            "MOMOBRIDGE_PLUGINS__PREFIXES": "/,!",
            "MOMOBRIDGE_ONEBOT__QQ__ACCESS_TOKEN": "a,b",  # not a list key: kept as typed
        },
    )
    assert config.onebot.qq.admins == ["123", "456"]
    assert config.onebot.qq.nicknames == ["momo", "小桃"]
    assert config.plugins.prefixes == ["/", "!"]
    assert config.onebot.qq.access_token == "a,b"
    with pytest.raises(ConfigError, match="MOMOBRIDGE_ONEBOT__QQ__ADMINS"):
        load_config(None, environ={"MOMOBRIDGE_ONEBOT__QQ__ADMINS": "12,abc"})


def test_momoai_agents_and_key() -> None:
    c = Config.model_validate(
        {"momoai": {"enabled": True, "api_key": "k", "agents": [" momoai:159", "160"]}}
    )
    assert c.momoai.agents == ["159", "160"]
    with pytest.raises(ValidationError, match="agent ids are 1-64 characters"):
        Config.model_validate({"momoai": {"agents": ["no spaces allowed"]}})
    with pytest.raises(ValidationError, match="MOMOBRIDGE_MOMOAI__API_KEY"):
        Config.model_validate({"momoai": {"enabled": True}})
    # Off, it needs no key.
    assert Config.model_validate({"momoai": {"enabled": False}}).momoai.api_key == ""


def test_a_qq_default_agent_needs_agent_contacts() -> None:
    qq = {"qq": {"enabled": True, "default_target": "momoai:159"}}
    with pytest.raises(ValidationError, match=r"momoai\.as_contacts"):
        Config.model_validate({"onebot": qq, "momoai": {"enabled": True, "api_key": "k"}})
    ok = Config.model_validate(
        {"onebot": qq, "momoai": {"enabled": True, "api_key": "k", "as_contacts": True}}
    )
    assert ok.onebot.qq.default_target == "momoai:159"
