"""Client exceptions, and the one table that turns a refusal into one of them.

Owns: the exception classes users catch, and ``error_for_response`` — the
single place where an HTTP status (plus the headers the protocol attaches to
refusals) becomes a ``DurableStreamError`` with a stable ``code``.

Never does IO and never decides whether to retry (``_protocol`` does): by the
time a response reaches this module, retrying is over.

Hierarchy: everything derives from ``DurableStreamError``, so one ``except``
clause catches all client failures; ``FetchError`` marks failures where the
server gave no protocol answer (network, 5xx, exhausted 429s, odd statuses).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# Error codes, as in the upstream client (plus GONE and PAYLOAD_TOO_LARGE for
# the 410 and 413 answers the protocol defines).
NOT_FOUND = "NOT_FOUND"
GONE = "GONE"
CONFLICT = "CONFLICT"
CONFLICT_SEQ = "CONFLICT_SEQ"
CONFLICT_EXISTS = "CONFLICT_EXISTS"
BAD_REQUEST = "BAD_REQUEST"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
RATE_LIMITED = "RATE_LIMITED"
BUSY = "BUSY"
STREAM_CLOSED = "STREAM_CLOSED"
OFFSET_TRIMMED = "OFFSET_TRIMMED"
STALE_EPOCH = "STALE_EPOCH"
SEQUENCE_GAP = "SEQUENCE_GAP"
PARSE_ERROR = "PARSE_ERROR"
ALREADY_CONSUMED = "ALREADY_CONSUMED"
BUFFER_FULL = "BUFFER_FULL"
NETWORK = "NETWORK"
UNKNOWN = "UNKNOWN"

_BY_STATUS = {
    400: BAD_REQUEST,
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    410: GONE,
    413: PAYLOAD_TOO_LARGE,
    429: RATE_LIMITED,
    503: BUSY,
}
_BODY_DETAIL_CHARS_MAX = 300
# The server's answer to a read below the stream's earliest retained offset
# names that offset here (a trio_streams extension; PROTOCOL.md 5.6 gives only the 410).
EARLIEST_OFFSET = "trio-streams-earliest-offset"


class DurableStreamError(Exception):
    """A Durable Streams operation failed. ``code`` is stable; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, code: str = UNKNOWN, status: int | None = None, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, status={self.status}, {self.message!r})"


class FetchError(DurableStreamError):
    """The server gave no protocol answer: a network failure (``status`` None), a 5xx, or an unexpected status."""


class StreamClosedError(DurableStreamError):
    """An append reached a closed stream; ``final_offset`` is where the stream ended."""

    def __init__(self, final_offset: str | None, *, url: str | None = None) -> None:
        super().__init__(f"stream is closed (final offset {final_offset})", STREAM_CLOSED, 409, url=url)
        self.final_offset = final_offset


class OffsetTrimmedError(DurableStreamError):
    """A read asked for data the stream's retention policy has removed (410); the stream itself lives on.

    ``earliest_offset`` is where its retained data now starts: read from there
    to go on, knowing that what lay between is lost. Only servers that name it
    (``Trio-Streams-Earliest-Offset``) raise this; a bare 410 stays ``GONE``.
    """

    def __init__(self, message: str, earliest_offset: str, *, url: str | None = None) -> None:
        super().__init__(message, OFFSET_TRIMMED, 410, url=url)
        self.earliest_offset = earliest_offset


class StaleEpochError(DurableStreamError):
    """A newer producer epoch owns this producer id (zombie fencing); ``current_epoch`` is the server's."""

    def __init__(self, current_epoch: int | None, *, url: str | None = None) -> None:
        super().__init__(f"producer epoch is stale (server epoch {current_epoch})", STALE_EPOCH, 403, url=url)
        self.current_epoch = current_epoch


class SequenceGapError(DurableStreamError):
    """The server expected another producer sequence number and the gap cannot be explained by reordering."""

    def __init__(self, expected_seq: int | None, received_seq: int | None, *, url: str | None = None) -> None:
        super().__init__(f"producer sequence gap: expected {expected_seq}, sent {received_seq}", SEQUENCE_GAP, 409, url=url)
        self.expected_seq = expected_seq
        self.received_seq = received_seq


class ProducerBufferFullError(DurableStreamError):
    """A producer's buffer cannot take this message now; nothing was queued. ``await producer.drain()`` makes room."""

    def __init__(self, buffered_bytes: int, max_buffered_bytes: int) -> None:
        super().__init__(
            f"producer buffer full ({buffered_bytes} of {max_buffered_bytes} bytes): await drain() or flush()",
            BUFFER_FULL,
        )
        self.buffered_bytes = buffered_bytes
        self.max_buffered_bytes = max_buffered_bytes


def error_for_response(
    op: str, status: int, headers: Mapping[str, str], body: bytes, url: str, *, seq_sent: bool = False
) -> DurableStreamError:
    """The exception for a non-2xx answer to ``op`` (create/append/close/produce/read/head/delete).

    Headers come first because the protocol puts the machine-readable reason
    there (``Stream-Closed``, ``Producer-*``); the body only adds a message.
    """
    if status == 409 and headers.get("stream-closed", "").lower() == "true" and op in ("append", "close", "produce"):
        return StreamClosedError(headers.get("stream-next-offset"), url=url)
    if op == "produce" and status == 403 and "producer-epoch" in headers:
        return StaleEpochError(_int_or_none(headers.get("producer-epoch")), url=url)
    if op == "produce" and status == 409 and "producer-expected-seq" in headers:
        expected = _int_or_none(headers.get("producer-expected-seq"))
        return SequenceGapError(expected, _int_or_none(headers.get("producer-received-seq")), url=url)
    message = f"{op} {url}: HTTP {status}{_detail(body)}"
    if status == 410 and headers.get(EARLIEST_OFFSET):
        return OffsetTrimmedError(message, headers[EARLIEST_OFFSET], url=url)
    if status == 409:
        code = CONFLICT_EXISTS if op == "create" else CONFLICT_SEQ if seq_sent else CONFLICT
        return DurableStreamError(message, code, status, url=url)
    if status >= 500 or status == 429 or status not in _BY_STATUS:
        return FetchError(message, _BY_STATUS.get(status, UNKNOWN), status, url=url)
    return DurableStreamError(message, _BY_STATUS[status], status, url=url)


def _detail(body: bytes) -> str:
    """A short human reason from an error body: our server's JSON ``error.message``, else the text."""
    if not body:
        return ""
    text = body[:_BODY_DETAIL_CHARS_MAX * 4].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        text = doc["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(str(text).split())[:_BODY_DETAIL_CHARS_MAX]
    return f": {text}" if text else ""


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
