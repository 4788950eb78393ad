"""Checkpoints: the StreamTable as of one WAL position, and recovery from it.

Owns: the snapshot payload (every stream's state, as JSON) and the restart
procedure: load the newest valid snapshot, cut each stream file back to its
checkpointed length, replay the WAL from the snapshot's position through
the same ``StreamTable.apply`` the running server uses, drop orphan files.
Restart time is bounded by the WAL written since the last checkpoint, not
by the amount of data stored.

Never: runs in the Trio thread (everything here blocks; callers use
``trio.to_thread``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from ..protocol.headers import Expiry, Producer
from ..protocol.state import Appended, Created, ForkOrigin, ProducerState, StreamState, StreamTable
from .events import decode_event
from .fileops import REAL, FileOps
from .snapshot import load_latest_snapshot, write_snapshot
from .store import Store
from .wal import SegmentedLog

log = logging.getLogger("trio_streams.recovery")
FORMAT_VERSION = 1


def encode_table(table: StreamTable) -> bytes:
    return orjson.dumps({
        "version": FORMAT_VERSION,
        "next_stream_id": table.next_stream_id,
        "streams": [_encode_stream(s) for s in table.by_id.values()],
    })


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
    }


def decode_table(payload: bytes) -> StreamTable:
    doc = orjson.loads(payload)
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint version {doc.get('version')!r}")
    table = StreamTable()
    for s in doc["streams"]:
        table.add(StreamState(
            s["id"], s["path"], s["ct"], Expiry(s["ttl"], s["exp"], s["exp_s"]), s["at"],
            tail=s["tail"], closed=s["closed"],
            closed_by=Producer(*s["closed_by"]) if s["closed_by"] else None,
            last_seq=s["seq"],
            producers={k: ProducerState(*v) for k, v in s["producers"].items()},
            fork=ForkOrigin(*s["fork"]) if s["fork"] else None,
            refcount=s["refcount"], soft_deleted=s["soft_deleted"],
        ))
    table.next_stream_id = max(table.next_stream_id, doc["next_stream_id"])
    return table


def write(directory: Path, position: int, payload: bytes, ops: FileOps = REAL) -> None:
    write_snapshot(directory / "checkpoints", position, payload, ops)


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    table: StreamTable
    wal: SegmentedLog
    checkpoint_position: int
    replayed_events: int
    seconds: float


def recover(directory: Path, store: Store, segment_bytes_max: int, ops: FileOps = REAL) -> Recovered:
    started = time.monotonic()
    loaded = load_latest_snapshot(directory / "checkpoints")
    position, table = (0, StreamTable()) if loaded is None else (loaded[0], decode_table(loaded[1]))
    # A stream deleted after the checkpoint has had its files removed: that is
    # only damage if the WAL does not delete it again below.
    short = {state.stream_id for state in table.by_id.values()
             if not store.truncate_sync(state.stream_id, state.tail - state.base, state.tail)}
    wal = SegmentedLog.open(directory / "wal", segment_bytes_max, ops)
    replayed = 0
    for record in wal.recover(position):
        _replay(table, store, decode_event(record.rtype, record.payload))
        replayed += 1
    damaged = sorted(stream_id for stream_id in short if stream_id in table.by_id)
    if damaged:
        raise RuntimeError(f"stream files {', '.join(f'{i:x}' for i in damaged)} are shorter than "
                           "their checkpointed length")
    table.removed.clear()  # their files are orphans now, removed just below
    store.remove_orphans_sync(set(table.by_id))
    seconds = time.monotonic() - started
    log.info("recovered %d streams: checkpoint at %d, %d events replayed in %.3fs",
             len(table.by_id), position, replayed, seconds)
    return Recovered(table, wal, position, replayed, seconds)


def _replay(table: StreamTable, store: Store, event: Any) -> None:
    if isinstance(event, Appended):
        state = table.by_id[event.stream_id]
        store.append_sync(event.stream_id, state.tail - state.base, event.data, state.tail + len(event.data))
    elif isinstance(event, Created):
        base = event.fork.base if event.fork is not None else 0
        store.create_sync(event.stream_id)
        store.append_sync(event.stream_id, 0, event.data, base + len(event.data))
    table.apply(event)
