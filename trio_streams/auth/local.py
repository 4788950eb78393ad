"""Who counts as the operator on this machine when no authentication is configured.

Admin operations (and /metrics with ``metrics_require_admin``) then answer
only a local operator: a loopback peer, addressed by a loopback name (a
DNS-rebound name is not), that is neither a reverse proxy nor a browser.
"""

from __future__ import annotations

import ipaddress

from ..http.asgi import Request

# Headers that mean the request is not an operator's own on this machine: a
# reverse proxy's (it forwards whoever its client is from 127.0.0.1), or a
# browser's (a web page the operator has open could otherwise read a backup).
_NOT_LOCAL_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "origin", "sec-fetch-site", "sec-fetch-mode")


def local_operator(req: Request) -> bool:
    client = req.scope.get("client")
    if not client or any(name in req.headers for name in _NOT_LOCAL_HEADERS):
        return False
    return is_loopback(str(client[0])) and is_loopback(_host_name(req.headers.get("host", "")))


def is_loopback(name: str) -> bool:
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 literal without brackets."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
