"""Recovery's cut back of stream files to their checkpointed length
(``Store.truncate_sync``): files already there are left untouched, which is
what keeps restart time independent of the data stored; anything past the
checkpoint is still cut, the data file last."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import StreamState, StreamTable
from trio_streams.storage.blocksums import BLOCK_BYTES, INDEX_ENTRY, SUM
from trio_streams.storage.checkpoint import encode_table
from trio_streams.storage.fileops import Fault, FaultyFileOps
from trio_streams.storage.recovery import recover
from trio_streams.storage.snapshot import write_snapshot
from trio_streams.storage.store import Store

SID = 7
DATA = bytes(range(256)) * (BLOCK_BYTES // 256) + b"partial block"  # one full block and a partial one


def _store(tmp_path: Path, ops: FaultyFileOps) -> Store:
    return Store(tmp_path, open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10, ops=ops)


def _written(tmp_path: Path, *appends: bytes) -> Store:
    store = _store(tmp_path, FaultyFileOps())
    store.create_sync(SID)
    end = 0
    for data in appends:
        store.append_sync(SID, end, data, end + len(data))
        end += len(data)
    store.close_sync()
    return store


def _sizes(store: Store) -> tuple[int, int, int]:
    return tuple(store.path(SID, kind).stat().st_size for kind in (".dat", ".idx", ".sum"))  # type: ignore[return-value]


def test_recovery_leaves_stream_files_at_their_checkpointed_length_untouched(tmp_path: Path) -> None:
    """Restart time must not grow with the data stored: a stream with nothing
    written after the checkpoint costs one stat, not a read of its index and
    three truncates."""
    _written(tmp_path / "streams", DATA[:100], DATA[100:])
    table = StreamTable()
    table.add(StreamState(SID, "s", "application/octet-stream", Expiry(), 1.5e9, tail=len(DATA)))
    write_snapshot(tmp_path / "checkpoints", 0, encode_table(table))
    ops = FaultyFileOps()
    recovered = recover(tmp_path, _store(tmp_path / "streams", ops), Settings(data_dir=str(tmp_path)), ops)
    recovered.wal.close()
    assert recovered.table.by_id[SID].tail == len(DATA)
    assert [call for call in ops.calls if "streams" in call[1]] == []
    assert _sizes(_store(tmp_path / "streams", ops)) == (len(DATA), 2 * INDEX_ENTRY.size, SUM.size)


def test_a_cut_back_cuts_the_data_file_last(tmp_path: Path) -> None:
    """So that a crash in the middle never leaves the data file at its
    checkpointed length over an index or checksums that are not."""
    _written(tmp_path, DATA, b"more")
    ops = FaultyFileOps()
    ops.add(Fault("ftruncate", "*.dat", errno=errno.EIO))
    with pytest.raises(OSError):
        _store(tmp_path, ops).truncate_sync(SID, 100, 100)
    assert _sizes(_store(tmp_path, FaultyFileOps())) == (len(DATA) + 4, 0, 0)


def test_an_index_entry_past_the_tail_is_cut_even_when_the_data_file_is_exact(tmp_path: Path) -> None:
    """A disk-full undo cuts the data file first; a crash before it cut the
    index leaves an entry past the durable tail over a data file of the right length."""
    store = _written(tmp_path, DATA[:100], DATA[100:])
    with open(store.path(SID), "r+b") as data_file:
        data_file.truncate(100)
    store = _store(tmp_path, FaultyFileOps())
    assert store.truncate_sync(SID, 100, 100)
    assert _sizes(store) == (100, INDEX_ENTRY.size, 0)


def test_bytes_and_checksums_past_the_checkpoint_are_cut(tmp_path: Path) -> None:
    store = _written(tmp_path, DATA[:100], DATA[100:])
    store = _store(tmp_path, FaultyFileOps())
    assert store.truncate_sync(SID, 100, 100)
    assert _sizes(store) == (100, INDEX_ENTRY.size, 0)


def test_a_data_file_shorter_than_the_checkpoint_is_refused_untouched(tmp_path: Path) -> None:
    store = _written(tmp_path, DATA[:100])
    store = _store(tmp_path, FaultyFileOps())
    assert not store.truncate_sync(SID, 200, 200)
    assert _sizes(store) == (100, INDEX_ENTRY.size, 0)


def test_a_file_evicted_from_the_descriptor_cache_is_synced_by_the_next_checkpoint_not_before(tmp_path: Path) -> None:
    """Evictions must not fsync (a batch or a replay touching many streams
    would pay one fsync per file), yet the checkpoint must sync every file
    written since the last one, open or not."""
    ops = FaultyFileOps()
    store = Store(tmp_path, open_files_max=1, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10, ops=ops)
    for stream_id in (1, 2):
        store.create_sync(stream_id)
        store.append_sync(stream_id, 0, b"data", 4)
    assert [call for call in ops.calls if call[0] == "fsync"] == []
    assert store.sync_dirty_sync() == 6
    synced = {Path(path).name for operation, path in ops.calls if operation == "fsync"}
    assert synced == {store.path(i, kind).name for i in (1, 2) for kind in (".dat", ".idx", ".sum")}
