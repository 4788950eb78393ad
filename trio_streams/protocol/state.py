"""Stream state and the events that change it — the event-sourced core.

Owns: what a stream *is* (config, tail, closure, writer state) and the one
function, ``apply``, that moves it forward by an event. Recovery replays the
write-ahead log through ``apply``; the running server applies each durable
event through the same function, so the two can never disagree.

Positions: every event that moves a tail carries the stream position its
data starts at, decided once (by the actor, from the tail it decided
against). ``event_end`` is the one place a new tail is computed, and every
apply first checks that the event starts exactly at the tail it finds
(``ContinuityError`` otherwise): a gap or an overlap is a bug, never input.

Never: I/O, clocks, trio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Union

from .headers import Expiry, Producer, is_json
from .retention import Retention, add_age_mark, drop_marks_below, fork_limit
from .subscriptions import SUBSCRIPTION_EVENTS, SubscriptionEvent, SubscriptionTable


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerState:
    epoch: int
    last_seq: int


@dataclasses.dataclass(slots=True)
class StreamState:
    stream_id: int
    path: str
    content_type: str
    expiry: Expiry
    created_at: float
    tail: int = 0
    closed: bool = False
    closed_by: Producer | None = None
    last_seq: str | None = None
    producers: dict[str, ProducerState] = dataclasses.field(default_factory=dict)
    fork: ForkOrigin | None = None
    refcount: int = 0  # forks whose source is this stream
    soft_deleted: bool = False  # deleted while forks still read its data
    # Why recovery fenced the stream off (its stored history may be incomplete
    # or wrong); every request to it is refused while this is set.
    damaged: str | None = None
    # The policy the stream was created with (Trio-Streams-Retention-*); None: the
    # server's rules decide (streams/retention.py).
    retention: Retention | None = None
    # The earliest retained position: reads below it are 410 (retention trimmed them).
    head: int = 0
    # (time, position) pairs dating the stream's data, for trims by age (protocol/retention.py).
    marks: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    @property
    def base(self) -> int:
        """First position this stream stores itself; below it, data comes from the source."""
        return self.fork.base if self.fork is not None else 0

    @property
    def json_mode(self) -> bool:
        return is_json(self.content_type)

    def speculative_copy(self) -> StreamState:
        """A copy an actor may decide a batch against before it is durable."""
        return dataclasses.replace(self, producers=dict(self.producers), marks=list(self.marks))


@dataclasses.dataclass(frozen=True, slots=True)
class ForkOrigin:
    """Where a fork branches off. ``anchor``/``sub_offset`` are as requested (for
    idempotent re-creation); ``base`` is the resolved divergence position."""

    source_id: int
    source_path: str
    anchor: int
    sub_offset: int
    base: int


@dataclasses.dataclass(frozen=True, slots=True)
class Created:
    stream_id: int
    path: str
    content_type: str
    expiry: Expiry
    created_at: float
    closed: bool
    data: bytes  # initial content, already in stored form
    fork: ForkOrigin | None = None
    retention: Retention | None = None  # as the create asked for it

    @property
    def position(self) -> int:
        """Where the stream's own data starts: 0, or a fork's base."""
        return self.fork.base if self.fork is not None else 0


@dataclasses.dataclass(frozen=True, slots=True)
class Appended:
    stream_id: int
    # The stream position the data starts at: the tail the append was decided
    # against. None only when decoded from a WAL record written before records
    # kept it; replay places such an append at the tail it finds.
    position: int | None
    data: bytes  # in stored form; empty for a close-only request
    seq: str | None = None
    producer: Producer | None = None
    close: bool = False
    # When it was decided (wall clock), kept only for streams retained by age: it dates the data.
    at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Deleted:
    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Trimmed:
    """Retention dropped the stream's data below ``position`` (its new head). Apply
    holds it below what the stream's forks still read and its tail."""

    stream_id: int
    position: int


StreamEvent = Union[Created, Appended, Deleted, Trimmed]
# Subscription state changes go through the same log, in the same order as the
# stream data they refer to (protocol/subscriptions.py).
Event = Union[Created, Appended, Deleted, Trimmed, SubscriptionEvent]


class ContinuityError(AssertionError):
    """An event does not start where its stream's tail is: the table, the log or
    the writer is wrong. Raised (never stripped like ``assert``) and fatal."""


def event_start(event: Created | Appended) -> int:
    if event.position is None:
        raise ContinuityError(f"an append to stream {event.stream_id} has no position")
    return event.position


def event_end(event: Created | Appended) -> int:
    """The stream's tail after ``event``: the one place a new tail is computed."""
    return event_start(event) + len(event.data)


class StreamTable:
    """Every live stream, by id and by path. Mutated only through ``apply``."""

    def __init__(self) -> None:
        self.by_id: dict[int, StreamState] = {}
        self.by_path: dict[str, StreamState] = {}
        self.next_stream_id = 1
        # Streams whose data may now be discarded; the owner of the files drains it.
        self.removed: list[int] = []
        # Stream ids recovery found records of but no stream for (their Created
        # was in a damaged part of the log): never reused, reported as fenced.
        self.fenced_ids: dict[int, str] = {}
        # Called with a stream's state right before ``apply`` changes or removes
        # it: a checkpoint being encoded in slices keeps the state as of its
        # position this way (storage/checkpoint.py, ``TableSnapshot``).
        self.before_change: Callable[[StreamState], None] | None = None
        # Subscriptions live beside the streams: applied, checkpointed and replayed with them.
        self.subscriptions = SubscriptionTable()
        # Source id -> ids of its live forks (they limit how far the source may be trimmed).
        self.forks: dict[int, set[int]] = {}
        # Streams whose head moved; the owner of the files drains it (and punches the holes).
        self.trimmed: list[int] = []

    def _changing(self, state: StreamState) -> StreamState:
        if self.before_change is not None:
            self.before_change(state)
        return state

    def apply(self, event: Event) -> StreamState | None:
        """Applies one durable event; returns the stream it touched (None once deleted,
        and for a subscription event)."""
        if isinstance(event, SUBSCRIPTION_EVENTS):
            self.subscriptions.apply(event)
            return None
        if isinstance(event, Appended):
            state = self._changing(self.by_id[event.stream_id])
            apply_append(state, event)
            return state
        if isinstance(event, Created):
            return self._create(event)
        if isinstance(event, Trimmed):
            trimmed = self.by_id.get(event.stream_id)
            # Gone already: a soft-deleted source can be removed by its last fork's delete,
            # decided by another actor after this trim was.
            return None if trimmed is None else self._trim(self._changing(trimmed), event.position)
        return self._delete(self._changing(self.by_id[event.stream_id]))

    def _delete(self, state: StreamState) -> StreamState | None:
        """Soft-deletes a stream that forks still read; otherwise removes it and
        cascades up the fork chain to sources that were only kept for it."""
        if state.refcount > 0:
            state.soft_deleted = True
            return state
        while True:
            del self.by_id[state.stream_id]
            del self.by_path[state.path]
            self.removed.append(state.stream_id)
            if state.fork is None:
                return None
            self._forget_fork(state.fork.source_id, state.stream_id)
            state = self._changing(self.by_id[state.fork.source_id])
            state.refcount -= 1
            assert state.refcount >= 0
            if not (state.soft_deleted and state.refcount == 0):
                return None

    def _create(self, event: Created) -> StreamState:
        assert event.path not in self.by_path, event.path
        assert event.stream_id >= self.next_stream_id, event.stream_id
        state = state_from_created(event)
        if event.fork is not None:
            source = self._changing(self.by_id[event.fork.source_id])
            source.refcount += 1
            self.forks.setdefault(source.stream_id, set()).add(state.stream_id)
            # It reads its source from the source's head on (its base, should a trim have passed that).
            state.head = min(source.head, event.fork.base)
        self.by_id[state.stream_id] = state
        self.by_path[state.path] = state
        self.next_stream_id = event.stream_id + 1
        return state

    def add(self, state: StreamState) -> None:
        """Restores one stream from a checkpoint."""
        self.by_id[state.stream_id] = state
        self.by_path[state.path] = state
        self.next_stream_id = max(self.next_stream_id, state.stream_id + 1)
        if state.fork is not None:
            self.forks.setdefault(state.fork.source_id, set()).add(state.stream_id)

    def _forget_fork(self, source_id: int, fork_id: int) -> None:
        forks = self.forks[source_id]
        forks.discard(fork_id)
        if not forks:
            del self.forks[source_id]

    def trim_limit(self, state: StreamState) -> int:
        """How far ``state`` may be trimmed: its tail, or less where a fork still reads it."""
        limit = state.tail
        for fork_id in self.forks.get(state.stream_id, ()):
            fork = self.by_id[fork_id]
            pinned = fork_limit(fork.head, fork.base)
            if pinned is not None:
                limit = min(limit, pinned)
        return limit

    def _trim(self, state: StreamState, position: int) -> StreamState:
        head = min(position, self.trim_limit(state))
        if head > state.head:
            state.head = head
            drop_marks_below(state.marks, head)
            self.trimmed.append(state.stream_id)
        return state


def state_from_created(event: Created) -> StreamState:
    return StreamState(
        event.stream_id, event.path, event.content_type, event.expiry, event.created_at,
        tail=event_end(event), closed=event.closed, fork=event.fork, retention=event.retention,
    )


def expect_continues(tail: int, event: Appended) -> None:
    if event.position != tail:
        raise ContinuityError(f"an append to stream {event.stream_id} starts at {event.position}, "
                              f"but the stream's tail is {tail}")


def apply_append(state: StreamState, event: Appended) -> None:
    expect_continues(state.tail, event)  # against the state as read, right before it moves
    assert not state.closed and not state.soft_deleted, "such appends are never made durable"
    state.tail = event_end(event)
    if event.seq is not None:
        state.last_seq = event.seq
    if event.producer is not None:
        p = event.producer
        state.producers[p.id] = ProducerState(p.epoch, p.seq)
    if event.close:
        state.closed = True
        state.closed_by = event.producer
    if event.at is not None and event.data:
        add_age_mark(state.marks, event.at, state.tail)


def check_batch(table: StreamTable, events: Sequence[Event]) -> dict[int, int]:
    """Raises ``ContinuityError`` before a batch is written if an event does not
    continue its stream where the table and the batch's earlier events leave it
    (assert before write: a wrong position must never become durable). Returns
    the base of every stream the batch writes: where its data goes in its file."""
    ends: dict[int, int] = {}
    bases: dict[int, int] = {}
    for event in events:
        if isinstance(event, (Deleted, Trimmed, *SUBSCRIPTION_EVENTS)):
            continue
        if isinstance(event, Created):
            bases[event.stream_id] = event.position
        else:
            if event.stream_id not in bases:
                state = table.by_id[event.stream_id]
                bases[event.stream_id], ends[event.stream_id] = state.base, state.tail
            expect_continues(ends[event.stream_id], event)
        ends[event.stream_id] = event_end(event)
    return bases
