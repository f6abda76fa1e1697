"""The command line of `momobridge` run from this checkout (tests start it as a subprocess)."""

from __future__ import annotations

import sys


def momobridge(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "bridge.cli", *args)
