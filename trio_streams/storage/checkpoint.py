"""Checkpoints: the StreamTable as of one WAL position, and recovery from it.

Owns: the snapshot payload (every stream's state, as JSON; version 2, one
array per stream, and version 1 still read), taking it at one
log position while the table moves on (``TableSnapshot``, copy-on-write,
encoded in slices), writing it, and loading it back (recovery.py replays
the WAL after it).

Threads: ``TableSnapshot`` runs in the Trio thread, like everything that
reads the live table; everything else here blocks (callers use
``trio.to_thread``).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ..protocol.headers import Expiry, Producer
from ..protocol.retention import Retention
from ..protocol.state import ForkOrigin, ProducerState, StreamState, StreamTable
from ..protocol.subscriptions import table_from_json, table_to_json
from .fileops import REAL, FileOps
from .snapshot import SnapshotWriter, list_snapshots
from .wal import SegmentedLog

FORMAT_VERSION = 2


def encode_table(table: StreamTable) -> bytes:
    """The whole checkpoint payload at once (recovery tools, tests); the server
    streams the same bytes slice by slice through ``TableSnapshot``."""
    snapshot = TableSnapshot(table, slice_streams=max(1, table.next_stream_id))
    try:
        return b"".join(snapshot.pieces())
    finally:
        snapshot.release()


class TableSnapshot:
    """The table as of the moment it was made, encoded in slices while the table moves on.

    Copy-on-write: until a stream has been encoded, the table hands this
    snapshot the stream's state right before its first change after the
    snapshot (``StreamTable.before_change``), so a slice encodes the saved
    state when there is one and the live state (unchanged since) otherwise.
    Slices go through ids in ascending order over the ids that existed when
    the snapshot was made: ids are never reused, so a stream created later
    has a higher id and is not part of it. Only the streams changed before
    their slice was encoded are ever copied.

    Runs in the Trio thread, like everything that touches the table; each
    slice of ``slice_streams`` ids takes a few milliseconds at most.
    """

    def __init__(self, table: StreamTable, *, slice_streams: int) -> None:
        assert table.before_change is None, "one snapshot at a time"
        assert slice_streams >= 1
        self._table = table
        self._slice_streams = slice_streams
        self._ids_end = table.next_stream_id
        self._next_id = 0  # every id below this is encoded (or needs no saving)
        self._saved: dict[int, list[Any]] = {}
        self._head = orjson.dumps({"version": FORMAT_VERSION, "next_stream_id": table.next_stream_id})[:-1]
        self._fenced = orjson.dumps([[k, v] for k, v in table.fenced_ids.items()])
        # Subscriptions are few (subscriptions_max) and small: encoded whole, at once.
        self._subscriptions = orjson.dumps(table_to_json(table.subscriptions))
        table.before_change = self._before_change

    def _before_change(self, state: StreamState) -> None:
        stream_id = state.stream_id
        if self._next_id <= stream_id < self._ids_end and stream_id not in self._saved:
            self._saved[stream_id] = _encode_stream(state)

    def release(self) -> None:
        """Stops copying; call when done or abandoned."""
        if self._table.before_change == self._before_change:
            self._table.before_change = None
        self._saved.clear()

    @property
    def saved_streams(self) -> int:
        return len(self._saved)

    def pieces(self) -> Iterator[bytes]:
        """The payload in pieces, one per slice; the table may change between them."""
        yield self._head + b',"streams":['
        separator = b""
        for start in range(0, self._ids_end, self._slice_streams):
            encoded = self._encode_slice(start, min(start + self._slice_streams, self._ids_end))
            if encoded:
                yield separator + encoded
                separator = b","
        yield b'],"fenced_ids":' + self._fenced + b',"subscriptions":' + self._subscriptions + b"}"

    def _encode_slice(self, start: int, end: int) -> bytes:
        assert start == self._next_id
        live = self._table.by_id
        streams = []
        for stream_id in range(start, end):
            saved = self._saved.pop(stream_id, None)
            if saved is not None:
                streams.append(saved)
            elif stream_id in live:
                streams.append(_encode_stream(live[stream_id]))
        self._next_id = end
        return orjson.dumps(streams)[1:-1]


# Version 2 stores each stream as an array: the five fields every stream has,
# then the optional ones in this order, the trailing ones that hold their
# default left out, so that the usual stream (no TTL, open, no producer, not
# a fork) is five values. Version 1 (still read) was one object per stream,
# field names and all: four times the bytes and twice the load time.
_REQUIRED = 5  # id, path, content type, created at, tail
# ttl, expires at, expires at (seconds form), closed, closed by, last seq,
# producers, fork, refcount, soft deleted, damaged, retention, head, age marks
_OPTIONAL_DEFAULTS: tuple[Any, ...] = (None, None, None, False, None, None, {}, None, 0, False, None, None, 0, [])


def _encode_stream(s: StreamState) -> list[Any]:
    required = [s.stream_id, s.path, s.content_type, s.created_at, s.tail]
    expiry = s.expiry
    if expiry.ttl_s is None and expiry.expires_at is None and expiry.expires_at_s is None and not s.closed \
            and s.last_seq is None and not s.producers and s.fork is None and not s.refcount \
            and not s.soft_deleted and s.damaged is None and s.retention is None and not s.head and not s.marks:
        return required
    optional = [
        expiry.ttl_s, expiry.expires_at, expiry.expires_at_s, s.closed,
        dataclasses.astuple(s.closed_by) if s.closed_by else None, s.last_seq,
        {k: [v.epoch, v.last_seq] for k, v in s.producers.items()},
        dataclasses.astuple(s.fork) if s.fork else None, s.refcount, s.soft_deleted, s.damaged,
        [s.retention.max_age_s, s.retention.max_bytes] if s.retention is not None else None, s.head,
        [list(mark) for mark in s.marks],
    ]
    kept = len(optional)
    while kept and optional[kept - 1] == _OPTIONAL_DEFAULTS[kept - 1]:
        kept -= 1
    return required + optional[:kept]


def _collector_paused(decode: Callable[[bytes], StreamTable]) -> Callable[[bytes], StreamTable]:
    """Runs ``decode`` with the cyclic garbage collector off: building a table of
    millions of objects, none of them garbage, otherwise triggers full
    collections over the growing heap again and again (a third of the load
    time at 100,000 streams)."""
    @functools.wraps(decode)
    def paused(payload: bytes) -> StreamTable:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return decode(payload)
        finally:
            if enabled:
                gc.enable()
    return paused


@_collector_paused
def decode_table(payload: bytes) -> StreamTable:
    doc = orjson.loads(payload)
    version = doc.get("version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"unsupported checkpoint version {version!r}")
    table = StreamTable()
    no_expiry = Expiry()  # frozen, so the many streams without one can share it
    if version == 1:
        for s in doc["streams"]:
            table.add(_stream_v1(s, no_expiry))
    else:
        for s in doc["streams"]:
            # The usual stream inline: a call per stream is a tenth of the load time.
            table.add(StreamState(s[0], s[1], s[2], no_expiry, s[3], s[4]) if len(s) == _REQUIRED
                      else _stream(s, no_expiry))
    table.fenced_ids = {k: v for k, v in doc.get("fenced_ids", [])}
    if "subscriptions" in doc:  # absent from checkpoints written before subscriptions existed
        table.subscriptions = table_from_json(doc["subscriptions"])
    table.next_stream_id = max(table.next_stream_id, doc["next_stream_id"], *(k + 1 for k in table.fenced_ids))
    return table


def _stream(s: list[Any], no_expiry: Expiry) -> StreamState:
    """A version 2 stream with optional fields."""
    if not _REQUIRED <= len(s) <= _REQUIRED + len(_OPTIONAL_DEFAULTS):
        raise ValueError(f"a checkpointed stream has {len(s)} fields")
    (stream_id, path, ct, at, tail, ttl, exp, exp_s, closed, closed_by, seq, producers, fork, refcount,
     soft_deleted, damaged, retention, head, marks) = [*s, *_OPTIONAL_DEFAULTS[len(s) - _REQUIRED:]]
    state = _state(stream_id, path, ct, at, tail, no_expiry if ttl is None and exp is None and exp_s is None
                   else Expiry(ttl, exp, exp_s), closed, closed_by, seq, producers, fork, refcount, soft_deleted, damaged)
    state.retention = Retention(*retention) if retention is not None else None
    state.head, state.marks = head, [(at, end) for at, end in marks]
    return state


def _stream_v1(s: dict[str, Any], no_expiry: Expiry) -> StreamState:
    ttl, exp, exp_s = s["ttl"], s["exp"], s["exp_s"]
    return _state(s["id"], s["path"], s["ct"], s["at"], s["tail"],
                  no_expiry if ttl is None and exp is None and exp_s is None else Expiry(ttl, exp, exp_s),
                  s["closed"], s["closed_by"], s["seq"], s["producers"], s["fork"], s["refcount"],
                  s["soft_deleted"], s.get("damaged"))


def _state(stream_id: int, path: str, ct: str, at: float, tail: int, expiry: Expiry, closed: bool,
           closed_by: list[Any] | None, seq: str | None, producers: dict[str, list[int]], fork: list[Any] | None,
           refcount: int, soft_deleted: bool, damaged: str | None) -> StreamState:
    return StreamState(
        stream_id, path, ct, expiry, at, tail=tail, closed=closed,
        closed_by=Producer(*closed_by) if closed_by else None, last_seq=seq,
        producers={k: ProducerState(*v) for k, v in producers.items()},
        fork=ForkOrigin(*fork) if fork else None,
        refcount=refcount, soft_deleted=soft_deleted, damaged=damaged,
    )


def open_writer(directory: Path, position: int, ops: FileOps = REAL) -> tuple[SnapshotWriter, int | None]:
    """A writer for the checkpoint at ``position``, and the previous checkpoint's
    position (if any): its commit keeps that one, pruning only older ones.

    The previous checkpoint, and the WAL from its position on, stay so that
    recovery can fall back to them if the new checkpoint rots on disk.
    """
    folder = directory / "checkpoints"
    previous = max((p for p in list_snapshots(folder) if p < position), default=None) if folder.is_dir() else None
    return SnapshotWriter(folder, position, ops), previous


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    table: StreamTable
    wal: SegmentedLog
    checkpoint_position: int
    replayed_events: int
    seconds: float
