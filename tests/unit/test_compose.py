"""docker-compose.yml validates with Debian's docker-compose (1.29) as shipped and with its
commented NapCat and NoneBot services uncommented, and has the shape docs/deploy.md describes.

Needs the `docker-compose` binary (no Docker daemon): skipped without it locally, a failure in CI
(`CI=true`), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
QQ_URL = "ws://momobridge:3080/onebot/v11/ws"


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(
            "docker-compose is missing: .ci/run installs it (apt-get install docker-compose)"
        )
    pytest.skip(
        "docker-compose not installed (apt-get install docker-compose) - compose file not validated"
    )


def _load_yaml(text: str, compose: str) -> Any:
    """YAML → Python, with PyYAML from this environment or else from docker-compose's own Python
    (Debian's docker-compose depends on python3-yaml)."""
    try:
        import yaml
    except ImportError:
        shebang = Path(compose).read_text(errors="replace").splitlines()[0]
        python = shebang.removeprefix("#!").split()[0] if shebang.startswith("#!") else "python3"
        out = subprocess.run(
            [
                python,
                "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
            ],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)
    return yaml.safe_load(text)


def uncomment_services(text: str) -> str:
    """The file with its commented service blocks (`  # name:` and the `  #   ...` lines under
    it, up to the next blank line) turned on, the way the file's comments tell a user to."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if re.fullmatch(r"  # [a-z][a-z0-9_-]*:", line):
            inside = True
        elif not line.strip():
            inside = False
        out.append("  " + line[4:] if inside and line.startswith("  # ") else line)
    return "\n".join(out) + "\n"


def _project(tmp_path: Path, compose_text: str) -> Path:
    """A copy of what the file refers to: the compose file, .env made from .env.example, and the
    NoneBot example's build folder."""
    (tmp_path / "docker-compose.yml").write_text(compose_text)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    shutil.copytree(ROOT / "docs" / "examples" / "nonebot", tmp_path / "docs/examples/nonebot")
    return tmp_path


def _config(compose: str, project: Path) -> dict[str, Any]:
    """`docker-compose config` as parsed YAML; a validation error fails with compose's message."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMOBRIDGE_", "COMPOSE_"))}
    run = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, f"docker-compose config failed:\n{run.stderr}"
    return _load_yaml(run.stdout, compose)


def test_the_file_as_shipped_validates(tmp_path: Path) -> None:
    compose = _compose_binary()
    config = _config(compose, _project(tmp_path, COMPOSE.read_text()))
    assert set(config["services"]) == {"momobridge"}, "only the bridge is on by default"
    bridge = config["services"]["momobridge"]
    assert bridge["image"] == "momobridge:latest"
    assert bridge["build"]["context"] == str(tmp_path)
    assert f"{tmp_path}/data:/data:rw" in bridge["volumes"]
    assert list(bridge["networks"]) == ["momo"]
    assert "healthcheck" not in bridge, "the image's own HEALTHCHECK applies"
    assert {"published": 3080, "target": 3080} in [
        {k: int(v) for k, v in p.items() if k in ("published", "target")} for p in bridge["ports"]
    ]
    # env_file is inlined by `config`: the variables of .env.example arrive in the container.
    assert "MOMOBRIDGE_AUTH__ADMIN_CODE" in bridge["environment"]


def test_the_raw_file_reads_secrets_from_dot_env() -> None:
    compose = _compose_binary()
    raw = _load_yaml(COMPOSE.read_text(), compose)
    bridge = raw["services"]["momobridge"]
    assert bridge["env_file"] in (".env", [".env"])
    assert bridge["restart"] == "unless-stopped"
    assert "environment" not in bridge, "settings belong in .env, not in the compose file"
    assert set(raw["networks"]) == {"momo"}


def test_the_commented_services_validate_when_uncommented(tmp_path: Path) -> None:
    compose = _compose_binary()
    text = uncomment_services(COMPOSE.read_text())
    config = _config(compose, _project(tmp_path, text))
    services = config["services"]
    assert set(services) == {"momobridge", "napcat", "nonebot"}
    for name in services:
        assert list(services[name]["networks"]) == ["momo"], name
    assert services["napcat"]["image"] == "mlikiowa/napcat-docker:latest"
    assert services["nonebot"]["build"]["context"] == str(tmp_path / "docs/examples/nonebot")


def test_the_napcat_block_points_at_the_bridge_by_service_name() -> None:
    text = COMPOSE.read_text()
    napcat = text[text.index("----- QQ through NapCat") : text.index("#   image: mlikiowa")]
    assert f"URL    {QQ_URL}" in napcat
    assert "127.0.0.1:3080" not in napcat
    # .env.example names every variable the blocks' comments ask for.
    example = (ROOT / ".env.example").read_text()
    for name in re.findall(r"\b((?:MOMOBRIDGE|NAPCAT|NONEBOT)_[A-Z0-9_]+)=", text):
        assert f"{name}=" in example, name


def test_dot_env_is_ignored_by_git() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def _fenced_block(markdown: str, lang: str) -> str:
    match = re.search(rf"^```{lang}\n(.*?)^```$", markdown, re.S | re.M)
    assert match, f"no ```{lang} block"
    return match.group(1)


@pytest.mark.parametrize(
    ("lang", "example"),
    [("caddy", "Caddyfile"), ("nginx", "nginx.conf"), ("ini", "momobridge.service")],
)
def test_deploy_guide_shows_the_shipped_example_files(lang: str, example: str) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert _fenced_block(guide, lang) == (ROOT / "docs" / "examples" / example).read_text()


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"^```.*?^```$", "", markdown, flags=re.S | re.M)
    heads = re.findall(r"^#{1,6} (.+)$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_deploy_guide_links_resolve() -> None:
    docs = ROOT / "docs"
    for page in ("deploy.md", "qq.md"):
        text = (docs / page).read_text()
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path = (docs / target) if target else docs / page
            assert path.exists(), f"{page}: {target}"
            if anchor:
                assert anchor in _anchors(path.read_text()), f"{page}: {target}#{anchor}"


# ----- docker-compose.cluster.yml (docs/scale.md) -----------------------------------------------


def test_the_cluster_file_validates_with_two_nodes_on_one_database_and_redis(
    tmp_path: Path,
) -> None:
    compose = _compose_binary()
    (tmp_path / "docker-compose.yml").write_text((ROOT / "docker-compose.cluster.yml").read_text())
    (tmp_path / ".env").write_text(
        (ROOT / ".env.example").read_text()
        + "\nMOMOBRIDGE_AUTH__ADMIN_CODE=admin-code\nPOSTGRES_PASSWORD=pg-secret\n"
    )
    config = _config(compose, tmp_path)
    services = config["services"]
    assert set(services) == {"node-a", "node-b", "postgres", "redis", "nginx"}
    for name in ("node-a", "node-b"):
        env = services[name]["environment"]
        assert env["MOMOBRIDGE_CLUSTER__NODE_ID"] == name
        assert env["MOMOBRIDGE_CLUSTER__REDIS_URL"] == "redis://redis:6379/0"
        assert env["MOMOBRIDGE_STORAGE__URL"] == (
            "postgresql://momobridge:pg-secret@postgres:5432/momobridge"
        )
        assert env["MOMOBRIDGE_AUTH__ADMIN_CODE"] == "admin-code"
    assert services["node-a"]["volumes"] != services["node-b"]["volumes"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-secret"
    nginx_conf = ROOT / "docs/examples/nginx-cluster.conf"
    assert "server node-a:3080" in nginx_conf.read_text()
    assert "server node-b:3080" in nginx_conf.read_text()


def test_the_cluster_file_refuses_to_start_without_the_shared_secrets(tmp_path: Path) -> None:
    compose = _compose_binary()
    (tmp_path / "docker-compose.yml").write_text((ROOT / "docker-compose.cluster.yml").read_text())
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMOBRIDGE_", "POSTGRES_"))}
    run = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode != 0
    assert "MOMOBRIDGE_AUTH__ADMIN_CODE" in run.stderr or "POSTGRES_PASSWORD" in run.stderr
