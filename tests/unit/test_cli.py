"""`python -m bridge.cli check-config` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    return {**env, **extra}


def momobridge(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def check_config(path: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    return momobridge("check-config", str(path), **env)


GOOD = """
[server]
port = 4000
[auth]
admin_code = "x"
[[openai.providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
[[onebot.frameworks]]
url = "ws://127.0.0.1:8080/onebot/v11/ws"
[[onebot.frameworks]]
url = "ws://127.0.0.1:8081/onebot/v11/ws"
"""


def test_good_file_exits_zero_and_summarises(tmp_path: Path) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    r = check_config(p)
    assert r.returncode == 0, r.stderr
    assert f"{p}: ok" in r.stdout
    assert "1 OpenAI providers" in r.stdout and "2 framework links" in r.stdout
    assert "embedded sandbox" in r.stdout
    assert r.stderr == ""


def test_example_config_passes() -> None:
    r = check_config(ROOT / "config.example.toml")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[auth]\nbogus = "x"\n', "auth.bogus"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ('[[openai.providers]]\nname = "a"\n', "openai.providers.0.base_url"),
    ],
)
def test_bad_file_exits_nonzero_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = check_config(p)
    assert r.returncode == 2
    assert "config error" in r.stderr and f"{key}:" in r.stderr
    assert "Traceback" not in r.stderr
    assert "ok (" not in r.stdout


def test_invalid_toml_exits_nonzero(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("[server\n")
    r = check_config(p)
    assert r.returncode == 2 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_exits_nonzero(tmp_path: Path) -> None:
    r = check_config(tmp_path / "absent.toml")
    assert r.returncode == 2 and "no such file" in r.stderr and "absent.toml" in r.stderr


def test_env_override_is_checked_too(tmp_path: Path) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    r = check_config(p, MOMOBRIDGE_SERVER__PORT="not-a-port")
    assert r.returncode == 2 and "server.port:" in r.stderr
    r = check_config(p, MOMOBRIDGE_MOMOHUB__BASE_URL="https://hub.example/v1")
    assert r.returncode == 0 and "momohub: https://hub.example/v1" in r.stdout


def test_usage_errors() -> None:
    r = momobridge("check-config", "a.toml", "b.toml")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = momobridge()
    assert r.returncode == 2 and "command" in r.stderr


def test_env_caused_error_names_the_variable(tmp_path: Path) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    r = check_config(p, MOMOBRIDGE_SERVER__PORT="abc")
    assert r.returncode == 2
    assert r.stderr.startswith("config error: MOMOBRIDGE_SERVER__PORT=abc: server.port: ")
    assert str(p) not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[auth]\nbot_qq = "mybot"\n', "auth.bot_qq: must be a QQ number"),
        ("[auth]\nadmin_qq = 10000\n", "auth.bot_qq: must differ from auth.admin_qq"),
        ('[sandbox]\nresponder = "openai"\n', "sandbox.responder: 'openai' needs"),
        ('[sandbox]\nopenai_provider = "gone"\n', "sandbox.openai_provider: no"),
        ('[momohub]\nbase_url = "hub.example/v1"\n', "momohub.base_url: must be a URL"),
        ('[[onebot.frameworks]]\nurl = "http://h/ws"\n', "onebot.frameworks.0.url: must be"),
        ("[server]\nprot = 1\n", "server.prot: unknown key, did you mean 'port'?"),
        ("[share]\nmax_total = 0\n", "share.max_total: "),
    ],
)
def test_rules_checked_by_check_config(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = check_config(p)
    assert r.returncode == 2, r.stdout
    assert expected in r.stderr, r.stderr
    # One paragraph: a single line, naming the file.
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n") and str(p) in r.stderr


def test_check_config_defaults_to_config_toml_in_the_working_directory(tmp_path: Path) -> None:
    r = momobridge("check-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("config.toml not found, built-in defaults: ok (")
    # The environment is still applied (and checked) without a file, as `serve` does.
    r = momobridge("check-config", cwd=tmp_path, MOMOBRIDGE_SERVER__PORT="abc")
    assert r.returncode == 2 and "MOMOBRIDGE_SERVER__PORT=abc: server.port:" in r.stderr
    (tmp_path / "config.toml").write_text(GOOD)
    r = momobridge("check-config", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("config.toml: ok (1 OpenAI providers")
    (tmp_path / "config.toml").write_text('[auth]\nbot_qq = "mybot"\n')
    r = momobridge("check-config", cwd=tmp_path)
    assert r.returncode == 2 and "config.toml: auth.bot_qq: must be a QQ number" in r.stderr


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[auth]\nbot_qq = "mybot"\n', {}, "auth.bot_qq: must be a QQ number"),
        ('[sandbox]\nresponder = "openai"\n', {}, "sandbox.responder: "),
        ("", {"MOMOBRIDGE_SERVER__PORT": "abc"}, "MOMOBRIDGE_SERVER__PORT=abc: server.port: "),
    ],
)
def test_serve_exits_2_on_the_same_errors(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    served = momobridge("serve", "--config", str(p), cwd=tmp_path, **env)
    checked = momobridge("check-config", str(p), cwd=tmp_path, **env)
    assert served.returncode == checked.returncode == 2
    assert expected in served.stderr
    assert served.stderr == checked.stderr  # the same validation, the same words
    assert "Traceback" not in served.stderr and served.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()  # nothing was started


def test_backup_and_restore_refuse_a_postgresql_database(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[storage]\nurl = "postgresql://bridge:secret@127.0.0.1:1/momobridge"\n')
    for command in ("backup", "restore"):
        r = momobridge(command, str(tmp_path / "x.db"), "--config", str(p), cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "PostgreSQL" in r.stderr and "pg_dump" in r.stderr
        assert "secret" not in r.stderr + r.stdout
