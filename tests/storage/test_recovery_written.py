"""Recovery leaves alone the stream files that already hold what it would
rewrite (``store.WrittenChecks``): after a process crash the page cache
keeps everything written since the checkpoint, and cutting it back only to
write it again made a restart cost seconds per 100 MiB of WAL. The proof
is exact (data bytes, index entries, block checksums, file lengths), so any
difference at all falls back to the cut back and rewrite."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Event, StreamState, StreamTable
from trio_streams.storage.blocksums import BLOCK_BYTES, INDEX_ENTRY, SUM
from trio_streams.storage.checkpoint import encode_table
from trio_streams.storage.events import encode_event
from trio_streams.storage.fileops import FaultyFileOps
from trio_streams.storage.recovery import RecoveryRefused, recover
from trio_streams.storage.snapshot import write_snapshot
from trio_streams.storage.store import Store
from trio_streams.storage.wal import SegmentedLog, encode_record

SID = 7
NEW = 9  # created after the checkpoint
CHECKPOINTED = bytes(range(256)) * 3 + b"x"  # ends inside the first block
# Replayed appends: the first fills that block and one more, the second ends inside the next.
REPLAYED = [bytes(range(6, 256)) * (BLOCK_BYTES // 250 + 300), b"tail" * 300]
KINDS = (".dat", ".idx", ".sum")


def _store(directory: Path, ops: FaultyFileOps) -> Store:
    return Store(directory, open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10, ops=ops)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _write_streams(directory: Path, new_data: bytes) -> None:
    """The stream files as the crashed server left them: everything written."""
    store = _store(directory, FaultyFileOps())
    store.create_sync(SID)
    end = 0
    for data in [CHECKPOINTED, *REPLAYED]:
        store.append_sync(SID, end, data, end + len(data))
        end += len(data)
    store.create_sync(NEW)
    store.append_sync(NEW, 0, new_data, len(new_data))
    store.close_sync()


def _events() -> list[Event]:
    events: list[Event] = [Created(NEW, "new", "text/plain", Expiry(), 1.5e9, False, b"created with data")]
    position = len(CHECKPOINTED)
    for data in REPLAYED:
        events.append(Appended(SID, position, data))
        position += len(data)
    return events


def _crashed(root: Path) -> None:
    """A checkpoint holding SID's first append, a WAL holding the rest, files holding everything."""
    table = StreamTable()
    table.add(StreamState(SID, "s", "application/octet-stream", Expiry(), 1.5e9, tail=len(CHECKPOINTED)))
    table.next_stream_id = NEW
    write_snapshot(root / "checkpoints", 0, encode_table(table))
    with SegmentedLog.open(root / "wal", 1 << 26) as wal:
        for _ in wal.recover(0):
            pass
        wal.append(b"".join(encode_record(*encode_event(event)) for event in _events()))
        wal.sync()
    _write_streams(root / "streams", b"created with data")


def _recover(root: Path) -> tuple[FaultyFileOps, Store]:
    ops = FaultyFileOps()
    store = _store(root / "streams", ops)
    recovered = recover(root, store, Settings(data_dir=str(root)), ops)
    recovered.wal.close()
    assert recovered.table.by_id[SID].tail == len(CHECKPOINTED) + sum(map(len, REPLAYED))
    return ops, store


def _stream_calls(ops: FaultyFileOps) -> list[tuple[str, str]]:
    return [call for call in ops.calls if "streams" in call[1]]


@pytest.fixture
def expected(tmp_path: Path) -> dict[str, bytes]:
    _write_streams(tmp_path / "reference", b"created with data")
    return _files(tmp_path / "reference")


def test_files_that_hold_the_replayed_records_are_not_cut_or_rewritten(tmp_path: Path, expected: dict[str, bytes]) -> None:
    root = tmp_path / "data"
    _crashed(root)
    ops, store = _recover(root)
    assert _stream_calls(ops) == []
    assert _files(root / "streams") == expected


def test_files_left_alone_are_synced_at_the_next_checkpoint(tmp_path: Path) -> None:
    """The crashed process may never have synced them: the checkpoint that
    lets the WAL go must make them durable first."""
    root = tmp_path / "data"
    _crashed(root)
    ops, store = _recover(root)
    store.sync_dirty_sync()
    synced = {Path(path).name for operation, path in _stream_calls(ops) if operation == "fsync"}
    assert synced == {f"{stream_id:016x}{kind}" for stream_id in (SID, NEW) for kind in KINDS}


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _flip_replayed_data(streams: Path) -> None:
    _flip(streams / f"{SID:016x}.dat", len(CHECKPOINTED) + 5)


def _flip_last_data_byte(streams: Path) -> None:
    _flip(streams / f"{SID:016x}.dat", len(CHECKPOINTED) + sum(map(len, REPLAYED)) - 1)


def _drop_last_index_entry(streams: Path) -> None:
    path = streams / f"{SID:016x}.idx"
    path.write_bytes(path.read_bytes()[: -INDEX_ENTRY.size])


def _add_unlogged_data(streams: Path) -> None:
    """An append whose data reached the file but whose WAL record never did."""
    with open(streams / f"{SID:016x}.dat", "ab") as data_file:
        data_file.write(b"never logged")


def _flip_block_checksum(streams: Path) -> None:
    _flip(streams / f"{SID:016x}.sum", SUM.size - 1)


def _cut_checksums(streams: Path) -> None:
    path = streams / f"{SID:016x}.sum"
    path.write_bytes(path.read_bytes()[: -SUM.size])


def _flip_created_data(streams: Path) -> None:
    _flip(streams / f"{NEW:016x}.dat", 0)


@pytest.mark.parametrize("damage", [_flip_replayed_data, _flip_last_data_byte, _drop_last_index_entry, _add_unlogged_data,
                                    _flip_block_checksum, _cut_checksums, _flip_created_data])
def test_files_that_differ_in_any_way_are_cut_back_and_rewritten(
        tmp_path: Path, expected: dict[str, bytes], damage: Callable[[Path], None]) -> None:
    root = tmp_path / "data"
    _crashed(root)
    damage(root / "streams")
    ops, _ = _recover(root)
    assert _stream_calls(ops) != []
    assert _files(root / "streams") == expected


def test_a_stream_whose_data_file_ends_at_the_checkpoint_is_rewritten(tmp_path: Path, expected: dict[str, bytes]) -> None:
    """The data never reached the file (the writer extends it first, so nothing else did either)."""
    root = tmp_path / "data"
    _crashed(root)
    store = _store(root / "streams", FaultyFileOps())
    assert store.truncate_sync(SID, len(CHECKPOINTED), len(CHECKPOINTED))
    store.close_sync()
    _recover(root)
    assert _files(root / "streams") == expected


def test_data_of_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    """The writer puts an append's data in its stream file before its WAL record:
    a crash in between leaves data that no durable record covers."""
    root = tmp_path / "data"
    _crashed(root)
    (segment,) = (root / "wal").iterdir()
    with open(segment, "r+b") as wal_file:
        wal_file.truncate(segment.stat().st_size - 3)  # the last record is torn
    ops = FaultyFileOps()
    recovered = recover(root, _store(root / "streams", ops), Settings(data_dir=str(root)), ops)
    recovered.wal.close()
    assert recovered.table.by_id[SID].tail == len(CHECKPOINTED) + len(REPLAYED[0])
    reference = _store(tmp_path / "reference", FaultyFileOps())
    reference.create_sync(SID)
    reference.append_sync(SID, 0, CHECKPOINTED, len(CHECKPOINTED))
    reference.append_sync(SID, len(CHECKPOINTED), REPLAYED[0], len(CHECKPOINTED) + len(REPLAYED[0]))
    reference.close_sync()
    stream_files = {name: data for name, data in _files(root / "streams").items() if name.startswith(f"{SID:016x}")}
    assert stream_files == _files(tmp_path / "reference")


def test_a_refused_start_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Replay reads the stream files while deciding; a refusal during replay must not leak them."""
    root = tmp_path / "data"
    _crashed(root)
    with SegmentedLog.open(root / "wal", 1 << 26) as wal:  # an append that does not continue its stream
        for _ in wal.recover(0):
            pass
        wal.append(encode_record(*encode_event(Appended(SID, 1, b"overlap"))))
        wal.sync()
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RecoveryRefused):
        recover(root, _store(root / "streams", FaultyFileOps()), Settings(data_dir=str(root)))
    assert set(os.listdir("/proc/self/fd")) == before
