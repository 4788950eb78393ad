"""Tokens in query strings never reach a log line: redact_query's table."""

from __future__ import annotations

import pytest

from trio_streams.auth.redact import redact_query

TABLE = [
    ("offset=-1&live=sse&access_token=abc.def.ghi", "offset=-1&live=sse&access_token=<redacted>"),
    ("access_token=abc", "access_token=<redacted>"),
    ("access_token=a&access_token=b", "access_token=<redacted>&access_token=<redacted>"),
    ("access%5Ftoken=abc&offset=1", "access%5Ftoken=<redacted>&offset=1"),
    ("ACCESS_TOKEN=abc", "ACCESS_TOKEN=<redacted>"),
    ("access_token", "access_token"),
    ("offset=-1&cursor=access_token", "offset=-1&cursor=access_token"),  # a value, not the name
    ("", ""),
    ("my_access_token=x", "my_access_token=x"),
]


@pytest.mark.parametrize(("query", "logged"), TABLE)
def test_redact_query(query: str, logged: str) -> None:
    assert redact_query(query) == logged
