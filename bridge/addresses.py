"""Listen addresses as URL hosts: what a client on this machine should dial."""

from __future__ import annotations

import ipaddress


def url_host(configured: str, bound: str) -> str:
    """The host part of a URL for a server bound to ``bound`` (configured as ``configured``):
    a wildcard becomes loopback, an IPv6 address gets its brackets."""
    host = configured or bound
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{ip}]" if ip.version == 6 else str(ip)
