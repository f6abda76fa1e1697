"""scripts/get_miochat_build.py on made-up sources (no network, no browser): only dist/ is
taken, from a tarball and from a git repository; a build missing what its page loads is
refused and leaves the previous one in place."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "get_miochat_build.py"
INDEX = (
    b'<link rel="preconnect" href="/api" /><script type="module" src="/assets/js/app.js"></script>'
)
FILES = {
    "dist/index.html": INDEX,
    "dist/assets/js/app.js": b"console.log(1)",
    "dist/assets/js/app.js.map": b"{}",
    "lib/server.js": b"not part of the build",
}


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("get_miochat_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tarball(path: Path, files: dict[str, bytes]) -> Path:
    """As GitHub lays it out: one top folder named after the repository and commit."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**files, "../evil": b"x", "dist/../../evil": b"x"}.items():
            info = tarfile.TarInfo(f"mio-chat-backend-46214d1f/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_gives_dist_only(script: ModuleType, tmp_path: Path, capsys) -> None:
    target = tmp_path / "web" / "miochat"
    assert script.main([str(target), "--tarball", str(tarball(tmp_path / "a.tgz", FILES))]) == 0
    got = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert got == ["assets/js/app.js", "assets/js/app.js.map", "index.html"]
    assert not (tmp_path / "evil").exists()
    assert f'web_root = "{target.resolve()}"' in capsys.readouterr().out


def test_incomplete_build_is_refused_and_the_old_one_kept(
    script: ModuleType, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "miochat"
    target.mkdir()
    (target / "index.html").write_text("previous build")
    broken = {k: v for k, v in FILES.items() if k != "dist/assets/js/app.js"}
    assert script.main([str(target), "--tarball", str(tarball(tmp_path / "b.tgz", broken))]) == 1
    assert "/assets/js/app.js" in capsys.readouterr().err
    assert (target / "index.html").read_text() == "previous build"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_local_git_repository(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    for name, data in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "build")
    monkeypatch.setattr(script, "COMMIT", git("rev-parse", "HEAD"))
    monkeypatch.setenv("MIOCHAT_BACKEND_GIT", str(repo))
    target = tmp_path / "out"
    assert script.main([str(target)]) == 0
    assert (target / "index.html").read_bytes() == INDEX
    assert not (target / "lib").exists()
