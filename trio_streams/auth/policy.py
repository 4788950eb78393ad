"""What a request needs: pure, from its method and URL path alone.

Reads (catch-up, long-poll, SSE, HEAD) need ``read``; PUT and POST (create,
append, close) ``write``, a fork also ``read`` on its source (added by the
guard once the header is parsed); DELETE ``delete``. Preflight (OPTIONS)
never needs a token: browsers send none. ``/healthz*`` are public;
``/metrics`` needs ``admin`` only when ``metrics_require_admin``; ``/admin/*``
needs ``admin``. Any other method or path needs nothing here: the router
answers it 404 or 405, which reveals nothing.

Reserved ``{prefix}__ds/`` routes (subscriptions): the control plane needs
``admin`` (SUBSCRIPTION_ADMIN: without authentication it is open, like every
stream route, not loopback-only like ``/admin/``: the official suite's
clients send browser fetch headers); ``claim`` needs any valid token (SERVICE: the handler checks
``read`` on the subscription's wake stream, which the path does not name);
``callback``, ``ack`` and ``release`` carry a wake-scoped token the handler
verifies, and ``jwks.json`` is public: PUBLIC here.
"""

from __future__ import annotations

import dataclasses

STREAM_ACTIONS = {"GET": "read", "HEAD": "read", "PUT": "write", "POST": "write", "DELETE": "delete"}
ADMIN_PREFIX = "/admin/"
HEALTH_PATH = "/healthz"


@dataclasses.dataclass(frozen=True)
class Need:
    action: str
    # Stream path below the prefix; None for an operation on no stream (admin).
    path: str | None = None


PUBLIC = "public"
ADMIN = "admin"
STREAM = "stream"
SERVICE = "service"
SUBSCRIPTION_ADMIN = "subscription_admin"
DS_SEGMENT = "__ds"
_WAKE_TOKEN_ACTIONS = ("callback", "ack", "release")


def request_kind(method: str, url_path: str, stream_prefix: str, metrics_require_admin: bool) -> str:
    """PUBLIC (no token), ADMIN (the admin scope) or STREAM (a scope on the stream)."""
    if url_path == HEALTH_PATH or url_path.startswith(HEALTH_PATH + "/"):
        return PUBLIC
    if url_path == "/metrics":
        return ADMIN if metrics_require_admin else PUBLIC
    if url_path.startswith(ADMIN_PREFIX):
        return ADMIN
    rest = url_path[len(stream_prefix):] if url_path.startswith(stream_prefix) else None
    if rest is not None and (rest == DS_SEGMENT or rest.startswith(DS_SEGMENT + "/")):
        return _reserved_kind(method, rest[len(DS_SEGMENT) + 1:])
    if rest is not None and method in STREAM_ACTIONS:
        return STREAM
    return PUBLIC


def _reserved_kind(method: str, rest: str) -> str:
    """``rest``: the path below ``__ds/``."""
    if method == "OPTIONS" or rest == "jwks.json":
        return PUBLIC
    parts = rest.split("/")
    if len(parts) == 3 and parts[0] == "subscriptions" and method == "POST":
        if parts[2] in _WAKE_TOKEN_ACTIONS:
            return PUBLIC
        if parts[2] == "claim":
            return SERVICE
    return SUBSCRIPTION_ADMIN


def stream_needs(method: str, path: str, fork_source: str | None = None) -> tuple[Need, ...]:
    own = Need(STREAM_ACTIONS[method], path)
    if method == "PUT" and fork_source is not None:
        return (own, Need("read", fork_source))
    return (own,)
