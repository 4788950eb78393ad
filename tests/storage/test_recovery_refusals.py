"""Recovery decides before it changes anything: every refusal leaves the data
directory exactly as it found it (docs/storage.md, "Recovery from damage").

The refusal paths, each tested below against a hashed copy of the tree:

| refusal | where it is decided | modes that refuse |
|---|---|---|
| no checkpoint and WAL together hold the history | choosing a start | all |
| damage followed by valid records | choosing a start | tolerate_corrupted_tail, absolute_consistency |
| a torn tail | choosing a start | absolute_consistency |
| a stream file shorter than every usable checkpoint needs | choosing a start | all but fence_damaged_streams |
| a WAL that ends before its checkpoint while stream files show later writes | planning | point_in_time |
| a record whose position jumps (gap or overlap) with no damage before it | planning | all but fence_damaged_streams |
| a record the table cannot apply (unknown or closed stream, taken path) | planning | all but fence_damaged_streams |
| a record whose checksum is valid but whose payload cannot be decoded | planning | all |
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from datadirs import append_to_wal, build, created, record, settings_of, store_of, stream_file, tree
from trio_streams.protocol.state import Appended, Deleted, Event
from trio_streams.storage.recovery import RecoveryRefused, recover
from trio_streams.storage.wal import encode_record, list_segments, segment_name

MODES = ("tolerate_corrupted_tail", "absolute_consistency", "point_in_time", "fence_damaged_streams")


def _refused_unchanged(directory: Path, mode: str) -> str:
    """Recovers in mode, which must refuse; the tree must be exactly as before. Returns the refusal."""
    before = tree(directory)
    store = store_of(directory)
    try:
        with pytest.raises(RecoveryRefused) as refused:
            recover(directory, store, settings_of(directory, mode))
    finally:
        store.close_sync()
    assert tree(directory) == before
    return str(refused.value)


def _recovered(directory: Path, mode: str) -> dict[str, tuple[int, str | None]]:
    store = store_of(directory)
    recovered = recover(directory, store, settings_of(directory, mode))
    store.close_sync()
    recovered.wal.close()
    return {path: (s.tail, s.damaged) for path, s in recovered.table.by_path.items()}


# ---------------------------------------------------------------- the late refusal


def test_a_position_jump_after_a_torn_tail_write_refuses_before_anything_is_cut(tmp_path: Path) -> None:
    """The writer put b's next bytes into its file and c's into a new one, the WAL
    holds a's append at a wrong position, then a torn record: today's order cut b
    back to its checkpoint and rewrote c before it found a's jump."""
    build(tmp_path)
    append_to_wal(tmp_path, [
        record(created(3, "c", b"xy")),
        record(Appended(1, 9, b"!")),  # a ends at 8: a gap
        record(Appended(2, 4, b"45"))[:-1],  # torn: its data is in b's file, its record is not whole
    ])
    with open(stream_file(tmp_path, 2), "ab") as f:
        f.write(b"45")
    with open(stream_file(tmp_path, 3), "wb") as f:
        f.write(b"xyz")  # c's next write reached its file, never the WAL
    for mode in ("tolerate_corrupted_tail", "point_in_time"):
        refusal = _refused_unchanged(tmp_path, mode)
        assert "'a'" in refusal and "stream position 9" in refusal and "ends at 8 (a gap" in refusal
        assert f"{segment_name(list_segments(tmp_path / 'wal')[-1])} byte" in refusal
    # The evidence is intact, so the fence mode can still start from it.
    recovered = _recovered(tmp_path, "fence_damaged_streams")
    assert recovered["b"] == (4, None) and recovered["c"] == (2, None)
    tail, damaged = recovered["a"]
    assert tail == 8 and damaged is not None and "a gap" in damaged


# ---------------------------------------------------------------- every other refusal


def test_no_usable_start_leaves_the_tree_and_makes_no_wal_directory(tmp_path: Path) -> None:
    build(tmp_path)
    newest = max((tmp_path / "checkpoints").iterdir())
    newest.write_bytes(newest.read_bytes()[:-1])  # damaged, and the older one needs WAL that is gone
    for segment in (tmp_path / "wal").iterdir():
        segment.unlink()
    (tmp_path / "wal").rmdir()
    for mode in MODES:
        assert "no checkpoint and WAL together hold" in _refused_unchanged(tmp_path, mode)


def test_damage_followed_by_valid_records_is_refused_unchanged(tmp_path: Path) -> None:
    build(tmp_path)
    first = list_segments(tmp_path / "wal")[-1]
    append_to_wal(tmp_path, [record(Appended(1, 8, b"ij")), record(Appended(2, 4, b"45"))])
    segment = tmp_path / "wal" / segment_name(first)
    raw = bytearray(segment.read_bytes())
    raw[-len(record(Appended(2, 4, b"45"))) - 1] ^= 0x01  # the last byte of a's record
    segment.write_bytes(bytes(raw))
    for mode in ("tolerate_corrupted_tail", "absolute_consistency"):
        assert "valid records resume" in _refused_unchanged(tmp_path, mode)


def test_a_torn_tail_is_refused_unchanged_in_absolute_consistency(tmp_path: Path) -> None:
    build(tmp_path)
    append_to_wal(tmp_path, [record(Appended(1, 8, b"ij"))[:-1]])
    assert "torn tail" in _refused_unchanged(tmp_path, "absolute_consistency")


def test_a_short_stream_file_is_refused_unchanged(tmp_path: Path) -> None:
    build(tmp_path)
    dat = stream_file(tmp_path, 1)
    dat.write_bytes(dat.read_bytes()[:2])  # both checkpoints need more of a
    for mode in ("tolerate_corrupted_tail", "absolute_consistency", "point_in_time"):
        assert "its data file" in _refused_unchanged(tmp_path, mode)


def test_a_wal_ending_before_its_checkpoint_with_later_writes_is_refused_unchanged(tmp_path: Path) -> None:
    build(tmp_path)
    last = list_segments(tmp_path / "wal")[-1]
    (tmp_path / "wal" / segment_name(last)).write_bytes(b"")  # the log ends before the newest checkpoint
    with open(stream_file(tmp_path, 2), "ab") as f:
        f.write(b"45")  # and b's file shows a write after it: records were lost
    assert "log position" in _refused_unchanged(tmp_path, "point_in_time")


@pytest.mark.parametrize("events, why", [
    ([Appended(1, 7, b"!")], "an overlap"),
    ([Appended(9, 0, b"!")], "stream id 9, which does not exist"),
    ([Appended(1, 8, b"!", close=True), Appended(1, 9, b"?")], "closed"),
    ([Deleted(1), Appended(1, 8, b"?")], "stream id 1, which does not exist"),
    ([created(3, "b", b"x")], "'b' is taken"),
], ids=["overlap", "unknown stream", "closed", "deleted", "taken path"])
def test_a_record_the_table_cannot_apply_is_refused_unchanged(tmp_path: Path, events: list[Event], why: str) -> None:
    build(tmp_path)
    append_to_wal(tmp_path, [record(event) for event in events])
    for mode in ("tolerate_corrupted_tail", "absolute_consistency", "point_in_time"):
        assert why in _refused_unchanged(tmp_path, mode)


def test_an_undecodable_record_is_refused_unchanged_in_every_mode(tmp_path: Path) -> None:
    build(tmp_path)
    meta = orjson.dumps({"path": "no id"})
    append_to_wal(tmp_path, [encode_record(2, len(meta).to_bytes(4, "little") + meta), record(Appended(1, 8, b"ij"))])
    for mode in MODES:
        assert "cannot be decoded" in _refused_unchanged(tmp_path, mode)


def test_the_fence_mode_fences_what_the_other_modes_refuse(tmp_path: Path) -> None:
    build(tmp_path)
    append_to_wal(tmp_path, [record(Appended(1, 8, b"!", close=True)), record(Appended(1, 9, b"?")),
                              record(Appended(2, 4, b"45"))])
    recovered = _recovered(tmp_path, "fence_damaged_streams")
    assert recovered["b"] == (6, None)
    tail, damaged = recovered["a"]
    assert tail == 9 and damaged is not None and "closed" in damaged
    assert stream_file(tmp_path, 1).read_bytes() == b"abcdefgh!"
