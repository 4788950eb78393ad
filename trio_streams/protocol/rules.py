"""Write rules: every status decision for PUT, POST and DELETE, in one place.

Owns: given a stream's current state and a parsed request, either the event
to make durable plus the reply to send once it is, or a ProtocolError; and
the lifecycle rules around them: which stream a path addresses (404, the
one 410), expiry, the stream limit (507), fork sources and fork points
(404/409/400/503). Never: I/O. The caller (the stream's actor) guarantees
that decisions for one stream are made one at a time against the state left
by the previous one.

Precedence on append follows PROTOCOL.md 5.2: closed, then content type,
then idempotent-producer checks, then Stream-Seq, then body validation.
"""

from __future__ import annotations

import dataclasses

from . import jsonmode
from .errors import ProtocolError, bad_request, conflict, not_found
from .headers import AppendRequest, CreateRequest, Expiry, ForkSpec, Producer, is_json, media_type
from .offsets import NOW, START, format_offset, parse_offset
from .state import Appended, Created, Deleted, ForkOrigin, ProducerState, StreamState, event_end


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...] = ()


def stored_body(content_type: str, body: bytes, framed: jsonmode.Framed | None) -> bytes:
    """What a stream of ``content_type`` stores for ``body``: itself, or its framed JSON messages.

    JSON is framed before a request reaches its actor (jsonmode.frame), so
    deciding never parses a body. Only a fork that inherits its source's
    content type can find it changed in between (the source was re-created).
    """
    if not is_json(content_type) or not body:
        return body
    if framed is None:
        raise conflict("the fork source's Content-Type changed while the request was read; retry",
                       "CONTENT_TYPE_CHANGED")
    return framed.result()


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedFork:
    """A fork request checked against its source: where it diverges, resolved."""

    source: StreamState
    source_path: str
    anchor: int
    sub_offset: int
    base: int


def decide_create(
    existing: StreamState | None, path: str, req: CreateRequest, stream_id: int, now: float,
    fork: ResolvedFork | None = None,
) -> tuple[Created | None, Reply]:
    """A new stream's Created event and 201, or 200 for an identical re-create."""
    if existing is not None:
        if existing.soft_deleted:
            raise conflict("a deleted stream still referenced by forks holds this path", "CONFLICT_SOFT_DELETED")
        if not same_config(existing, req):
            raise conflict("stream exists with a different configuration", "CONFLICT_EXISTS")
        return None, Reply(200, state_headers(existing))
    content_type, expiry, origin = req.content_type, req.expiry, None
    if fork is not None:
        content_type, expiry = _fork_config(req, fork.source)
        origin = ForkOrigin(fork.source.stream_id, fork.source_path, fork.anchor, fork.sub_offset, fork.base)
    data = stored_body(content_type, req.body, req.framed)
    event = Created(stream_id, path, content_type, expiry, now, req.closed, data, origin, req.retention)
    headers = [("content-type", content_type), ("stream-next-offset", format_offset(event_end(event)))]
    if req.closed:
        headers.append(("stream-closed", "true"))
    return event, Reply(201, tuple(headers))


def _fork_config(req: CreateRequest, source: StreamState) -> tuple[str, Expiry]:
    """Content type and expiry of a new fork (PROTOCOL.md 4.2: inherit unless given)."""
    if source.soft_deleted:
        raise conflict("the source stream has been deleted", "CONFLICT_SOFT_DELETED")
    content_type = source.content_type
    if req.content_type_given:
        if media_type(req.content_type) != media_type(source.content_type):
            raise type_mismatch(req.content_type, source.content_type, "the source stream's")
        content_type = req.content_type
    requested = req.expiry
    explicit = requested.ttl_s is not None or requested.expires_at is not None
    return content_type, requested if explicit else source.expiry


def same_config(state: StreamState, req: CreateRequest) -> bool:
    if (state.fork is None) != (req.fork is None):
        return False
    if req.fork is not None and not _same_fork(state, req):
        return False
    if req.fork is None or req.content_type_given:
        if media_type(state.content_type) != media_type(req.content_type):
            return False
    explicit = req.expiry.ttl_s is not None or req.expiry.expires_at is not None
    if req.fork is None or explicit:
        if (state.expiry.ttl_s, state.expiry.expires_at_s) != (req.expiry.ttl_s, req.expiry.expires_at_s):
            return False
    # A stream's own retention policy is configuration like its TTL (never inherited by a fork).
    return state.closed == req.closed and state.retention == req.retention


def _same_fork(state: StreamState, req: CreateRequest) -> bool:
    origin, spec = state.fork, req.fork
    assert origin is not None and spec is not None
    if spec.sub_offset != origin.sub_offset or spec.source != origin.source_path:
        return False
    if spec.offset is None:  # the caller states the default (the source's tail now); no source, no match
        return False
    anchor = parse_offset(spec.offset)
    return anchor == origin.anchor or (anchor == START and origin.anchor == 0)


def state_headers(state: StreamState) -> tuple[tuple[str, str], ...]:
    headers = [("content-type", state.content_type), ("stream-next-offset", format_offset(state.tail))]
    if state.closed:
        headers.append(("stream-closed", "true"))
    return tuple(headers)


def type_mismatch(given: str, expected: str, whose: str) -> ProtocolError:
    """409 naming both types (the client's, cut short: it is untrusted input)."""
    return conflict(f"Content-Type {given[:64]!r} does not match {whose} {expected!r}", "CONTENT_TYPE_MISMATCH")


def decide_append(state: StreamState, req: AppendRequest) -> tuple[Appended | None, Reply]:
    """The Appended event (None when nothing changes) and the reply it earns."""
    if state.soft_deleted:
        raise gone()
    if state.closed:
        return None, _append_to_closed(state, req)
    if req.body and media_type(req.content_type or "") != media_type(state.content_type):
        raise type_mismatch(req.content_type or "", state.content_type, "the stream's")
    if req.producer is not None:
        duplicate = _check_producer(state, req.producer)
        if duplicate is not None:
            return None, duplicate
    if req.seq is not None and state.last_seq is not None and req.seq.encode() <= state.last_seq.encode():
        raise conflict(f"Stream-Seq {req.seq!r} is not above {state.last_seq!r}", "SEQUENCE_CONFLICT")
    data = stored_body(state.content_type, req.body, req.framed)
    event = Appended(state.stream_id, state.tail, data, req.seq, req.producer, req.close)
    return event, _accepted(state, event)


def _accepted(state: StreamState, event: Appended) -> Reply:
    headers = [("stream-next-offset", format_offset(event_end(event)))]
    if event.close:
        headers.append(("stream-closed", "true"))
    if event.producer is None:
        return Reply(204, tuple(headers))
    headers += _producer_headers(event.producer.epoch, event.producer.seq)
    return Reply(200 if event.data else 204, tuple(headers))


def _append_to_closed(state: StreamState, req: AppendRequest) -> Reply:
    closed_headers = (("stream-next-offset", format_offset(state.tail)), ("stream-closed", "true"))
    p = req.producer
    if p is not None:
        if state.closed_by == p:
            return Reply(204, closed_headers + _producer_headers(p.epoch, p.seq))
        known = state.producers.get(p.id)
        if known is not None and p.epoch < known.epoch:
            raise _stale_epoch(known)
    if not req.body and p is None:
        return Reply(204, closed_headers)  # close-only is idempotent
    raise ProtocolError(409, "STREAM_CLOSED", "stream is closed", closed_headers)


def _check_producer(state: StreamState, p: Producer) -> Reply | None:
    """None to accept; a duplicate's 204 reply; raises for stale/gap/bad epoch (5.2.1)."""
    known = state.producers.get(p.id)
    if known is None or p.epoch > (known.epoch if known else -1):
        if p.seq != 0:
            if known is None:
                raise _gap(0, p.seq)
            raise ProtocolError(400, "INVALID_PRODUCER", "a new producer epoch must start at Producer-Seq 0")
        return None
    if p.epoch < known.epoch:
        raise _stale_epoch(known)
    if p.seq <= known.last_seq:
        headers = (("stream-next-offset", format_offset(state.tail)),) + _producer_headers(known.epoch, known.last_seq)
        return Reply(204, headers)
    if p.seq == known.last_seq + 1:
        return None
    raise _gap(known.last_seq + 1, p.seq)


def _stale_epoch(known: ProducerState) -> ProtocolError:
    return ProtocolError(403, "STALE_EPOCH", "producer epoch is stale", (("producer-epoch", str(known.epoch)),))


def _gap(expected: int, received: int) -> ProtocolError:
    headers = (("producer-expected-seq", str(expected)), ("producer-received-seq", str(received)))
    return conflict(f"producer sequence gap: expected {expected}, got {received}", "PRODUCER_SEQ_GAP", headers)


def _producer_headers(epoch: int, seq: int) -> tuple[tuple[str, str], ...]:
    return (("producer-epoch", str(epoch)), ("producer-seq", str(seq)))


# -- lifecycle: addressing, expiry, delete, the stream limit ---------------


def gone() -> ProtocolError:
    """The one 410: a soft-deleted stream answers every direct operation with it (4.2)."""
    return ProtocolError(410, "GONE", "stream has been deleted")


def addressed(state: StreamState | None) -> StreamState:
    """The stream a request addresses: 404 when there is none, 410 when soft-deleted."""
    if state is None:
        raise not_found()
    if state.soft_deleted:
        raise gone()
    return state


def damaged_error(state: StreamState) -> ProtocolError:
    return ProtocolError(503, "STREAM_DAMAGED", f"stream data was damaged on disk and is fenced off: {state.damaged}")


def refuse_if_damaged(state: StreamState | None) -> None:
    """Every request to a stream recovery fenced off is refused, reads and writes alike."""
    if state is not None and state.damaged is not None:
        raise damaged_error(state)


def is_expired(state: StreamState, last_access_s: float | None, now_s: float) -> bool:
    """Expires-At passed, or a sliding TTL elapsed since the last access (creation if none)."""
    if state.soft_deleted:
        return False  # already deleted; kept only for its forks
    expiry = state.expiry
    if expiry.expires_at_s is not None and now_s >= expiry.expires_at_s:
        return True
    if expiry.ttl_s is not None:
        last = state.created_at if last_access_s is None else last_access_s
        return now_s - last >= expiry.ttl_s
    return False


def after_delete(state: StreamState) -> StreamState | None:
    """What a delete leaves at the path: nothing, or the soft-deleted stream its forks still read."""
    if state.refcount == 0:
        return None
    soft = state.speculative_copy()
    soft.soft_deleted = True
    return soft


def decide_delete(state: StreamState | None, only_stream_id: int | None = None) -> tuple[Deleted, StreamState | None, Reply]:
    """DELETE: 204 and what it leaves; 404 for no stream (or a newer incarnation than
    ``only_stream_id``, which expiry names), 410 when already soft-deleted."""
    if state is None or only_stream_id not in (None, state.stream_id):
        raise not_found()
    if state.soft_deleted:
        raise gone()
    return Deleted(state.stream_id), after_delete(state), Reply(204)


def check_stream_limit(existing: StreamState | None, streams: int, streams_max: int) -> None:
    """507 for a create that would hold one stream too many; re-creates are always answered."""
    if existing is None and streams >= streams_max:
        raise ProtocolError(507, "TOO_MANY_STREAMS", "the server's stream limit is reached")


# -- fork sources and fork points (4.2) --------------------------------------


def fork_source(source: StreamState | None, expired: bool) -> StreamState:
    """The source a fork may branch from: 404 when missing, 409 when (soon) soft-deleted.

    An expired source reads as what its delete will leave: nothing without
    forks, soft-deleted with them.
    """
    if source is None or (expired and source.refcount == 0):
        raise ProtocolError(404, "NOT_FOUND", "the Stream-Forked-From source stream does not exist")
    if source.soft_deleted or expired:
        raise conflict("the source stream has been deleted", "CONFLICT_SOFT_DELETED")
    refuse_if_damaged(source)
    return source


def fork_anchor(spec: ForkSpec, source: StreamState) -> int:
    """The position Stream-Fork-Offset names (default: the source's tail); 400 past the tail."""
    if spec.offset is None:
        return source.tail
    try:
        position = parse_offset(spec.offset)
    except ProtocolError:
        raise bad_request(f"malformed Stream-Fork-Offset {spec.offset[:64]!r}", "INVALID_FORK") from None
    if position == START:
        return 0
    if position == NOW:
        return source.tail
    assert isinstance(position, int)
    if position > source.tail:
        raise bad_request("Stream-Fork-Offset is beyond the source stream's tail", "INVALID_FORK")
    return position


def require_fork_boundary(byte_before: bytes) -> None:
    """A JSON source forks between messages: the byte before the anchor ends one."""
    if byte_before != jsonmode.TERMINATOR:
        raise bad_request("Stream-Fork-Offset is not at a message boundary of the JSON source", "INVALID_FORK")


def byte_sub_position(anchor: int, sub_offset: int, append_end: int) -> int:
    """anchor + sub_offset bytes, never past the end of the append that starts at anchor."""
    if anchor + sub_offset > append_end:
        raise bad_request("Stream-Fork-Sub-Offset goes past the end of the append at the anchor", "INVALID_FORK")
    return anchor + sub_offset


def message_sub_position(anchor: int, sub_offset: int, append: bytes) -> int:
    """The position after ``sub_offset`` messages of the stored JSON append at anchor."""
    cut = -1
    for _ in range(sub_offset):
        cut = append.find(jsonmode.TERMINATOR, cut + 1)
        if cut < 0:
            raise bad_request("Stream-Fork-Sub-Offset is more messages than the append at the anchor has", "INVALID_FORK")
    return anchor + cut + 1


def with_default_offset(spec: ForkSpec, source: StreamState | None) -> ForkSpec:
    """``spec`` with an omitted (or ``now``) Stream-Fork-Offset spelled out: the source's tail now.

    A re-create is idempotent only if it would fork at the same point (4.2),
    so the default is resolved at the time of the repeat, not remembered
    from the first create. Left as is when the source is not there.
    """
    if source is None or spec.offset not in (None, NOW):
        return spec
    return dataclasses.replace(spec, offset=format_offset(source.tail))
