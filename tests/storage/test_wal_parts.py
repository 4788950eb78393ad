"""Records written as parts (header, metadata, data in place): the same bytes as joined records.

Large appends are written with writev from where their data already is; the
WAL format and its crc must be exactly those of ``encode_record`` + ``append``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from trio_streams.storage import wal
from trio_streams.storage.wal import SegmentedLog, encode_record, encode_record_parts

from test_wal import BIG, encode_all, expected_records, record_bytes, recover_all, sample_records


def _split(payload: bytes, rng: random.Random) -> list[bytes | memoryview]:
    """The payload cut at random places, some parts empty, some memoryviews."""
    cuts = sorted(rng.randint(0, len(payload)) for _ in range(rng.randint(0, 4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    return [memoryview(p) if rng.random() < 0.5 else p for p in parts]


def _parts_of(items: list[tuple[int, bytes]], rng: random.Random) -> list[bytes | memoryview]:
    parts: list[bytes | memoryview] = []
    for rtype, payload in items:
        parts += encode_record_parts(rtype, _split(payload, rng))
    return parts


@pytest.mark.parametrize("seed", range(20))
def test_record_parts_are_the_record(seed: int) -> None:
    rng = random.Random(seed)
    for rtype, payload in sample_records():
        joined = b"".join(encode_record_parts(rtype, _split(payload, rng)))
        assert joined == encode_record(rtype, payload) == record_bytes(rtype, payload)


def test_record_parts_check_type_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        encode_record_parts(0, [b"x"])
    monkeypatch.setattr(wal, "RECORD_PAYLOAD_BYTES_MAX", 4)
    assert encode_record_parts(1, [b"12", b"34"])
    with pytest.raises(ValueError):
        encode_record_parts(1, [b"12", b"345"])


def test_append_parts_writes_what_append_writes(tmp_path: Path) -> None:
    rng = random.Random(7)
    items = sample_records() * 300  # 1500 records, more parts than one writev takes
    joined, parted = tmp_path / "joined", tmp_path / "parted"
    for directory, write in ((joined, lambda log: log.append(encode_all(items))),
                             (parted, lambda log: log.append_parts(_parts_of(items, rng)))):
        log = SegmentedLog.open(directory, BIG)
        list(log.recover(0))
        assert write(log) == 0
        log.close()
    assert len(_parts_of(items, rng)) > 1024
    assert (parted / wal.segment_name(0)).read_bytes() == (joined / wal.segment_name(0)).read_bytes()
    assert recover_all(parted) == expected_records(items, 0)


@pytest.mark.parametrize("most", [1, 3, 10])
def test_short_writes_are_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most: int) -> None:
    real = os.writev
    monkeypatch.setattr(wal.os, "writev", lambda fd, buffers: real(fd, [bytes(b"".join(buffers)[:most])]))
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    log.append_parts(_parts_of(sample_records(), random.Random(most)))
    log.close()
    assert (tmp_path / wal.segment_name(0)).read_bytes() == encode_all(sample_records())


@pytest.mark.parametrize("damage", ["crc", "truncate", "extra"])
def test_append_parts_refuses_anything_but_whole_valid_records(tmp_path: Path, damage: str) -> None:
    data = bytearray(encode_all(sample_records()))
    if damage == "crc":
        data[-1] ^= 1
    elif damage == "truncate":
        del data[-1]
    else:
        data += b"\x00" * 3
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    with pytest.raises(AssertionError):
        log.append_parts(_split(bytes(data), random.Random(3)))
    log.close()
