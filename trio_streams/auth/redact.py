"""Query strings fit for a log line: every ``access_token`` value replaced.

Anything that logs a URL (the access log, error messages) passes its query
through ``redact_query``: with ``auth_query_token`` on, the token is in it.
Pure; works on the raw (still percent-encoded) query, so a parameter name
written ``access%5Ftoken`` is caught too.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from .guard import QUERY_TOKEN

REDACTED = "<redacted>"


def redact_query(query: str) -> str:
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, sep, _ = part.partition("=")
        if unquote_plus(name).strip().lower() == QUERY_TOKEN:
            parts[i] = f"{name}{sep}{REDACTED}" if sep else name
    return "&".join(parts)
