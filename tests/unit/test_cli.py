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


def check_config(path: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config", str(path)],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


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
    assert r.returncode != 0
    assert "config error" in r.stderr and f"{key}:" in r.stderr
    assert "Traceback" not in r.stderr
    assert "ok (" not in r.stdout


def test_invalid_toml_exits_nonzero(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("[server\n")
    r = check_config(p)
    assert r.returncode != 0 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_exits_nonzero(tmp_path: Path) -> None:
    r = check_config(tmp_path / "absent.toml")
    assert r.returncode != 0 and "no such file" in r.stderr and "absent.toml" in r.stderr


def test_env_override_is_checked_too(tmp_path: Path) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    r = check_config(p, MOMOBRIDGE_SERVER__PORT="not-a-port")
    assert r.returncode != 0 and "server.port:" in r.stderr
    r = check_config(p, MOMOBRIDGE_MOMOHUB__BASE_URL="https://hub.example/v1")
    assert r.returncode == 0 and "momohub: https://hub.example/v1" in r.stdout


def test_usage_errors() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "path" in r.stderr
