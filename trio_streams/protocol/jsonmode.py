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

from typing import Final

import orjson

from .errors import bad_request

TERMINATOR: Final = b"\n"
EMPTY_ARRAY: Final = b"[]"


def encode_messages(body: bytes, *, allow_empty: bool) -> bytes:
    """Validates ``body`` and returns it as stored messages (one array level flattened)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"invalid JSON: {exc}", "INVALID_JSON") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise bad_request("an append of an empty JSON array has no messages", "EMPTY_JSON_ARRAY")
    try:
        return b"".join(orjson.dumps(item) + TERMINATOR for item in items)
    except orjson.JSONEncodeError as exc:  # e.g. integers beyond 64 bits
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
