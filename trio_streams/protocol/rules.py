"""Write rules: every status decision for PUT and POST, in one place.

Owns: given a stream's current state and a parsed request, either the event
to make durable plus the reply to send once it is, or a ProtocolError.
Never: I/O. The caller (the stream's actor) guarantees that decisions for
one stream are made one at a time against the state left by the previous one.

Precedence on append follows PROTOCOL.md 5.2: closed, then content type,
then idempotent-producer checks, then Stream-Seq, then body validation.
"""

from __future__ import annotations

import dataclasses

from . import jsonmode
from .errors import ProtocolError, conflict
from .headers import AppendRequest, CreateRequest, Expiry, Producer, is_json, media_type
from .offsets import START, format_offset, parse_offset
from .state import Appended, Created, ForkOrigin, ProducerState, StreamState, event_end


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
    event = Created(stream_id, path, content_type, expiry, now, req.closed, data, origin)
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
            raise conflict("Content-Type differs from the source stream's", "CONTENT_TYPE_MISMATCH")
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
    return state.closed == req.closed


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


def decide_append(state: StreamState, req: AppendRequest) -> tuple[Appended | None, Reply]:
    """The Appended event (None when nothing changes) and the reply it earns."""
    if state.soft_deleted:
        raise ProtocolError(410, "GONE", "stream has been deleted")
    if state.closed:
        return None, _append_to_closed(state, req)
    if req.body and media_type(req.content_type or "") != media_type(state.content_type):
        raise conflict("Content-Type does not match the stream's", "CONTENT_TYPE_MISMATCH")
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
