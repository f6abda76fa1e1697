#!/usr/bin/env python3
"""Fetch the mio-chat web client build the bridge is tested with, for `[miochat] web_root`.

The client's production build is not published on its own: it ships as `dist/` inside the
reference server's repository, one commit per frontend change. This script takes `dist/` of
the pinned commit and nothing else, checks that the page and the assets it loads are there, and
prints the config line to use.

    python3 scripts/get_miochat_build.py [TARGET]          # default target: web/miochat

Sources, first match wins:
  --tarball FILE              a `.tar.gz` of the repository at the pinned commit, downloaded
                              elsewhere (for machines without access to GitHub)
  MIOCHAT_BACKEND_GIT=PATH    a local clone or bare mirror of the repository (read with git;
                              it only needs to contain the pinned commit)
  otherwise                   GitHub's tarball of the pinned commit

Only the standard library (and `git` for a local repository) is needed, so it runs before the
virtualenv exists.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

REPO = "Pretend-to/mio-chat-backend"
# The backend commit whose dist/ is the build of frontend 87eb4e7 (the client the bridge's
# Socket.IO transport follows). Change both together.
COMMIT = "46214d1fcd94f5461dcccacfcf691a1108acfef8"
TARBALL_URL = f"https://codeload.github.com/{REPO}/tar.gz/{COMMIT}"
DEFAULT_TARGET = "web/miochat"
DOWNLOAD_TIMEOUT = 30.0

# Source maps of third-party bundles are several MiB; some mirrors leave such large files out.
# The page never loads them, so a missing one is only worth a warning.
OPTIONAL_SUFFIXES = (".map",)


class BuildError(Exception):
    """A failure with a message meant for the person running the script."""


# ----- sources: each yields (path relative to dist/, bytes) --------------------------------------


def _dist_relative(path: str) -> PurePosixPath | None:
    """``dist/a/b`` → ``a/b``; None for anything outside dist/ or trying to leave it."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2 or parts[0] != "dist" or any(p in ("..", "") for p in parts):
        return None
    if PurePosixPath(path).is_absolute():
        return None
    return PurePosixPath(*parts[1:])


def from_tarball(stream: io.BufferedIOBase) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Regular files under ``<top>/dist/`` of a GitHub tarball (read as a stream, so a
    download is never held whole in memory or on disk)."""
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            # GitHub tarballs have one top-level folder named after the repository and commit.
            _, _, inner = member.name.removeprefix("./").partition("/")
            rel = _dist_relative(inner)
            if rel is None or not member.isfile():
                continue  # links and devices are never part of a web build
            f = tar.extractfile(member)
            if f is not None:
                yield rel, f.read()


def from_git(git_dir: str) -> Iterator[tuple[PurePosixPath, bytes]]:
    """dist/ of the pinned commit from a local clone or bare repository, blob by blob (unlike
    `git archive`, a blob missing from a partial mirror does not abort the whole export)."""
    listing = _git(git_dir, "ls-tree", "-r", "-z", COMMIT, "--", "dist")
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.partition(b"\t")
        mode, kind, sha = meta.split()
        rel = _dist_relative(name.decode())
        if rel is None or kind != b"blob" or mode == b"120000":  # symlinks are skipped
            continue
        try:
            yield rel, _git(git_dir, "cat-file", "blob", sha.decode())
        except BuildError:
            if rel.suffix in OPTIONAL_SUFFIXES:
                print(f"warning: {rel} is missing from {git_dir}; skipped", file=sys.stderr)
                continue
            raise


def _git(git_dir: str, *args: str) -> bytes:
    if shutil.which("git") is None:
        raise BuildError("MIOCHAT_BACKEND_GIT is set but git is not installed")
    # --git-dir works for bare repositories; a clone's work tree is found through its .git.
    path = Path(git_dir)
    if (path / ".git").exists():
        path = path / ".git"
    done = subprocess.run(["git", f"--git-dir={path}", *args], capture_output=True, check=False)
    if done.returncode != 0:
        msg = done.stderr.decode(errors="replace").strip()
        raise BuildError(f"git {args[0]} in {git_dir} failed: {msg}")
    return done.stdout


def download() -> Iterator[tuple[PurePosixPath, bytes]]:
    print(f"downloading {TARBALL_URL}", file=sys.stderr)
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=DOWNLOAD_TIMEOUT) as resp:
            yield from from_tarball(resp)
    except (urllib.error.URLError, TimeoutError, OSError, tarfile.TarError) as e:
        reason = getattr(e, "reason", e)
        raise BuildError(
            f"could not download {TARBALL_URL}: {reason}\n"
            "Without access to GitHub from here, either download that URL elsewhere and run\n"
            "  python3 scripts/get_miochat_build.py --tarball <file.tar.gz>\n"
            f"or point MIOCHAT_BACKEND_GIT at a clone of https://github.com/{REPO}\n"
            f"that contains commit {COMMIT}."
        ) from e


# ----- writing and checking ---------------------------------------------------------------------


def write_files(files: Iterator[tuple[PurePosixPath, bytes]], into: Path) -> int:
    count = 0
    for rel, data in files:
        dest = into.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        count += 1
    return count


# Local files index.html loads: the entry script, styles, icons, manifest. Only paths naming a
# file (with an extension): the page also preconnects to `/api`, which is the server's.
_LOCAL_REF = re.compile(r"""(?:src|href)\s*=\s*["'](/[^"'/][^"'?#]*\.[A-Za-z0-9]+)["'?#]""")


def check_build(root: Path) -> None:
    index = root / "index.html"
    if not index.is_file():
        raise BuildError(f"{index} is missing: this is not the mio-chat build")
    html = index.read_text(encoding="utf-8", errors="replace")
    missing = [
        ref
        for ref in sorted(set(_LOCAL_REF.findall(html)))
        if not (root / ref.lstrip("/")).is_file()
    ]
    if missing:
        raise BuildError(f"index.html refers to files the build lacks: {', '.join(missing)}")


def fetch(target: Path, source: Iterator[tuple[PurePosixPath, bytes]]) -> None:
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and swapped in only once complete and checked, so a failed run
    # leaves a previous build untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        count = write_files(source, staging)
        if count == 0:
            raise BuildError(f"no dist/ files found at commit {COMMIT}")
        check_build(staging)
        if target.exists():
            old = target.with_name(f".{target.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{count} files in {target}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default=DEFAULT_TARGET, help="where to put the build")
    parser.add_argument("--tarball", type=Path, help="a downloaded tarball of the pinned commit")
    args = parser.parse_args(argv)
    target = Path(args.target)
    git_dir = os.environ.get("MIOCHAT_BACKEND_GIT", "")
    try:
        if args.tarball is not None:
            with args.tarball.open("rb") as f:
                fetch(target, from_tarball(f))
        elif git_dir:
            fetch(target, from_git(git_dir))
        else:
            fetch(target, download())
    except (BuildError, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # What to put in config.toml (and the env var the browser tests read).
    print("[miochat]")
    print("socketio = true")
    print(f'web_root = "{target.resolve()}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
