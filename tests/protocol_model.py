"""A small, pure, in-memory model of the Durable Streams protocol (PROTOCOL.md 4–5, 9).

The stateful test (test_model.py) drives a real server and this model with
the same requests and demands that they agree on every status, protocol
header and body. The model knows nothing about storage: a stream is a list
of *units* (bytes, or JSON messages for application/json streams) plus the
append boundaries that Stream-Fork-Sub-Offset may not cross.

Positions are unit indices. Offset tokens stay opaque: the test learns the
token the server mints for each index and checks that tokens are consistent
(one token per index, ordered like the indices), see ``Tokens``.

Where the spec leaves a choice to servers, the model follows this server's
documented choice, and says so: Stream-Seq is per stream; a brand-new
producer that starts above seq 0 gets 409 (expected 0); a stream can be
re-created at the path of a (hard-)deleted one; a source is collected as
soon as its last fork is deleted.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

JSON = "application/json"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Expiry:
    ttl_s: int | None = None
    expires_at: str | None = None  # echoed on HEAD exactly as sent
    expires_at_s: float | None = None  # what "same configuration" compares

    @property
    def explicit(self) -> bool:
        return self.ttl_s is not None or self.expires_at is not None


@dataclass(frozen=True)
class Anchor:
    """A Stream-Fork-Offset or read offset as the test will render it.

    kind: "omit" (no header / parameter), "start" (-1), "now", "index" (the
    token of unit ``index``), "mid" (a forged token inside a JSON message),
    "beyond" (a forged token past the tail).
    """

    kind: str
    index: int = 0


@dataclass(frozen=True)
class ForkReq:
    source: str
    anchor: Anchor
    sub_offset: int | None  # None: header omitted


@dataclass(frozen=True)
class CreateReq:
    content_type: str | None  # None: header omitted
    expiry: Expiry
    closed: bool
    units: Any  # bytes, or a list of messages; None when a JSON body is invalid
    has_body: bool
    fork: ForkReq | None = None


@dataclass(frozen=True)
class AppendReq:
    content_type: str
    units: Any  # bytes, or a list of messages (None: invalid JSON; [] an empty array)
    has_body: bool
    seq: str | None
    producer: tuple[str, int, int] | None  # (id, epoch, seq)
    close: bool


@dataclass
class Expected:
    """What the server must answer. ``tail`` is the unit index whose token
    Stream-Next-Offset must carry (None: the header must be absent)."""

    status: int
    tail: int | None = None
    closed: bool = False
    content_type: str | None = None
    producer: tuple[int, int] | None = None  # Producer-Epoch, Producer-Seq
    current_epoch: int | None = None  # Producer-Epoch on 403
    gap: tuple[int, int] | None = None  # Producer-Expected-Seq, Producer-Received-Seq
    expiry: Expiry | None = None  # HEAD only
    location: bool = False


@dataclass
class Stream:
    content_type: str
    expiry: Expiry
    units: Any  # bytes or list
    bounds: list[int]  # unit index at the end of every non-empty append (and a fork's base)
    closed: bool = False
    closed_by: tuple[str, int, int] | None = None
    last_seq: str | None = None
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (epoch, last seq)
    fork: ForkOrigin | None = None
    refcount: int = 0
    soft_deleted: bool = False
    # Unit index -> the server's offset token, learned by the test from responses
    # (forks share their source's offset space up to their base).
    tokens: dict[int, str] = field(default_factory=dict)

    @property
    def json(self) -> bool:
        return media_type(self.content_type) == JSON

    @property
    def tail(self) -> int:
        return len(self.units)

    def next_boundary(self, index: int) -> int:
        """The end of the append containing ``index`` (the tail if there is none)."""
        if index >= self.tail:
            return self.tail
        i = bisect.bisect_right(self.bounds, index)
        return self.bounds[i] if i < len(self.bounds) else self.tail


@dataclass(frozen=True)
class ForkOrigin:
    source: Stream
    source_name: str
    anchor: int
    sub_offset: int
    base: int


class Refused(Exception):
    def __init__(self, expected: Expected) -> None:
        super().__init__(expected)
        self.expected = expected


def refuse(status: int, **headers: Any) -> Refused:
    return Refused(Expected(status, **headers))


class Model:
    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}

    # -- lookups ---------------------------------------------------------------

    def addressed(self, name: str) -> Stream:
        """The stream a request names: 404 when none, 410 when soft-deleted."""
        stream = self.streams.get(name)
        if stream is None:
            raise refuse(404)
        if stream.soft_deleted:
            raise refuse(410)
        return stream

    def _answer(self, action: Any, *args: Any) -> Expected:
        try:
            return action(*args)
        except Refused as refusal:
            return refusal.expected

    # -- PUT ----------------------------------------------------------------------

    def create(self, name: str, req: CreateReq) -> Expected:
        return self._answer(self._create, name, req)

    def _create(self, name: str, req: CreateReq) -> Expected:
        if req.fork is not None and req.fork.sub_offset and req.fork.anchor.kind == "omit":
            raise refuse(400)  # a sub-offset needs an anchor (header syntax, before anything else)
        existing = self.streams.get(name)
        if existing is not None:
            if existing.soft_deleted or not same_config(existing, req):
                raise refuse(409)
            return Expected(200, existing.tail, existing.closed, existing.content_type)
        if req.fork is not None:
            stream = self._new_fork(req)
        else:
            stream = self._new_stream(req)
        self.streams[name] = stream
        return Expected(201, stream.tail, stream.closed, stream.content_type, location=True)

    def _new_stream(self, req: CreateReq) -> Stream:
        content_type = req.content_type or "application/octet-stream"
        units = self._initial_units(content_type, req)
        return Stream(content_type, req.expiry, units, [len(units)] if units else [], closed=req.closed)

    def _initial_units(self, content_type: str, req: CreateReq) -> Any:
        if media_type(content_type) != JSON:
            return req.units if isinstance(req.units, bytes) else b""
        if req.has_body and req.units is None:
            raise refuse(400)  # invalid JSON
        return list(req.units or [])

    def _new_fork(self, req: CreateReq) -> Stream:
        spec = req.fork
        assert spec is not None
        source = self.streams.get(spec.source)
        if source is None:
            raise refuse(404)
        if source.soft_deleted:
            raise refuse(409)
        anchor = self._anchor(source, spec.anchor)
        base = self._sub_position(source, anchor, spec.sub_offset or 0)
        content_type = source.content_type
        if req.content_type is not None:
            if media_type(req.content_type) != media_type(source.content_type):
                raise refuse(409)
            content_type = req.content_type
        expiry = req.expiry if req.expiry.explicit else source.expiry
        own = self._initial_units(content_type, req)
        bounds = [b for b in source.bounds if b < base] + [base] + ([base + len(own)] if own else [])
        stream = Stream(content_type, expiry, source.units[:base] + own, bounds, closed=req.closed,
                        fork=ForkOrigin(source, spec.source, anchor, spec.sub_offset or 0, base),
                        tokens={i: t for i, t in source.tokens.items() if i <= base})
        source.refcount += 1
        return stream

    @staticmethod
    def _anchor(source: Stream, anchor: Anchor) -> int:
        if anchor.kind in ("omit", "now"):
            return source.tail
        if anchor.kind == "start":
            return 0
        if anchor.kind in ("mid", "beyond"):
            raise refuse(400)
        if anchor.index > source.tail:
            raise refuse(400)
        return anchor.index

    @staticmethod
    def _sub_position(source: Stream, anchor: int, sub_offset: int) -> int:
        if sub_offset == 0:
            return anchor
        if anchor + sub_offset > source.next_boundary(anchor):
            raise refuse(400)  # bytes, or messages, past the end of the append at the anchor
        return anchor + sub_offset

    # -- POST ------------------------------------------------------------------------

    def append(self, name: str, req: AppendReq) -> Expected:
        return self._answer(self._append, name, req)

    def _append(self, name: str, req: AppendReq) -> Expected:
        if not req.has_body and not req.close:
            raise refuse(400)
        stream = self.addressed(name)
        if stream.closed:
            return self._append_to_closed(stream, req)
        if req.has_body and media_type(req.content_type) != media_type(stream.content_type):
            raise refuse(409)
        duplicate = self._check_producer(stream, req.producer) if req.producer else None
        if duplicate is not None:
            return duplicate
        if req.seq is not None and stream.last_seq is not None and req.seq.encode() <= stream.last_seq.encode():
            raise refuse(409)
        units = self._append_units(stream, req)
        return self._apply_append(stream, req, units)

    def _append_units(self, stream: Stream, req: AppendReq) -> Any:
        if not req.has_body:
            return [] if stream.json else b""
        if stream.json and not req.units:
            raise refuse(400)  # invalid JSON, or an empty array
        return req.units

    def _apply_append(self, stream: Stream, req: AppendReq, units: Any) -> Expected:
        stream.units = stream.units + units
        if units:
            stream.bounds.append(stream.tail)
        if req.seq is not None:
            stream.last_seq = req.seq
        if req.close:
            stream.closed, stream.closed_by = True, req.producer
        if req.producer is None:
            return Expected(204, stream.tail, req.close)
        pid, epoch, seq = req.producer
        stream.producers[pid] = (epoch, seq)
        return Expected(200 if units else 204, stream.tail, req.close, producer=(epoch, seq))

    def _append_to_closed(self, stream: Stream, req: AppendReq) -> Expected:
        p = req.producer
        if p is not None:
            if stream.closed_by == p:
                return Expected(204, stream.tail, True, producer=(p[1], p[2]))
            known = stream.producers.get(p[0])
            if known is not None and p[1] < known[0]:
                raise refuse(403, current_epoch=known[0])
        if not req.has_body and p is None:
            return Expected(204, stream.tail, True)  # close-only is idempotent
        raise refuse(409, tail=stream.tail, closed=True)

    @staticmethod
    def _check_producer(stream: Stream, producer: tuple[str, int, int]) -> Expected | None:
        """None to accept; the duplicate's 204; raises for stale epochs and gaps (5.2.1)."""
        pid, epoch, seq = producer
        known = stream.producers.get(pid)
        if known is None or epoch > known[0]:
            if seq != 0:
                if known is None:
                    raise refuse(409, gap=(0, seq))  # this server's choice for an unknown producer
                raise refuse(400)  # a new epoch must start at 0
            return None
        if epoch < known[0]:
            raise refuse(403, current_epoch=known[0])
        if seq <= known[1]:
            return Expected(204, stream.tail, producer=known)
        if seq == known[1] + 1:
            return None
        raise refuse(409, gap=(known[1] + 1, seq))

    # -- DELETE, HEAD ------------------------------------------------------------------

    def delete(self, name: str) -> Expected:
        return self._answer(self._delete, name)

    def _delete(self, name: str) -> Expected:
        stream = self.addressed(name)
        if stream.refcount > 0:
            stream.soft_deleted = True
            return Expected(204)
        while True:  # remove, and collect soft-deleted sources nothing reads any more
            del self.streams[name]
            origin = stream.fork
            if origin is None:
                return Expected(204)
            stream, name = origin.source, origin.source_name
            stream.refcount -= 1
            if not (stream.soft_deleted and stream.refcount == 0):
                return Expected(204)

    def head(self, name: str) -> Expected:
        return self._answer(self._head, name)

    def _head(self, name: str) -> Expected:
        s = self.addressed(name)
        return Expected(200, s.tail, s.closed, s.content_type, expiry=s.expiry)

    # -- GET ------------------------------------------------------------------------------

    def read_start(self, name: str, anchor: Anchor) -> tuple[Stream, int | str] | Expected:
        """Where a catch-up read begins (an index, or "now"), or the refusal it earns."""
        try:
            stream = self.addressed(name)
            if anchor.kind in ("omit", "start"):
                return stream, 0
            if anchor.kind == "now":
                return stream, "now"
            if anchor.kind in ("mid", "beyond") or anchor.index > stream.tail:
                raise refuse(400)
            return stream, anchor.index
        except Refused as refusal:
            return refusal.expected


def same_config(stream: Stream, req: CreateReq) -> bool:
    """PUT on an existing path: 200 when this matches, else 409 (5.1, 4.2)."""
    if (stream.fork is None) != (req.fork is None):
        return False
    if req.fork is not None and not _same_fork(stream, req.fork):
        return False
    if req.fork is None or req.content_type is not None:
        if media_type(stream.content_type) != media_type(req.content_type or "application/octet-stream"):
            return False
    if req.fork is None or req.expiry.explicit:
        if (stream.expiry.ttl_s, stream.expiry.expires_at_s) != (req.expiry.ttl_s, req.expiry.expires_at_s):
            return False
    return stream.closed == req.closed


def _same_fork(stream: Stream, spec: ForkReq) -> bool:
    origin = stream.fork
    assert origin is not None
    if (spec.sub_offset or 0) != origin.sub_offset or spec.source != origin.source_name:
        return False
    kind = spec.anchor.kind
    if kind == "omit":
        return True  # "the source's tail": whatever it was at creation
    if kind == "start":
        return origin.anchor == 0
    return kind == "index" and spec.anchor.index == origin.anchor

