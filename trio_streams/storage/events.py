"""Event ⇄ WAL record payload codec.

Owns: the byte layout of each event type inside a WAL record (the framing
around it is wal.py's). Never: performs I/O.

Payload layout: ``u32 meta_length | meta (JSON object) | data bytes``. The
metadata is small and self-describing, so fields can be added without a
format version bump; bulk data follows raw, never re-encoded.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Final

import orjson

from ..protocol.headers import Expiry, Producer
from ..protocol.state import Appended, Created, Deleted, Event, ForkOrigin

CREATED: Final = 1
APPENDED: Final = 2
DELETED: Final = 3
_META_LENGTH = struct.Struct("<I")


def encode_event(event: Event) -> tuple[int, bytes]:
    rtype, parts = encode_event_parts(event)
    return rtype, b"".join(parts)


def encode_event_parts(event: Event, position: int | None = None) -> tuple[int, list[bytes | memoryview]]:
    """The record type and the payload as parts: the metadata, then the data itself, never copied.

    ``position`` is the stream position an append is written at: after WAL
    damage, recovery checks that a stream's next record continues exactly there.
    """
    if isinstance(event, Appended):
        return APPENDED, _parts(_append_meta(event, position), event.data)
    if isinstance(event, Created):
        return CREATED, _parts(_create_meta(event), event.data)
    return DELETED, _parts({"id": event.stream_id}, b"")


def decode_event(rtype: int, payload: bytes) -> Event:
    return decode_event_at(rtype, payload)[0]


def decode_event_at(rtype: int, payload: bytes) -> tuple[Event, int | None]:
    """The event and, for an append, the stream position it was written at (None in records from before it was kept)."""
    (meta_length,) = _META_LENGTH.unpack_from(payload)
    meta = orjson.loads(payload[4 : 4 + meta_length])
    data = payload[4 + meta_length :]
    if rtype == APPENDED:
        position = meta.get("pos")
        return _decode_append(meta, data), position if isinstance(position, int) else None
    return _decode_other(rtype, meta, data), None


def _decode_other(rtype: int, meta: Any, data: bytes) -> Event:
    if rtype == CREATED:
        expiry = Expiry(meta.get("ttl"), meta.get("exp"), meta.get("exp_s"))
        fork = ForkOrigin(*meta["fork"]) if "fork" in meta else None
        return Created(meta["id"], meta["path"], meta["ct"], expiry, meta["at"], meta.get("closed", False), data, fork)
    if rtype == DELETED:
        return Deleted(meta["id"])
    raise ValueError(f"unknown event record type {rtype}")


def _parts(meta: dict[str, object], data: bytes | memoryview) -> list[bytes | memoryview]:
    encoded = orjson.dumps(meta)
    return [_META_LENGTH.pack(len(encoded)) + encoded, data]


def _create_meta(event: Created) -> dict[str, object]:
    meta: dict[str, object] = {"id": event.stream_id, "path": event.path, "ct": event.content_type, "at": event.created_at}
    if event.expiry.ttl_s is not None:
        meta["ttl"] = event.expiry.ttl_s
    if event.expiry.expires_at is not None:
        meta["exp"] = event.expiry.expires_at
        meta["exp_s"] = event.expiry.expires_at_s
    if event.closed:
        meta["closed"] = True
    if event.fork is not None:
        meta["fork"] = dataclasses.astuple(event.fork)
    return meta


def _append_meta(event: Appended, position: int | None) -> dict[str, object]:
    meta: dict[str, object] = {"id": event.stream_id}
    if position is not None:
        meta["pos"] = position
    if event.seq is not None:
        meta["seq"] = event.seq
    if event.producer is not None:
        meta["p"] = [event.producer.id, event.producer.epoch, event.producer.seq]
    if event.close:
        meta["close"] = True
    return meta


def _decode_append(meta: dict[str, object], data: bytes) -> Appended:
    producer = None
    if "p" in meta:
        pid, epoch, seq = meta["p"]  # type: ignore[misc]
        producer = Producer(pid, epoch, seq)
    return Appended(meta["id"], data, meta.get("seq"), producer, bool(meta.get("close", False)))  # type: ignore[arg-type]
