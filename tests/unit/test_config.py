"""Config: defaults, TOML, env overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Config, ConfigError, load_config

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
