"""`momobridge healthcheck`: is the bridge on this machine serving? For Docker's HEALTHCHECK.

It reads the same configuration as `serve` (the TOML file plus ``MOMOBRIDGE_*`` variables), so
the probe follows the configured port instead of assuming 3080, and asks ``/healthz``.

Why ``/healthz`` and not ``/readyz``: Docker's health state drives restarts (autoheal, swarm,
compose's ``service_healthy``). ``/readyz`` answers 503 while MomoHub or a provider is down or
slow, and restarting the bridge cannot fix an outside outage; meanwhile the hub still serves its
clients, the outbox and the bot frameworks. ``/healthz`` answers as long as the process serves
HTTP, which is exactly what a restart can repair. Upstream state stays visible in ``/readyz``.

Only the standard library is used for the request: the probe runs every 30 s inside the
container and should cost a few milliseconds of CPU beyond loading the config.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from bridge.config import Config, ConfigError
from bridge.config_load import load_config

# Docker's own --timeout is 5 s: answer well before it, so a hung server reads as "unhealthy"
# with our reason rather than Docker's bare timeout.
DEFAULT_TIMEOUT = 3.0

# Addresses a server binds to mean "every interface"; the probe then uses loopback.
_ANY_V4 = {"", "0.0.0.0"}
_ANY_V6 = {"::", "[::]"}


def probe_url(config: Config) -> str:
    """The /healthz URL of the server this config describes, reached from the same host."""
    host = config.server.host.strip()
    if host in _ANY_V4:
        host = "127.0.0.1"
    elif host in _ANY_V6:
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a literal IPv6 address
    return f"http://{host}:{config.server.port}/healthz"


def check(url: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """(healthy, one line saying why). Healthy means a 200 whose JSON says status ok."""
    # Never through a proxy: HTTP_PROXY (which Docker copies into containers, and users set to
    # reach their providers) would send a loopback probe elsewhere and fail it for good.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            body = answer.read(64 * 1024)
    except urllib.error.HTTPError as e:
        return False, f"{url}: HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, f"{url}: {reason}"
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return False, f"{url}: not the bridge's health answer"
    if status != "ok":
        return False, f"{url}: status {status!r}"
    return True, f"{url}: ok"


def run(config_path: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Exit status for the command: 0 healthy, 1 not (or the config cannot be read)."""
    try:
        config, _ = load_config(config_path)
    except ConfigError as e:
        print(f"unhealthy: config error: {e}", file=sys.stderr)
        return 1
    if config.server.port == 0:
        # Port 0 lets the OS pick one at start; nothing outside the process knows which.
        print("unhealthy: server.port is 0 (any), so there is no port to probe", file=sys.stderr)
        return 1
    healthy, why = check(probe_url(config), timeout)
    print(
        ("healthy: " if healthy else "unhealthy: ") + why,
        file=sys.stdout if healthy else sys.stderr,
    )
    return 0 if healthy else 1
