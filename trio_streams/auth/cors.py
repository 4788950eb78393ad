"""CORS: which web origins may call, decided per request from its ``Origin``.

Pure. The allow-list is exact origins, ``*`` (any; only when written) or
none. A listed origin is echoed back with ``Vary: Origin`` so a cache never
serves one origin's answer to another. Credentials are bearer tokens the
page sends itself, never cookies, so ``Access-Control-Allow-Credentials`` is
never sent: a browser will not attach cookies or HTTP auth on our behalf.
"""

from __future__ import annotations

import dataclasses

from ..protocol import urls

ANY = "*"
NONE = "none"
Headers = list[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True)
class AllowOrigins:
    any: bool
    origins: frozenset[urls.Origin]


def effective_allow_origins(value: str, auth_configured: bool) -> str:
    """The setting with its default filled in: today's open ``*`` only while nothing is protected."""
    if value.strip():
        return value
    return NONE if auth_configured else ANY


def static_origin(value: str) -> str:
    """Access-Control-Allow-Origin for answers given before the request's Origin is read
    (the connection guard's errors): ``*`` when any origin is allowed, else none."""
    return ANY if value.strip() == ANY else ""


def parse_allow_origins(value: str) -> AllowOrigins:
    """The ``cors_allow_origins`` setting; ValueError naming a malformed entry."""
    value = value.strip()
    if not value or value.lower() == NONE:
        return AllowOrigins(False, frozenset())
    if value == ANY:
        return AllowOrigins(True, frozenset())
    origins = set()
    for entry in value.split(","):
        origin = parse_origin(entry.strip().rstrip("/"))
        if origin is None:
            raise ValueError(f"cors_allow_origins: {entry.strip()[:80]!r} is not an origin "
                             "(scheme://host[:port]), '*' or 'none'")
        origins.add(origin)
    return AllowOrigins(False, frozenset(origins))


def parse_origin(value: str) -> urls.Origin | None:
    scheme, sep, authority = value.partition("://")
    return urls.parse_origin(scheme, authority) if sep else None


class Cors:
    def __init__(self, allowed: AllowOrigins, exposed_headers: str) -> None:
        self.allowed = allowed
        self._exposed = (b"access-control-expose-headers", exposed_headers.encode())
        self._any = [(b"access-control-allow-origin", b"*"), self._exposed]

    def headers(self, origin: str | None) -> Headers:
        """The CORS headers of a response to a request from ``origin`` (its Origin header)."""
        if self.allowed.any:
            return self._any
        vary = (b"vary", b"Origin")
        if origin is None or parse_origin(origin) not in self.allowed.origins:
            return [vary]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), vary, self._exposed]
