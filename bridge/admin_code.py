"""The admin code: configured, or made once on the first start and kept beside the database."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import structlog

from bridge.config import Config

log = structlog.get_logger(__name__)


def admin_code_file(config: Config) -> Path:
    db = Path(config.storage.path)
    return db.with_name("admin_code")


def load_or_create_admin_code(config: Config) -> str:
    """With no admin code configured, make one once and keep it beside the database.

    Nobody is admin by accident (an empty code would make every token match). The new code is
    printed in the log once, when it is made, because that is where someone who just started a
    container looks (`docker logs`); later starts only read the file, and never log it.
    """
    if config.auth.admin_code:
        return config.auth.admin_code
    if config.storage.path == ":memory:":
        return secrets.token_urlsafe(18)
    path = admin_code_file(config)
    if path.is_file():
        code = path.read_text(encoding="utf-8").strip()
        if code:
            return code
    path.parent.mkdir(parents=True, exist_ok=True)
    code = secrets.token_urlsafe(18)
    # Made 0600 from the start (never readable by others, not even for a moment), and only if
    # no other process made one meanwhile.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(code + "\n")
    note = (
        "first start: log in as admin with this code; it is kept in the file and not "
        "printed again (set auth.admin_code to choose your own)"
    )
    log.warning("admin_code.generated", code=code, file=str(path), note=note)
    if config.log.level == "error":  # the line above is filtered out: this start is the only one
        print(f"momobridge: admin code {code} (kept in {path}); {note}", file=sys.stderr)
    return code
