"""WAL codec, incremental scanner and segmented log: format, crash recovery."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import crc32c
import pytest

from trio_streams.storage import wal
from trio_streams.storage.wal import (
    HEADER_BYTES,
    Record,
    RecordScanner,
    SegmentedLog,
    WalError,
    encode_record,
    scan,
    segment_name,
)

BIG = 1 << 30  # segment_bytes_max that never rotates


def record_bytes(rtype: int, payload: bytes) -> bytes:
    """An independent encoder, so the codec is checked against the spec."""
    checksum = crc32c.crc32c(bytes([rtype]) + payload)
    return struct.pack("<IIB", len(payload), checksum, rtype) + payload


def sample_records() -> list[tuple[int, bytes]]:
    return [(1, b""), (2, b"a"), (7, b"hello world"), (255, bytes(range(256))), (3, b"\x00" * 5)]


def encode_all(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_record(rtype, payload) for rtype, payload in items)


def expected_records(items: list[tuple[int, bytes]], base: int) -> list[Record]:
    records = []
    for rtype, payload in items:
        records.append(Record(base, rtype, payload))
        base += HEADER_BYTES + len(payload)
    return records


def recover_all(directory: Path, from_position: int = 0, segment_bytes_max: int = BIG) -> list[Record]:
    log = SegmentedLog.open(directory, segment_bytes_max)
    try:
        return list(log.recover(from_position))
    finally:
        log.close()


def directory_state(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# ------------------------------------------------------------------ codec


@pytest.mark.parametrize(
    ("rtype", "payload", "encoded"),
    [
        # Known answers pin the byte layout: length, crc32c(type+payload), type.
        (1, b"", bytes.fromhex("00000000" "52d016a0" "01")),
        (2, b"ab", bytes.fromhex("02000000") + struct.pack("<I", crc32c.crc32c(b"\x02ab")) + b"\x02ab"),
        (255, b"\x00", bytes.fromhex("01000000") + struct.pack("<I", crc32c.crc32c(b"\xff\x00")) + b"\xff\x00"),
    ],
)
def test_encode_record_layout(rtype: int, payload: bytes, encoded: bytes) -> None:
    assert encode_record(rtype, payload) == encoded
    assert scan(encoded, 40) == ([Record(40, rtype, payload)], len(encoded))


@pytest.mark.parametrize("rtype", [0, 256, -1])
def test_encode_record_rejects_bad_types(rtype: int) -> None:
    with pytest.raises(ValueError):
        encode_record(rtype, b"x")


def test_encode_record_rejects_oversized_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "RECORD_PAYLOAD_BYTES_MAX", 4)
    assert encode_record(1, b"1234")
    with pytest.raises(ValueError):
        encode_record(1, b"12345")


def test_scan_rejects_length_over_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    data = record_bytes(1, b"12345")
    assert scan(data, 0)[1] == len(data)
    monkeypatch.setattr(wal, "RECORD_PAYLOAD_BYTES_MAX", 4)
    assert scan(data, 0) == ([], 0)


GOOD = record_bytes(5, b"payload")
SECOND = record_bytes(6, b"xy")


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("name", "buf", "count", "consumed"),
    [
        ("empty", b"", 0, 0),
        ("partial header", GOOD[:5], 0, 0),
        ("header only", GOOD[:HEADER_BYTES], 0, 0),
        ("partial payload", GOOD[:-1], 0, 0),
        ("one record", GOOD, 1, len(GOOD)),
        ("two records", GOOD + SECOND, 2, len(GOOD) + len(SECOND)),
        ("torn second", GOOD + SECOND[:-1], 1, len(GOOD)),
        ("zero-filled tail", GOOD + bytes(64), 1, len(GOOD)),
        ("bad crc in payload", flip(GOOD, HEADER_BYTES + 2) + SECOND, 0, 0),
        ("bad crc field", flip(GOOD, 5) + SECOND, 0, 0),
        ("bad type byte", flip(GOOD, 8) + SECOND, 0, 0),
        ("type 0 with valid crc", struct.pack("<IIB", 0, crc32c.crc32c(b"\x00"), 0), 0, 0),
        ("huge length", struct.pack("<IIB", 0xFFFFFFFF, 0, 1) + GOOD, 0, 0),
        ("garbage after valid", GOOD + b"\xff" * 20 + SECOND, 1, len(GOOD)),
    ],
)
def test_scan_table(name: str, buf: bytes, count: int, consumed: int) -> None:
    records, used = scan(buf, 1000)
    assert (len(records), used) == (count, consumed), name
    assert [r.position for r in records] == [1000, 1000 + len(GOOD)][:count]


def scanner_inputs() -> list[bytes]:
    log = encode_all(sample_records())
    return [
        log,
        log[:-3],
        log + bytes(20),
        flip(log, len(encode_all(sample_records()[:2])) + HEADER_BYTES + 3),
        log + record_bytes(9, b"x" * 300),
        b"",
    ]


@pytest.mark.parametrize("index", range(6))
def test_scanner_byte_at_a_time_equals_scan(index: int) -> None:
    buf = scanner_inputs()[index]
    expected, consumed = scan(buf, 77)
    scanner = RecordScanner(77)
    got = []
    for i in range(len(buf)):
        got.extend(scanner.feed(buf[i : i + 1]))
    assert got == expected
    assert scanner.position == 77 + consumed
    if scanner.invalid:
        assert consumed < len(buf)
    else:
        assert scanner.pending_bytes == len(buf) - consumed


def test_scanner_random_splits_equal_scan() -> None:
    rng = random.Random(1234)
    for buf in scanner_inputs():
        expected = scan(buf, 0)[0]
        for _ in range(20):
            cuts = sorted(rng.sample(range(len(buf) + 1), min(4, len(buf) + 1)))
            pieces = [buf[a:b] for a, b in zip([0, *cuts], [*cuts, len(buf)])]
            scanner = RecordScanner()
            assert [r for piece in pieces for r in scanner.feed(piece)] == expected


def test_scanner_stays_stopped_after_invalid_record() -> None:
    scanner = RecordScanner()
    assert scanner.feed(GOOD) == [Record(0, 5, b"payload")]
    assert scanner.feed(flip(SECOND, 10)) == []
    assert scanner.invalid
    # A valid record after a bad one is never trusted.
    assert scanner.feed(GOOD) == []
    assert scanner.position == len(GOOD)


# ------------------------------------------------------------------ log basics


def test_append_and_recover_round_trip(tmp_path: Path) -> None:
    items = sample_records()
    log = SegmentedLog.open(tmp_path / "wal", BIG)
    assert list(log.recover(0)) == []
    starts = [log.append(encode_record(rtype, payload)) for rtype, payload in items]
    log.sync()
    log.close()
    assert starts == [r.position for r in expected_records(items, 0)]
    assert recover_all(tmp_path / "wal") == expected_records(items, 0)
    assert os.listdir(tmp_path / "wal") == [segment_name(0)]


def test_append_batch_returns_start_and_advances_end(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    batch = encode_all(sample_records())
    assert log.append(batch) == 0
    assert log.append(GOOD) == len(batch)
    assert log.end_position == len(batch) + len(GOOD)
    stats = log.statistics()
    assert (stats.segments, stats.end_position, stats.bytes_appended, stats.appends) == (
        1,
        len(batch) + len(GOOD),
        len(batch) + len(GOOD),
        2,
    )
    log.close()


def test_sync_counts_only_when_dirty(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    log.sync()
    assert log.statistics().syncs == 0
    log.append(GOOD)
    log.sync()
    log.sync()
    assert log.statistics().syncs == 1
    log.close()


def test_append_refused_before_recovery_and_after_close(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    with pytest.raises(RuntimeError):
        log.append(GOOD)
    list(log.recover(0))
    log.close()
    with pytest.raises(RuntimeError):
        log.append(GOOD)


def test_append_asserts_whole_valid_records(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    for bad in (GOOD[:-1], GOOD + b"\x01", flip(GOOD, 12)):
        with pytest.raises(AssertionError):
            log.append(bad)
    assert log.end_position == 0
    assert (tmp_path / segment_name(0)).stat().st_size == 0
    log.close()


def test_open_creates_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    log = SegmentedLog.open(target, BIG)
    assert target.is_dir()
    log.close()


def test_empty_directory_starts_at_given_position(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    assert list(log.recover(1234)) == []
    assert os.listdir(tmp_path) == [segment_name(1234)] == ["00000000000000001234.wal"]
    assert log.end_position == 1234
    assert log.append(GOOD) == 1234
    log.close()
    assert recover_all(tmp_path, 1234) == [Record(1234, 5, b"payload")]


# ------------------------------------------------------------------ crash recovery


def test_every_truncation_recovers_the_written_prefix(tmp_path: Path) -> None:
    items = sample_records()
    full = encode_all(items)
    boundaries = [0] + [r.end_position for r in expected_records(items, 0)]
    extra = encode_record(9, b"after")
    for cut in range(len(full) + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / segment_name(0)).write_bytes(full[:cut])
        kept = max(b for b in boundaries if b <= cut)
        survivors = [r for r in expected_records(items, 0) if r.end_position <= cut]

        log = SegmentedLog.open(directory, BIG)
        assert list(log.recover(0)) == survivors, cut
        assert log.end_position == kept
        assert (directory / segment_name(0)).stat().st_size == kept
        assert log.append(extra) == kept
        log.close()
        assert recover_all(directory) == [*survivors, Record(kept, 9, b"after")], cut


def build_segmented_log(directory: Path, segment_bytes_max: int, count: int) -> list[Record]:
    """Appends count records one at a time; returns them as written."""
    log = SegmentedLog.open(directory, segment_bytes_max)
    list(log.recover(0))
    written = []
    for i in range(count):
        payload = bytes([65 + i % 26]) * (i % 7)
        written.append(Record(log.append(encode_record(1 + i % 3, payload)), 1 + i % 3, payload))
    log.sync()
    log.close()
    return written


def test_every_truncation_across_segments(tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = build_segmented_log(source, 40, 12)
    starts = wal.list_segments(source)
    assert len(starts) >= 4
    files = {start: (source / segment_name(start)).read_bytes() for start in starts}
    end = written[-1].end_position
    for cut in range(end + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        # A crash: segments not yet created are absent, the one being
        # written is torn at the cut.
        for start, data in files.items():
            if start < cut or start == 0:
                (directory / segment_name(start)).write_bytes(data[: cut - start])
        survivors = [r for r in written if r.end_position <= cut]
        kept = survivors[-1].end_position if survivors else 0
        log = SegmentedLog.open(directory, 40)
        assert list(log.recover(0)) == survivors, cut
        assert log.append(encode_record(9, b"z")) == kept
        log.close()
        assert recover_all(directory, 0, 40) == [*survivors, Record(kept, 9, b"z")], cut


def test_corrupt_middle_record_stops_recovery_there(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, BIG)
    list(log.recover(0))
    for rtype, payload in [(1, b"first"), (2, b"middle"), (3, b"last")]:
        log.append(encode_record(rtype, payload))
    log.close()
    path = tmp_path / segment_name(0)
    data = path.read_bytes()
    middle = HEADER_BYTES + len(b"first")
    path.write_bytes(flip(data, middle + HEADER_BYTES + 2))
    assert recover_all(tmp_path) == [Record(0, 1, b"first")]
    assert path.stat().st_size == middle


def test_corrupt_middle_segment_deletes_later_segments(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    starts = wal.list_segments(tmp_path)
    victim = starts[1]
    path = tmp_path / segment_name(victim)
    path.write_bytes(flip(path.read_bytes(), 4))
    assert recover_all(tmp_path, 0, 40) == [r for r in written if r.end_position <= victim]
    assert wal.list_segments(tmp_path) == starts[:2]
    assert path.stat().st_size == 0


def test_zero_filled_tail_is_truncated(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, BIG, 5)
    path = tmp_path / segment_name(0)
    with open(path, "ab") as file:
        file.write(bytes(4096))
    assert recover_all(tmp_path) == written
    assert path.stat().st_size == written[-1].end_position


def test_recovery_is_idempotent(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    last = tmp_path / segment_name(wal.list_segments(tmp_path)[-1])
    with open(last, "ab") as file:
        file.write(encode_record(1, b"torn")[:-2])
    first = recover_all(tmp_path, 0, 40)
    state = directory_state(tmp_path)
    assert first == written
    assert recover_all(tmp_path, 0, 40) == first
    assert directory_state(tmp_path) == state


def test_crash_between_truncate_and_delete_is_finished_by_next_recovery(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    starts = wal.list_segments(tmp_path)
    # Simulate: segment 1 was truncated to one record, then the process died
    # before deleting its successors. Their names no longer line up.
    first_in_segment = [r for r in written if r.position == starts[1]][0]
    path = tmp_path / segment_name(starts[1])
    path.write_bytes(path.read_bytes()[: first_in_segment.end_position - starts[1]])
    expected = [r for r in written if r.end_position <= first_in_segment.end_position]
    assert recover_all(tmp_path, 0, 40) == expected
    assert wal.list_segments(tmp_path) == starts[:2]
    assert recover_all(tmp_path, 0, 40) == expected


# ------------------------------------------------------------------ segments


def test_rotation_names_segments_by_first_record_position(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    starts = wal.list_segments(tmp_path)
    record_starts = {r.position for r in written}
    assert starts[0] == 0
    assert set(starts) <= record_starts
    assert sorted(os.listdir(tmp_path)) == [segment_name(s) for s in starts]
    for start, successor in zip(starts, [*starts[1:], written[-1].end_position]):
        data = (tmp_path / segment_name(start)).read_bytes()
        # Each segment holds whole records and ends where its successor starts.
        assert len(data) == successor - start
        assert scan(data, start)[1] == len(data)
        assert len(data) <= 40


def test_batch_is_never_split_across_segments(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, 64)
    list(log.recover(0))
    small = encode_record(1, b"s" * 10)
    big_batch = encode_all([(2, b"b" * 50), (3, b"c" * 50)])
    assert log.append(small) == 0
    assert log.append(big_batch) == len(small)
    assert log.append(small) == len(small) + len(big_batch)
    assert log.statistics().rotations == 2
    log.close()
    assert wal.list_segments(tmp_path) == [0, len(small), len(small) + len(big_batch)]
    assert (tmp_path / segment_name(len(small))).read_bytes() == big_batch
    assert [r.rtype for r in recover_all(tmp_path, 0, 64)] == [1, 2, 3, 1]


def test_oversized_batch_into_empty_segment_does_not_rotate(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, 16)
    list(log.recover(0))
    oversized = encode_record(1, b"o" * 30)
    assert log.append(oversized) == 0
    assert log.statistics().rotations == 0
    assert log.append(GOOD) == len(oversized)
    log.close()
    assert wal.list_segments(tmp_path) == [0, len(oversized)]


def test_recover_from_position_skips_earlier_segments(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    starts = wal.list_segments(tmp_path)
    # Garbage in segment 0 proves it is never read when starting later.
    first = tmp_path / segment_name(0)
    first.write_bytes(b"\xff" * first.stat().st_size)
    from_position = starts[2]
    assert recover_all(tmp_path, from_position, 40) == [r for r in written if r.position >= from_position]
    assert first.read_bytes() == b"\xff" * first.stat().st_size
    # Starting mid-segment at a record boundary works too.
    inner = [r for r in written if starts[2] < r.position < starts[3]][0].position
    assert recover_all(tmp_path, inner, 40) == [r for r in written if r.position >= inner]


def test_recover_at_log_end_yields_nothing_and_appends(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 6)
    end = written[-1].end_position
    log = SegmentedLog.open(tmp_path, 40)
    assert list(log.recover(end)) == []
    assert log.append(GOOD) == end
    log.close()


def test_recover_rejects_positions_outside_the_log(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 6)
    log = SegmentedLog.open(tmp_path, 40)
    with pytest.raises(WalError):
        list(log.recover(written[-1].end_position + 1))
    with pytest.raises(ValueError):
        log.recover(-1)
    log.close()
    os.rename(tmp_path / segment_name(0), tmp_path / segment_name(5))
    with pytest.raises(WalError):
        recover_all(tmp_path, 0, 40)


def test_delete_before(tmp_path: Path) -> None:
    written = build_segmented_log(tmp_path, 40, 12)
    starts = wal.list_segments(tmp_path)
    log = SegmentedLog.open(tmp_path, 40)
    list(log.recover(0))
    assert log.delete_before(starts[2] - 1) == 1  # segment 1 still holds records before the cut
    assert wal.list_segments(tmp_path) == starts[1:]
    assert log.delete_before(starts[2]) == 1
    assert wal.list_segments(tmp_path) == starts[2:]
    assert log.delete_before(log.end_position) == len(starts) - 3
    assert wal.list_segments(tmp_path) == starts[-1:] == list(log.segment_starts)
    with pytest.raises(ValueError):
        log.delete_before(log.end_position + 1)
    log.close()
    assert recover_all(tmp_path, starts[-1], 40) == [r for r in written if r.position >= starts[-1]]


def test_statistics_is_a_frozen_snapshot(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, 40)
    before = log.statistics()
    assert before.end_position is None
    list(log.recover(0))
    for _ in range(5):
        log.append(encode_record(1, b"x" * 20))
    after = log.statistics()
    assert (after.segments, after.rotations, after.appends) == (5, 4, 5)
    assert after.syncs == 4  # each rotation syncs the segment it leaves
    with pytest.raises(AttributeError):
        after.segments = 0  # type: ignore[misc]
    log.close()
