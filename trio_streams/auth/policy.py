"""What a request needs: pure, from its method and URL path alone.

Reads (catch-up, long-poll, SSE, HEAD) need ``read``; PUT and POST (create,
append, close) ``write``, a fork also ``read`` on its source (added by the
guard once the header is parsed); DELETE ``delete``. Preflight (OPTIONS)
never needs a token: browsers send none. ``/healthz*`` are public;
``/metrics`` needs ``admin`` only when ``metrics_require_admin``; ``/admin/*``
needs ``admin``. Any other method or path needs nothing here: the router
answers it 404 or 405, which reveals nothing.
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


def request_kind(method: str, url_path: str, stream_prefix: str, metrics_require_admin: bool) -> str:
    """PUBLIC (no token), ADMIN (the admin scope) or STREAM (a scope on the stream)."""
    if url_path == HEALTH_PATH or url_path.startswith(HEALTH_PATH + "/"):
        return PUBLIC
    if url_path == "/metrics":
        return ADMIN if metrics_require_admin else PUBLIC
    if url_path.startswith(ADMIN_PREFIX):
        return ADMIN
    if url_path.startswith(stream_prefix) and method in STREAM_ACTIONS:
        return STREAM
    return PUBLIC


def stream_needs(method: str, path: str, fork_source: str | None = None) -> tuple[Need, ...]:
    own = Need(STREAM_ACTIONS[method], path)
    if method == "PUT" and fork_source is not None:
        return (own, Need("read", fork_source))
    return (own,)
