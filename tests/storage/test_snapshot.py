"""Checkpoint snapshot files: format, atomic replacement, fallback on damage."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import crc32c
import pytest

from trio_streams.storage import snapshot
from trio_streams.storage.snapshot import (
    HEADER_BYTES,
    SnapshotCorrupt,
    decode_snapshot,
    encode_snapshot,
    load_latest_snapshot,
    snapshot_name,
    write_snapshot,
)


def test_header_layout() -> None:
    data = encode_snapshot(7, b"abc")
    assert data == b"TSCK" + struct.pack("<HHQQI", 1, 0, 7, 3, crc32c.crc32c(b"abc")) + b"abc"
    assert HEADER_BYTES == 28
    assert decode_snapshot(data, 7) == b"abc"


def test_round_trip(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "meta", 4096, b'{"streams": 3}')
    assert path == tmp_path / "meta" / "checkpoint-00000000000000004096.snap"
    assert load_latest_snapshot(tmp_path / "meta") == (4096, b'{"streams": 3}')
    assert os.listdir(tmp_path / "meta") == [path.name]


def test_empty_payload_round_trip(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 0, b"")
    assert load_latest_snapshot(tmp_path) == (0, b"")


def test_missing_or_empty_directory_has_no_snapshot(tmp_path: Path) -> None:
    assert load_latest_snapshot(tmp_path / "absent") is None
    assert load_latest_snapshot(tmp_path) is None


def test_newer_snapshot_replaces_older(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 10, b"old")
    write_snapshot(tmp_path, 20, b"new")
    assert load_latest_snapshot(tmp_path) == (20, b"new")
    assert os.listdir(tmp_path) == [snapshot_name(20)]


def test_same_position_overwrites(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 10, b"first")
    write_snapshot(tmp_path, 10, b"second")
    assert load_latest_snapshot(tmp_path) == (10, b"second")


def with_older_snapshot(tmp_path: Path) -> Path:
    """An older valid snapshot at 10 beside a newer one at 20, as after a
    crash that kept both (pruning deletes the older one otherwise)."""
    older = write_snapshot(tmp_path, 10, b"older")
    saved = older.read_bytes()
    newer = write_snapshot(tmp_path, 20, b"newer payload")
    older.write_bytes(saved)
    assert load_latest_snapshot(tmp_path) == (20, b"newer payload")
    return newer


def flip_at(index: int) -> Callable[[bytes], bytes]:
    return lambda data: data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("payload bit flip", flip_at(HEADER_BYTES + 3)),
        ("magic", flip_at(0)),
        ("version", flip_at(4)),
        ("flags", flip_at(6)),
        ("position", flip_at(8)),
        ("length", flip_at(16)),
        ("crc", flip_at(24)),
        ("truncated payload", lambda data: data[:-1]),
        ("truncated header", lambda data: data[:10]),
        ("empty file", lambda data: b""),
        ("trailing garbage", lambda data: data + b"x"),
    ],
)
def test_corrupt_newest_falls_back_to_older(tmp_path: Path, name: str, damage: Callable[[bytes], bytes]) -> None:
    newer = with_older_snapshot(tmp_path)
    newer.write_bytes(damage(newer.read_bytes()))
    assert load_latest_snapshot(tmp_path) == (10, b"older"), name
    # Loading is read-only: the damaged file is still there to inspect.
    assert newer.exists()


def test_every_truncation_is_rejected() -> None:
    data = encode_snapshot(99, b"some payload bytes")
    for cut in range(len(data)):
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(data[:cut], 99)


def test_position_must_match_file_name(tmp_path: Path) -> None:
    (tmp_path / snapshot_name(50)).write_bytes(encode_snapshot(40, b"misnamed"))
    write_snapshot(tmp_path, 10, b"valid")
    assert load_latest_snapshot(tmp_path) == (10, b"valid")


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    (tmp_path / snapshot_name(5)).write_bytes(b"not a snapshot at all, long enough for a header")
    assert load_latest_snapshot(tmp_path) is None


def test_temp_files_are_ignored_and_cleaned_up(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 20, b"committed")
    # A fully written temp file whose rename never happened must not count.
    stray = tmp_path / (snapshot_name(30) + snapshot.TEMP_SUFFIX)
    stray.write_bytes(encode_snapshot(30, b"uncommitted"))
    (tmp_path / "unrelated.txt").write_bytes(b"keep me")
    assert load_latest_snapshot(tmp_path) == (20, b"committed")
    write_snapshot(tmp_path, 40, b"next")
    assert sorted(os.listdir(tmp_path)) == [snapshot_name(40), "unrelated.txt"]
    assert load_latest_snapshot(tmp_path) == (40, b"next")


def test_rejects_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, -1, b"")
    monkeypatch.setattr(snapshot, "SNAPSHOT_PAYLOAD_BYTES_MAX", 3)
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, 1, b"four")
    assert load_latest_snapshot(tmp_path) is None
