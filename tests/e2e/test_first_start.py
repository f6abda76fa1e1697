"""`momobridge serve` as a real process, on its first and later starts: the generated admin code
is printed once, and a storage directory it may not write stops it with the fix named."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from bridge.storage_dir import check_storage_dir
from tests.e2e.test_health import ServeProcess, closed_port
from tests.support.cli import momobridge

ROOT_DIR = Path(__file__).resolve().parents[2]
WAIT = 20.0


def serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMOBRIDGE_")}
    return {**env, "PYTHONPATH": str(ROOT_DIR), "PYTHONUNBUFFERED": "1"}


def write_config(path: Path, data_dir: Path, port: int) -> Path:
    # No admin_code: the bridge makes one. No MomoHub: nothing but the hub needs to start.
    path.write_text(
        f'[server]\nport = {port}\n[storage]\npath = "{data_dir / "bridge.db"}"\n'
        '[momohub]\nenabled = false\n[log]\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


async def start(config: Path, cwd: Path, wrapper: tuple[str, ...] = ()) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        *wrapper,
        *momobridge("serve", "--config", str(config)),
        cwd=cwd,
        env=serve_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return ServeProcess(proc)


async def test_admin_code_is_printed_on_first_start_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.toml", data, closed_port())

    first = await start(config, tmp_path)
    try:
        generated, _ = await first.wait_log("admin_code.generated")
        await first.wait_log("momobridge.ready")
    finally:
        assert await first.stop() == 0
    code = (data / "admin_code").read_text(encoding="utf-8").strip()
    assert generated["code"] == code
    assert generated["file"] == str(data / "admin_code")
    assert generated["level"] == "warning"
    assert [e for e in first.lines if e.get("event") == "admin_code.generated"] == [generated]

    second = await start(config, tmp_path)
    try:
        await second.wait_log("momobridge.ready")
    finally:
        assert await second.stop() == 0
    assert not [e for e in second.lines if e.get("event") == "admin_code.generated"]
    assert all(code not in str(e) for e in second.lines)
    assert (data / "admin_code").read_text(encoding="utf-8").strip() == code


# Root passes every permission check, so as root the server runs without the two capabilities
# that let it (setpriv, util-linux): it then meets a directory owned by another uid exactly as
# the image's uid 10001 meets a bind-mounted host directory.
NO_DAC = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
)
OTHER_UID = 4242


async def test_a_storage_dir_it_cannot_write_names_the_fix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "bridge.db").touch()  # as left by an earlier run under another owner
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to run without root's permission override")
        os.chown(data, OTHER_UID, OTHER_UID)
        os.chown(data / "bridge.db", OTHER_UID, OTHER_UID)
        owner = f"owned by uid {OTHER_UID}, mode 755"
        wrapper = NO_DAC
    else:
        data.chmod(0o555)
        owner = f"owned by uid {os.getuid()}, mode 555"
    config = write_config(tmp_path / "config.toml", data, closed_port())

    serve = await start(config, tmp_path, wrapper)
    try:
        async with asyncio.timeout(WAIT):
            code = await serve.proc.wait()
    finally:
        await serve.stop()
        data.chmod(0o755)
    assert code == 1
    failed = [e for e in serve.lines if e.get("event") == "startup.failed"]
    assert len(failed) == 1, serve.lines
    error = failed[0]["error"]
    uid, gid = os.getuid(), os.getgid()
    assert f"cannot write {data} ({owner}; the bridge runs as uid {uid}" in error
    assert f"`sudo chown -R {uid}:{gid} <the host directory>`" in error
    # One JSON log line, no traceback on stderr.
    assert not [e for e in serve.lines if e.get("event") == "<not json>"], serve.lines
    assert not (data / "admin_code").exists()


def test_a_writable_dir_passes_and_is_made_when_missing(tmp_path: Path) -> None:
    check_storage_dir(str(tmp_path / "new" / "bridge.db"))
    assert (tmp_path / "new").is_dir()
    assert list((tmp_path / "new").iterdir()) == []  # the probe file is gone again
    check_storage_dir(":memory:")


def test_a_config_file_it_cannot_read_names_the_fix(tmp_path: Path) -> None:
    """A config.toml bind-mounted with the host user's owner and mode 600: one line naming the
    file, its owner and the chown, not a traceback."""
    import subprocess

    config = write_config(tmp_path / "config.toml", tmp_path / "data", closed_port())
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to run without root's permission override")
        os.chown(config, OTHER_UID, OTHER_UID)
        wrapper = NO_DAC
    config.chmod(0o600)
    for command in (["serve", "--config"], ["check-config"]):
        done = subprocess.run(
            [*wrapper, sys.executable, "-m", "bridge.cli", *command, str(config)],
            cwd=tmp_path,
            env=serve_env(),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        out = done.stdout + done.stderr
        assert done.returncode != 0, out
        assert f"{config}: cannot be read" in out and "chown" in out, out
        assert "Traceback" not in out, out


def test_files_it_only_reads_or_does_not_use_need_not_be_writable(tmp_path: Path) -> None:
    """An admin_code another user wrote (readable, not writable) is fine, and so is a
    sandbox.db when the embedded sandbox is not in use; a sandbox.db it would write is not."""
    import subprocess

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run without root's permission override")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("admin_code", "sandbox.db"):
        (data / name).write_text("x\n", encoding="utf-8")
        (data / name).chmod(0o644)
        if os.geteuid() == 0:
            os.chown(data / name, OTHER_UID, OTHER_UID)
        else:
            (data / name).chmod(0o444)
    wrapper = NO_DAC if os.geteuid() == 0 else ()
    check = "from bridge.storage_dir import check_storage_dir as c; c({!r}, sandbox={})"
    for sandbox, ok in ((False, True), (True, False)):
        code = check.format(str(data / "bridge.db"), sandbox)
        done = subprocess.run(
            [*wrapper, sys.executable, "-c", code],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert (done.returncode == 0) is ok, done.stderr
        if not ok:
            assert f"cannot write {data / 'sandbox.db'}" in done.stderr
