"""Durable Streams client rules, without IO.

Owns: header and query names; how a read answer becomes a ``Chunk`` (data
plus the position after it); the read state machine (which request comes
next: catch-up, long-poll or SSE, and when a session is finished); how
appended values are encoded and framed into one POST body; the create and
HEAD headers; and every retry decision (which failures are transient, how
long to back off).

Never does IO, never sleeps, never imports httpx or anyio: callers pass
statuses, header mappings and bytes in, and act on the answers. That keeps
every decision testable with plain values (tests/client/test_client_protocol.py).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Union

from .errors import PARSE_ERROR, DurableStreamError, OffsetTrimmedError

NEXT_OFFSET = "stream-next-offset"
CURSOR = "stream-cursor"
UP_TO_DATE = "stream-up-to-date"
CLOSED = "stream-closed"
TTL = "stream-ttl"
EXPIRES_AT = "stream-expires-at"
SEQ = "stream-seq"
SSE_ENCODING = "stream-sse-data-encoding"
PRODUCER_ID = "producer-id"
PRODUCER_EPOCH = "producer-epoch"
PRODUCER_SEQ = "producer-seq"
FORKED_FROM = "stream-forked-from"
FORK_OFFSET = "stream-fork-offset"
FORK_SUB_OFFSET = "stream-fork-sub-offset"

START = "-1"
NOW = "now"
CATCH_UP: Final = "catch-up"
LONG_POLL: Final = "long-poll"
SSE: Final = "sse"
RESERVED_PARAMS = frozenset({"offset", "live", "cursor"})
DEFAULT_CONTENT_TYPE = "application/octet-stream"

LiveMode = Union[bool, Literal["long-poll", "sse"]]
Mode = Literal["catch-up", "long-poll", "sse"]


# -- content types -------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    return media_type(content_type) == "application/json"


def sse_native(content_type: str | None) -> bool:
    """JSON and text/* travel over SSE as UTF-8; everything else as base64 (PROTOCOL.md 5.8)."""
    mt = media_type(content_type)
    return mt == "application/json" or mt.startswith("text/")


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


# -- reading -------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One answer of a read: its bodies (one per HTTP body or SSE data event) and the position after it."""

    parts: tuple[bytes, ...]
    offset: str
    cursor: str | None
    up_to_date: bool
    closed: bool

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def chunk_from_response(status: int, headers: Mapping[str, str], body: bytes, *, offset: str, cursor: str | None) -> Chunk:
    """A catch-up 200, or a long-poll 200/204, as a Chunk. ``offset``/``cursor`` are the request's."""
    closed = is_true(headers.get(CLOSED))
    next_offset = headers.get(NEXT_OFFSET)
    if not next_offset:
        if status == 200:
            # Without it the next request would re-read the same data forever.
            raise DurableStreamError("read answer has no Stream-Next-Offset", PARSE_ERROR, status)
        next_offset = offset
    # A long-poll 204 means "nothing new before the timeout": caught up by definition.
    up_to_date = status == 204 or closed or (UP_TO_DATE in headers and headers[UP_TO_DATE].lower() != "false")
    parts = (body,) if body and status == 200 else ()
    return Chunk(parts, next_offset, headers.get(CURSOR) or cursor, up_to_date, closed)


@dataclass(frozen=True)
class TrimmedGap:
    """Data a reader skipped: retention removed ``[from_offset, to_offset)`` before it was read.

    ``from_offset`` is where the reader was (everything before it was handed
    out); ``to_offset`` is the stream's earliest retained offset, where it
    goes on reading."""

    from_offset: str
    to_offset: str


def trimmed_gap(error: OffsetTrimmedError, offset: str, *, resume: bool) -> TrimmedGap:
    """What a reader at ``offset`` skips to go on after ``error``. Re-raises it unless
    the reader resumes, and when the earliest offset is not ahead of ``offset``
    (offsets sort as strings, PROTOCOL.md 8): reading there again would loop."""
    if not resume or error.earliest_offset <= offset:
        raise error
    return TrimmedGap(offset, error.earliest_offset)


def check_live(live: object) -> LiveMode:
    if live is True or live is False or live in (LONG_POLL, SSE):
        return live
    raise ValueError(f"live must be False, True, 'long-poll' or 'sse', not {live!r}")


@dataclass
class ReadState:
    """Where a read session stands, and what it asks for next.

    A session always starts with catch-up requests (cacheable, and they tell
    us the content type); once it has been up to date it switches to its
    live mode and stays there, even if a live answer is partial. ``live=True``
    picks SSE for JSON and text streams (no base64 overhead, one connection)
    and long-poll for binary ones, or after SSE keeps failing.
    """

    live: LiveMode
    offset: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False
    content_type: str | None = None
    caught_up: bool = False
    sse_failed: bool = False

    def apply(self, chunk: Chunk) -> None:
        self.offset = chunk.offset
        self.cursor = chunk.cursor or self.cursor
        self.up_to_date = chunk.up_to_date
        self.closed = self.closed or chunk.closed
        self.caught_up = self.caught_up or chunk.up_to_date

    def finished(self, *, stop_at_up_to_date: bool) -> bool:
        if self.closed:
            return True
        return self.up_to_date and (self.live is False or stop_at_up_to_date)

    def next_mode(self) -> Mode:
        if self.live is False or not self.caught_up:
            return CATCH_UP
        if self.live == SSE or (self.live is True and sse_native(self.content_type) and not self.sse_failed):
            return SSE
        return LONG_POLL

    def params(self, mode: Mode) -> list[tuple[str, str]]:
        params = [("offset", self.offset)]
        if mode != CATCH_UP:
            # The cursor only matters to CDNs collapsing live requests; on
            # catch-up reads it would just split their cache keys.
            params.append(("live", mode))
            if self.cursor:
                params.append(("cursor", self.cursor))
        return params


def decode_json_parts(parts: Iterable[bytes]) -> list[Any]:
    """The messages in JSON read bodies: each body (or SSE data event) is one JSON array."""
    items: list[Any] = []
    for part in parts:
        if not part.strip():
            continue
        try:
            value = json.loads(part)
        except ValueError as exc:
            raise DurableStreamError(f"read body is not JSON: {exc}", PARSE_ERROR) from None
        items.extend(value if isinstance(value, list) else [value])
    return items


def build_query(
    url_items: Iterable[tuple[str, str]], user_items: Iterable[tuple[str, str]], protocol_items: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """All query parameters, sorted by name: PROTOCOL.md 10.1 asks for one canonical order so CDN keys match."""
    user = list(user_items)
    clash = RESERVED_PARAMS.intersection(k for k, _ in user)
    if clash:
        raise ValueError(f"query parameters {sorted(clash)} are set by the client itself")
    return sorted([*url_items, *user, *protocol_items], key=lambda kv: kv[0])


# -- writing -------------------------------------------------------------------


def encode_message(value: Any, *, json_mode: bool) -> bytes:
    """One appended message as bytes.

    JSON streams: any Python value is one message, encoded with ``json``;
    bytes are taken as one message that is already JSON (checked here, so a
    bad value fails its own append rather than the whole batch it joins).
    Other streams: bytes as they are, str as UTF-8.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if json_mode:
            try:
                json.loads(data)
            except ValueError as exc:
                raise ValueError(f"bytes appended to a JSON stream must be one JSON value: {exc}") from None
        return data
    if json_mode:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"append bytes or str to a non-JSON stream, not {type(value).__name__}")


def frame_batch(pieces: list[bytes], *, json_mode: bool) -> bytes:
    """One POST body for several appends: a JSON array (the server flattens one level) or the bytes joined."""
    if json_mode:
        return b"[" + b",".join(pieces) + b"]"
    return b"".join(pieces)


def create_body(body: Any, *, json_mode: bool) -> bytes | None:
    """Initial content for a create: bytes/str as they are; for JSON streams also a list of messages."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if json_mode and isinstance(body, list):
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    raise TypeError("create body must be bytes, str, or (for JSON streams) a list of messages")


def create_headers(
    content_type: str, ttl: int | None, expires_at: str | _dt.datetime | None, closed: bool
) -> dict[str, str]:
    if ttl is not None and expires_at is not None:
        raise ValueError("give ttl or expires_at, not both (servers refuse both)")
    headers = {"content-type": content_type}
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            raise ValueError(f"ttl must be a non-negative number of seconds, not {ttl!r}")
        headers[TTL] = str(ttl)
    if expires_at is not None:
        headers[EXPIRES_AT] = rfc3339(expires_at)
    if closed:
        headers[CLOSED] = "true"
    return headers


def fork_headers(source_url: str, fork_url: str, offset: str | None, sub_offset: int | None) -> dict[str, str]:
    """The headers that make a create PUT at ``fork_url`` a fork of ``source_url`` (PROTOCOL.md 4.2).

    The source goes by its path: forks live on the same server as their
    source, so a fork URL on another origin is refused here, before asking.
    """
    source, fork = origin_and_path(source_url), origin_and_path(fork_url)
    if source[0] != fork[0]:
        raise ValueError(f"a fork must be on its source's server ({source[0]}), not {fork[0]}")
    headers = {FORKED_FROM: source[1]}
    if offset is not None:
        headers[FORK_OFFSET] = offset
    if sub_offset is not None:
        if isinstance(sub_offset, bool) or not isinstance(sub_offset, int) or sub_offset < 0:
            raise ValueError(f"sub_offset must be a non-negative integer, not {sub_offset!r}")
        headers[FORK_SUB_OFFSET] = str(sub_offset)
    return headers


def origin_and_path(url: str) -> tuple[str, str]:
    """(origin, path) of an absolute URL, the path as sent on the wire (percent-encoded, no query)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not an absolute URL: {url!r}")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}", parts.path or "/"


def rfc3339(value: str | _dt.datetime) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("expires_at needs a timezone-aware datetime")
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class HeadResult:
    """A stream's metadata from HEAD. ``offset`` is the tail: where the next append lands."""

    offset: str | None
    content_type: str | None
    closed: bool
    ttl: int | None
    expires_at: str | None
    etag: str | None
    cache_control: str | None


def head_result(headers: Mapping[str, str]) -> HeadResult:
    ttl = headers.get(TTL)
    return HeadResult(
        offset=headers.get(NEXT_OFFSET),
        content_type=headers.get("content-type"),
        closed=is_true(headers.get(CLOSED)),
        ttl=int(ttl) if ttl and ttl.isdigit() else None,
        expires_at=headers.get(EXPIRES_AT),
        etag=headers.get("etag"),
        cache_control=headers.get("cache-control"),
    )


@dataclass(frozen=True)
class CloseResult:
    """The outcome of closing a stream: ``final_offset`` is the offset after its last byte."""

    final_offset: str | None


# -- retries -------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff for transient failures.

    The n-th retry waits between half and all of
    ``min(max_delay_s, initial_delay_s * multiplier**n)``: jitter spreads
    reconnect storms, the lower half-bound keeps the growth. A ``Retry-After``
    answer is honoured up to ``retry_after_max_s``. ``max_retries`` None
    retries forever (a tailing reader that must outlive an outage).
    """

    initial_delay_s: float = 0.1
    max_delay_s: float = 10.0
    multiplier: float = 2.0
    max_retries: int | None = 10
    retry_after_max_s: float = 60.0

    def may_retry(self, attempt: int) -> bool:
        return self.max_retries is None or attempt < self.max_retries

    def delay_s(self, attempt: int, rand: float, retry_after_s: float | None = None) -> float:
        cap = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** min(attempt, 64))
        delay = cap * (0.5 + rand / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay


# 429 and 503 say "not now" before anything was done, so even appends are
# safe to resend; other 5xx may have been applied.
_REFUSED_UNDONE = frozenset({429, 503})
_PERMANENT_5XX = frozenset({501, 505})


def retryable_status(status: int, *, idempotent: bool) -> bool:
    if status in _REFUSED_UNDONE:
        return True
    return idempotent and status >= 500 and status not in _PERMANENT_5XX


def retryable_failure(*, request_unsent: bool, idempotent: bool) -> bool:
    """A network failure: retry if the request provably never left, or if sending it twice is harmless."""
    return request_unsent or idempotent


def calls_on_error(status: int | None, *, network: bool) -> bool:
    """Failures a reader's ``on_error`` may repair: refused credentials (401/403), or no protocol answer at all."""
    return network or status in (401, 403)


def parse_retry_after(value: str | None, now: _dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())
