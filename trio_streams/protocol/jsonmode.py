"""JSON mode (PROTOCOL.md 9.1): message framing for application/json streams.

Owns: turning a request body into stored messages and stored messages back
into a JSON array. Never: touches storage or HTTP.

Stored form: each message is its compact JSON encoding followed by ``\\n``.
Compact JSON never contains a raw newline (newlines inside strings are
escaped), so ``\\n`` is an unambiguous message terminator: chunking cuts after
a ``\\n``, counting messages counts ``\\n``, and a read of stored bytes becomes
a JSON array by swapping terminators for commas — no re-encoding on reads.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

from .errors import bad_request

TERMINATOR: Final = b"\n"
EMPTY_ARRAY: Final = b"[]"


def encode_messages(body: bytes, *, allow_empty: bool) -> bytes:
    """Validates ``body`` and returns it as stored messages (one array level flattened)."""
    exact = _LONG_DIGIT_RUN.search(body) is not None
    items = _parse_exact(body) if exact else _parse(body)
    if not items and not allow_empty:
        raise bad_request("an append of an empty JSON array has no messages", "EMPTY_JSON_ARRAY")
    if exact:
        return b"".join(_dumps_exact(item) + TERMINATOR for item in items)
    return b"".join(orjson.dumps(item) + TERMINATOR for item in items)


# orjson turns integers outside 64 bits into floats, silently changing them.
# A body with a run of 19+ digits may hold one, so it takes the exact (slower)
# stdlib path; everything else takes the fast one.
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{19,}")


def _parse(body: bytes) -> list[Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"invalid JSON: {exc}", "INVALID_JSON") from None
    return value if isinstance(value, list) else [value]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_exact(body: bytes) -> list[Any]:
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad_request(f"invalid JSON: {exc}", "INVALID_JSON") from None
    return value if isinstance(value, list) else [value]


def _dumps_exact(item: Any) -> bytes:
    try:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:  # lone surrogates, non-finite floats
        raise bad_request(f"unsupported JSON value: {exc}", "INVALID_JSON") from None


def to_array(stored: bytes | memoryview) -> bytes:
    """Stored messages (whole ones only) → the JSON array a reader receives."""
    if not stored:
        return EMPTY_ARRAY
    data = bytes(stored)
    assert data.endswith(TERMINATOR), "JSON reads must end on a message boundary"
    return b"[" + data[:-1].replace(TERMINATOR, b",") + b"]"


def message_count(stored: bytes | memoryview) -> int:
    return bytes(stored).count(TERMINATOR)
