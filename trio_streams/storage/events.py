"""Event ⇄ WAL record payload codec.

Owns: the byte layout of each event type inside a WAL record (the framing
around it is wal.py's). Never: performs I/O.

Payload layout: ``u32 meta_length | meta (JSON object) | data bytes``. The
metadata is small and self-describing, so fields can be added without a
format version bump; bulk data follows raw, never re-encoded. An append's
``pos`` is its event's position; records written before it was kept decode
with position None (replay places them at the tail, ``positioned``).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Final

import orjson

from ..protocol.headers import Expiry, Producer
from ..protocol.retention import Retention
from ..protocol.state import Appended, Created, Deleted, Event, ForkOrigin, StreamTable, Trimmed
from ..protocol.subscriptions import SUBSCRIPTION_EVENTS, event_from_json, event_to_json

CREATED: Final = 1
APPENDED: Final = 2
DELETED: Final = 3
# Every subscription event: its kind and fields as the metadata, no data.
SUBSCRIPTION: Final = 4
# Retention moved a stream's head: ``id`` and ``to``, no data.
TRIMMED: Final = 5
_META_LENGTH = struct.Struct("<I")


def encode_event(event: Event) -> tuple[int, bytes]:
    rtype, parts = encode_event_parts(event)
    return rtype, b"".join(parts)


def encode_event_parts(event: Event) -> tuple[int, list[bytes | memoryview]]:
    """The record type and the payload as parts: the metadata, then the data itself, never copied."""
    if isinstance(event, Appended):
        return APPENDED, _parts(_append_meta(event), event.data)
    if isinstance(event, Created):
        return CREATED, _parts(_create_meta(event), event.data)
    if isinstance(event, SUBSCRIPTION_EVENTS):
        return SUBSCRIPTION, _parts(event_to_json(event), b"")
    if isinstance(event, Trimmed):
        return TRIMMED, _parts({"id": event.stream_id, "to": event.position}, b"")
    return DELETED, _parts({"id": event.stream_id}, b"")


def decode_event(rtype: int, payload: bytes) -> Event:
    """The event; an append from a record written before records kept ``pos`` has position None."""
    (meta_length,) = _META_LENGTH.unpack_from(payload)
    meta = orjson.loads(payload[4 : 4 + meta_length])
    data = payload[4 + meta_length :]
    if rtype == APPENDED:
        return _decode_append(meta, data)
    return _decode_other(rtype, meta, data)


def _decode_other(rtype: int, meta: Any, data: bytes) -> Event:
    if rtype == CREATED:
        expiry = Expiry(meta.get("ttl"), meta.get("exp"), meta.get("exp_s"))
        fork = ForkOrigin(*meta["fork"]) if "fork" in meta else None
        retention = Retention(*meta["ret"]) if "ret" in meta else None
        return Created(meta["id"], meta["path"], meta["ct"], expiry, meta["at"], meta.get("closed", False), data, fork,
                       retention)
    if rtype == DELETED:
        return Deleted(meta["id"])
    if rtype == TRIMMED:
        return Trimmed(meta["id"], meta["to"])
    if rtype == SUBSCRIPTION:
        return event_from_json(meta)
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
    if event.retention is not None:
        meta["ret"] = [event.retention.max_age_s, event.retention.max_bytes]
    return meta


def _append_meta(event: Appended) -> dict[str, object]:
    meta: dict[str, object] = {"id": event.stream_id}
    if event.position is not None:
        meta["pos"] = event.position
    if event.seq is not None:
        meta["seq"] = event.seq
    if event.producer is not None:
        meta["p"] = [event.producer.id, event.producer.epoch, event.producer.seq]
    if event.close:
        meta["close"] = True
    if event.at is not None:
        meta["at"] = event.at
    return meta


def _decode_append(meta: dict[str, object], data: bytes) -> Appended:
    producer = None
    if "p" in meta:
        pid, epoch, seq = meta["p"]  # type: ignore[misc]
        producer = Producer(pid, epoch, seq)
    pos = meta.get("pos")
    position = pos if isinstance(pos, int) else None
    at = meta.get("at")
    return Appended(meta["id"], position, data, meta.get("seq"), producer, bool(meta.get("close", False)),  # type: ignore[arg-type]
                    at if isinstance(at, (int, float)) else None)


def positioned(table: StreamTable, event: Event) -> Event:
    """An append decoded without a position (an old record), placed at its stream's
    tail as replay always placed it; any other event as it is."""
    if isinstance(event, Appended) and event.position is None:
        return dataclasses.replace(event, position=table.by_id[event.stream_id].tail)
    return event
