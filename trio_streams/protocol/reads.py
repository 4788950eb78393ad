"""Read rules: every status and header decision for GET and HEAD, in one place.

Owns: where a read starts (``offset``: 400 for malformed, missing or
future offsets, or one inside a JSON message), what a live reader finds
(``live_outcome``: data, closed, gone, or nothing yet — the one rule for
deleted, soft-deleted, expired and re-created streams), and the status and
headers of catch-up (200/304), offset=now, long-poll (200/204/404/410),
SSE and HEAD responses: ETag, Cache-Control (10.1), Stream-Up-To-Date,
Stream-Closed only at the final offset, Stream-Cursor. Never: I/O, clocks
(callers pass ``now_s``), trio.
"""

from __future__ import annotations

import dataclasses
import enum

from . import jsonmode, sse
from .errors import ProtocolError, bad_request, not_found
from .headers import is_sse_text
from .offsets import NOW, START, format_offset, parse_offset
from .retention import trimmed_error
from .rules import gone
from .state import StreamState

Headers = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    next: int
    raw: bytes  # stored form
    body: bytes  # HTTP body form (a JSON array for JSON streams)
    up_to_date: bool
    closed: bool  # the stream is closed and this chunk reaches its final offset


def chunk_of(start: int, raw: bytes, body: bytes, tail: int, closed: bool) -> Chunk:
    """The chunk read at ``start`` from a stream whose tail and closure were ``tail``, ``closed``."""
    end = start + len(raw)
    return Chunk(start, end, raw, body, end == tail, closed and end == tail)


@dataclasses.dataclass(frozen=True, slots=True)
class CachePolicy:
    visibility: str  # "public" or "private"
    max_age_s: int
    stale_while_revalidate_s: int


class Outcome(enum.Enum):
    """How a wait for data past a position ended."""

    DATA = "data"  # the stream holds bytes past the position
    CLOSED = "closed"  # the stream is closed at the position: nothing will ever follow
    GONE = "gone"  # the stream the reader started on is no longer addressable
    TIMEOUT = "timeout"  # the deadline passed (or the server is draining) first


def live_outcome(watched_id: int, current: StreamState | None, position: int) -> Outcome | None:
    """What a live reader of stream ``watched_id`` at ``position`` finds now; None: wait.

    ``current`` is what the path holds as clients see it (an expired stream
    reads as what its delete leaves). The reader's stream is gone once the
    path holds nothing, a soft-deleted stream (410 for every direct
    operation, 4.2), or another incarnation: a re-created stream is a new
    offset space, never a continuation.
    """
    if current is None or current.stream_id != watched_id or current.soft_deleted:
        return Outcome.GONE
    if current.tail > position:
        return Outcome.DATA
    if current.closed:
        return Outcome.CLOSED
    return None


def gone_error(current: StreamState | None) -> ProtocolError:
    """The refusal for a live reader whose stream went away while it waited."""
    return gone() if current is not None and current.soft_deleted else not_found()


# -- where a read starts --------------------------------------------------


def resolve_start(token: str | None, state: StreamState, *, required: bool) -> int | str:
    """The requested position, or NOW; 400 for malformed, missing or future offsets.

    The stream starts at its retained head: ``-1`` (or no offset) reads from
    there, and an offset below it is 410 naming the head."""
    if token is None:
        if required:
            raise bad_request("live reads require an offset parameter", "MISSING_OFFSET")
        return state.head
    position = parse_offset(token)
    if position == START:
        return state.head
    if position == NOW:
        return NOW
    assert isinstance(position, int)
    if position > state.tail:
        raise bad_request("offset is beyond the stream's tail", "INVALID_OFFSET")
    check_retained(state, position)
    return position


def check_retained(state: StreamState, position: int) -> None:
    """410 for a position retention has trimmed away (the table may have moved since the read began)."""
    if position < state.head:
        raise trimmed_error(state.head)


def needs_boundary_check(state: StreamState, start: int | str) -> bool:
    """A JSON stream's offset must fall between messages; only inner offsets need a look
    (the head is a boundary, and the byte before it may be gone)."""
    return isinstance(start, int) and state.json_mode and state.head < start < state.tail


def require_message_boundary(byte_before: bytes) -> None:
    if byte_before != jsonmode.TERMINATOR:
        raise bad_request("offset is not at a message boundary of this JSON stream", "INVALID_OFFSET")


def resumed_offset(last_event_id: str | None) -> str | None:
    """The offset an SSE request resumes from: its ``Last-Event-ID``, when it has one.

    A browser's EventSource reconnects to the URL it was opened with, so after
    every recycled connection its ``offset`` is where the reader *started*;
    ``Last-Event-ID`` echoes the id of the last event it received (the offset
    after it, see ``protocol/sse.py``) and is where it really stands. An empty
    value means no id was received and is no header at all, as in the SSE
    spec; anything else must be an offset (400 otherwise, like ``offset``).
    """
    if not last_event_id:
        return None
    try:
        parse_offset(last_event_id)
    except ProtocolError:
        raise bad_request(f"malformed Last-Event-ID {last_event_id[:64]!r}: expected an offset", "INVALID_OFFSET") from None
    return last_event_id


# -- responses ------------------------------------------------------------


def etag(stream_id: int, chunk: Chunk) -> str:
    return f'"{stream_id}:{chunk.start}:{chunk.next}{":c" if chunk.closed else ""}"'


def cache_policy(visibility: str, max_age_s: int, stale_while_revalidate_s: int, *, authenticated: bool) -> CachePolicy:
    """The policy for data chunks. With access control on, every read answers one
    principal's token, so chunks are ``private`` (10.1): no shared cache hands one
    to a client whose token might not allow it."""
    return CachePolicy("private" if authenticated else visibility, max_age_s, stale_while_revalidate_s)


def cache_control(policy: CachePolicy, state: StreamState, chunk: Chunk, now_s: float, *, live: bool = False) -> str:
    """Data chunks are immutable and cacheable (10.1); empty tail responses are not,
    so a cache can never hide new data or the closure signal. A stream that
    expires sooner than the usual max-age caps it.

    A catch-up chunk that reaches the tail of an open stream holds immutable
    bytes, but its ``Stream-Up-To-Date`` is true only while nothing follows: a
    cache may keep it but must revalidate it (its ETag answers 304 only while
    it is still the whole tail), or a reader that stops once up to date would
    stop short. A long-poll answer (``live``) stays cacheable as it is: its URL
    carries the cursor, so it is only ever served to readers of that interval,
    which go on polling from its end (10.1, "Long-poll Caching")."""
    if not chunk.raw:
        return "no-store"
    if chunk.up_to_date and not chunk.closed and not live:
        return f"{policy.visibility}, no-cache"
    max_age = policy.max_age_s
    if state.expiry.expires_at_s is not None:
        max_age = max(0, min(max_age, int(state.expiry.expires_at_s - now_s)))
    return f"{policy.visibility}, max-age={max_age}, stale-while-revalidate={policy.stale_while_revalidate_s}"


def chunk_response(
    state: StreamState, chunk: Chunk, cursor: str | None, policy: CachePolicy, now_s: float, if_none_match: str | None
) -> tuple[int, Headers]:
    """200 with the chunk's headers, or 304 when the client already holds it
    (``cursor``: a long-poll's; None for a catch-up read)."""
    tag = etag(state.stream_id, chunk)
    pairs = [
        ("content-type", state.content_type),
        ("stream-next-offset", format_offset(chunk.next)),
        ("etag", tag),
        ("cache-control", cache_control(policy, state, chunk, now_s, live=cursor is not None)),
    ]
    if chunk.up_to_date:
        pairs.append(("stream-up-to-date", "true"))
    if chunk.closed:
        pairs.append(("stream-closed", "true"))
    elif cursor is not None:
        pairs.append(("stream-cursor", cursor))
    return (304 if _matches(if_none_match, tag) else 200), pairs


def _matches(if_none_match: str | None, tag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return tag in candidates or "*" in candidates


def now_response(state: StreamState) -> tuple[int, Headers, bytes]:
    """offset=now on a catch-up read: no data, the tail, never cached."""
    pairs = [
        ("content-type", state.content_type),
        ("stream-next-offset", format_offset(state.tail)),
        ("stream-up-to-date", "true"),
        ("cache-control", "no-store"),
    ]
    if state.closed:
        pairs.append(("stream-closed", "true"))
    return 200, pairs, jsonmode.EMPTY_ARRAY if state.json_mode else b""


def no_content_response(state: StreamState, position: int, cursor: str) -> tuple[int, Headers]:
    """A long-poll that found no data: 204, closed only at the final offset, else a cursor."""
    pairs = [
        ("stream-next-offset", format_offset(position)),
        ("stream-up-to-date", "true"),
        ("cache-control", "no-store"),
    ]
    if state.closed and position == state.tail:
        pairs.append(("stream-closed", "true"))
    else:
        pairs.append(("stream-cursor", cursor))
    return 204, pairs


def sse_binary(state: StreamState) -> bool:
    return not is_sse_text(state.content_type)


def sse_response_headers(binary: bool) -> Headers:
    pairs = [("content-type", sse.CONTENT_TYPE), ("cache-control", "no-cache")]
    if binary:
        pairs.append(("stream-sse-data-encoding", "base64"))
    return pairs


def metadata_headers(state: StreamState) -> Headers:
    """HEAD: the stream's configuration and tail, never cached."""
    pairs = [
        ("content-type", state.content_type),
        ("stream-next-offset", format_offset(state.tail)),
        ("cache-control", "no-store"),
    ]
    if state.expiry.ttl_s is not None:
        pairs.append(("stream-ttl", str(state.expiry.ttl_s)))
    if state.expiry.expires_at is not None:
        pairs.append(("stream-expires-at", state.expiry.expires_at))
    if state.closed:
        pairs.append(("stream-closed", "true"))
    return pairs
