"""WAL damage: a torn tail is told apart from damage followed by valid records."""

from __future__ import annotations

from pathlib import Path

from trio_streams.storage import wal
from trio_streams.storage.wal import HEADER_BYTES, Record, SegmentedLog, encode_record, segment_name

BIG = 1 << 30  # segment_bytes_max that never rotates


def build(directory: Path, segment_bytes_max: int, count: int) -> list[Record]:
    log = SegmentedLog.open(directory, segment_bytes_max)
    list(log.recover(0))
    written = []
    for i in range(count):
        payload = f"record {i:04d}".encode() * (1 + i % 3)
        written.append(Record(log.append(encode_record(1 + i % 3, payload)), 1 + i % 3, payload))
    log.sync()
    log.close()
    return written


def damage_at(directory: Path, position: int, count: int = 1, *, zero: bool = False) -> None:
    """Flips (or zeroes) count bytes at a log position, in whichever segment holds it."""
    start = max(s for s in wal.list_segments(directory) if s <= position)
    path = directory / segment_name(start)
    data = bytearray(path.read_bytes())
    for offset in range(position - start, position - start + count):
        data[offset] = 0 if zero else data[offset] ^ 0x10
    path.write_bytes(bytes(data))


def survey(directory: Path, segment_bytes_max: int = BIG, from_position: int = 0) -> list[wal.Damage]:
    with SegmentedLog.open(directory, segment_bytes_max) as log:
        return log.survey(from_position)[0]


def recover_skipping(directory: Path, segment_bytes_max: int = BIG) -> list[Record]:
    with SegmentedLog.open(directory, segment_bytes_max) as log:
        return list(log.recover(0, skip_damage=True))


def test_flipped_payload_bit_resumes_at_the_next_record(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 10)
    victim = written[4]
    damage_at(tmp_path, victim.position + HEADER_BYTES + 3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    [damage] = survey(tmp_path)
    assert (damage.position, damage.resumes_at, damage.torn_tail) == (victim.position, written[5].position, False)
    assert damage.what == "a record that fails its checksum"
    assert f"{segment_name(0)} byte {victim.position}" in damage.describe()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # survey only reads
    assert recover_skipping(tmp_path) == written[:4] + written[5:]


def test_flipped_length_and_zeroed_range_resync_byte_by_byte(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 12)
    damage_at(tmp_path, written[2].position + 1)  # the length field: the next header is lost
    damage_at(tmp_path, written[7].position + 5, 40, zero=True)  # spans into record 8
    damages = survey(tmp_path)
    assert [(d.position, d.resumes_at) for d in damages] == [
        (written[2].position, written[3].position),
        (written[7].position, next(r.position for r in written if r.position > written[7].position + 45)),
    ]
    kept = recover_skipping(tmp_path)
    assert kept == [r for r in written if r not in (written[2], written[7], written[8])]
    # The log continues after the last valid record and the damage stays as evidence.
    with SegmentedLog.open(tmp_path, BIG) as log:
        assert len(list(log.recover(0, skip_damage=True))) == len(kept)
        assert log.end_position == written[-1].end_position
        log.append(encode_record(1, b"more"))
    assert len(survey(tmp_path)) == 2


def test_torn_tail_is_truncated_and_not_reported_as_mid_log(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 5)
    path = tmp_path / segment_name(0)
    path.write_bytes(path.read_bytes()[:-3])
    [damage] = survey(tmp_path)
    assert damage.torn_tail and damage.resumes_at is None and damage.position == written[-1].position
    assert recover_skipping(tmp_path) == written[:-1]
    assert path.stat().st_size == written[-1].position
    assert survey(tmp_path) == []


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 5)
    with open(tmp_path / segment_name(0), "ab") as f:
        f.write(bytes(4096))
    [damage] = survey(tmp_path)
    assert damage.torn_tail and damage.position == written[-1].end_position
    assert "type 0" in damage.what


def test_damage_in_an_earlier_segment_is_never_torn(tmp_path: Path) -> None:
    written = build(tmp_path, 120, 30)
    starts = wal.list_segments(tmp_path)
    assert len(starts) > 3
    # The last record of segment 1 loses its end: later segments still hold records.
    victim = max(r for r in written if r.end_position == starts[2])
    path = tmp_path / segment_name(starts[1])
    path.write_bytes(path.read_bytes()[:-2])
    [damage] = survey(tmp_path, 120)
    assert not damage.torn_tail and damage.resumes_at == starts[2] and damage.position == victim.position
    assert recover_skipping(tmp_path, 120) == [r for r in written if r != victim]
    assert wal.list_segments(tmp_path) == starts


def test_a_segment_shorter_than_the_start_position_continues_there(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 6)
    end = written[-1].end_position
    path = tmp_path / segment_name(0)
    path.write_bytes(path.read_bytes()[: written[3].position])
    [damage] = survey(tmp_path, BIG, end)
    assert damage.before_start and damage.resumes_at is None and not damage.torn_tail
    with SegmentedLog.open(tmp_path, BIG) as log:
        assert list(log.recover(end, skip_damage=True)) == []
        assert log.end_position == end
        log.append(encode_record(1, b"next"))
    with SegmentedLog.open(tmp_path, BIG) as log:
        assert list(log.recover(end)) == [Record(end, 1, b"next")]


def test_unreadable_end_of_a_middle_segment_starts_a_fresh_segment(tmp_path: Path) -> None:
    written = build(tmp_path, 120, 20)
    starts = wal.list_segments(tmp_path)
    for start in starts[1:]:  # every later segment is garbage
        path = tmp_path / segment_name(start)
        path.write_bytes(b"\xff" * path.stat().st_size)
    [damage] = survey(tmp_path, 120)
    assert damage.resumes_at is None and not damage.torn_tail and damage.position == starts[1]
    with SegmentedLog.open(tmp_path, 120) as log:
        assert list(log.recover(0, skip_damage=True)) == [r for r in written if r.end_position <= starts[1]]
        assert log.end_position == written[-1].end_position  # past the garbage, never over it
    assert all((tmp_path / segment_name(s)).exists() for s in starts)


def test_resync_budget_gives_up_without_calling_it_torn(tmp_path: Path) -> None:
    written = build(tmp_path, BIG, 8)
    damage_at(tmp_path, written[2].position + HEADER_BYTES + 1)
    with SegmentedLog.open(tmp_path, BIG) as log:
        [damage] = log.survey(0, resync_checksum_bytes_max=0)[0]
    assert damage.resumes_at is None and not damage.torn_tail and "gave up" in damage.what
