"""Checkpoints: the StreamTable as of one WAL position, and recovery from it.

Owns: the snapshot payload (every stream's state, as JSON), taking it at one
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
from ..protocol.state import ForkOrigin, ProducerState, StreamState, StreamTable
from .fileops import REAL, FileOps
from .snapshot import SnapshotWriter, list_snapshots
from .wal import SegmentedLog

FORMAT_VERSION = 1


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
        self._saved: dict[int, dict[str, Any]] = {}
        self._head = orjson.dumps({"version": FORMAT_VERSION, "next_stream_id": table.next_stream_id})[:-1]
        self._fenced = orjson.dumps([[k, v] for k, v in table.fenced_ids.items()])
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
        yield b'],"fenced_ids":' + self._fenced + b"}"

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


def _encode_stream(s: StreamState) -> dict[str, Any]:
    return {
        "id": s.stream_id, "path": s.path, "ct": s.content_type,
        "ttl": s.expiry.ttl_s, "exp": s.expiry.expires_at, "exp_s": s.expiry.expires_at_s,
        "at": s.created_at, "tail": s.tail, "closed": s.closed,
        "closed_by": dataclasses.astuple(s.closed_by) if s.closed_by else None,
        "seq": s.last_seq,
        "producers": {k: [v.epoch, v.last_seq] for k, v in s.producers.items()},
        "fork": dataclasses.astuple(s.fork) if s.fork else None,
        "refcount": s.refcount, "soft_deleted": s.soft_deleted,
        **({"damaged": s.damaged} if s.damaged is not None else {}),
    }


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
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint version {doc.get('version')!r}")
    table = StreamTable()
    no_expiry = Expiry()  # frozen, so the many streams without one can share it
    for s in doc["streams"]:
        ttl, exp, exp_s = s["ttl"], s["exp"], s["exp_s"]
        table.add(StreamState(
            s["id"], s["path"], s["ct"],
            no_expiry if ttl is None and exp is None and exp_s is None else Expiry(ttl, exp, exp_s), s["at"],
            tail=s["tail"], closed=s["closed"],
            closed_by=Producer(*s["closed_by"]) if s["closed_by"] else None,
            last_seq=s["seq"],
            producers={k: ProducerState(*v) for k, v in s["producers"].items()},
            fork=ForkOrigin(*s["fork"]) if s["fork"] else None,
            refcount=s["refcount"], soft_deleted=s["soft_deleted"], damaged=s.get("damaged"),
        ))
    table.fenced_ids = {k: v for k, v in doc.get("fenced_ids", [])}
    table.next_stream_id = max(table.next_stream_id, doc["next_stream_id"], *(k + 1 for k in table.fenced_ids))
    return table


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
