"""Checkpoints: the StreamTable as of one WAL position, and recovery from it.

Owns: the snapshot payload (every stream's state, as JSON) and replaying one
WAL event into the table and its stream file through the same
``StreamTable.apply`` the running server uses (recovery.py drives it).

Never: runs in the Trio thread (everything here blocks; callers use
``trio.to_thread``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from ..protocol.headers import Expiry, Producer
from ..protocol.state import Appended, Created, Event, ForkOrigin, ProducerState, StreamState, StreamTable, check_batch
from .events import positioned
from .fileops import REAL, FileOps
from .snapshot import list_snapshots, write_snapshot
from .store import Store
from .wal import SegmentedLog

FORMAT_VERSION = 1


def encode_table(table: StreamTable) -> bytes:
    return orjson.dumps({
        "version": FORMAT_VERSION,
        "next_stream_id": table.next_stream_id,
        "streams": [_encode_stream(s) for s in table.by_id.values()],
        "fenced_ids": [[k, v] for k, v in table.fenced_ids.items()],
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
        **({"damaged": s.damaged} if s.damaged is not None else {}),
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
            refcount=s["refcount"], soft_deleted=s["soft_deleted"], damaged=s.get("damaged"),
        ))
    table.fenced_ids = {k: v for k, v in doc.get("fenced_ids", [])}
    table.next_stream_id = max(table.next_stream_id, doc["next_stream_id"], *(k + 1 for k in table.fenced_ids))
    return table


def write(directory: Path, position: int, payload: bytes, ops: FileOps = REAL) -> int | None:
    """Writes a checkpoint and keeps the one before it (if any); returns that one's position.

    The previous checkpoint, and the WAL from its position on, stay so that
    recovery can fall back to them if the new checkpoint rots on disk.
    """
    folder = directory / "checkpoints"
    previous = max((p for p in list_snapshots(folder) if p < position), default=None) if folder.is_dir() else None
    write_snapshot(folder, position, payload, ops, prune_before=previous)
    return previous


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    table: StreamTable
    wal: SegmentedLog
    checkpoint_position: int
    replayed_events: int
    seconds: float


def replay_event(table: StreamTable, store: Store, event: Event) -> None:
    """Rewrites an event's data into its stream file at its position, then applies it (idempotent).

    The event is checked against the table before its data is written
    (``check_batch``), so a record that does not continue its stream raises
    ``ContinuityError`` and touches no file.
    """
    event = positioned(table, event)
    bases = check_batch(table, [event])
    if isinstance(event, (Created, Appended)):
        store.write_event_sync(event, bases[event.stream_id])
    table.apply(event)
