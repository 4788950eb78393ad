"""The file-operations seam: faults fire at exactly the chosen call, and the
storage modules make their mutating calls through it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trio_streams.storage.blocksums import BLOCK_BYTES
from trio_streams.storage.fileops import REAL, Fault, FaultyFileOps, SyncFailed, is_disk_full
from trio_streams.storage.snapshot import write_snapshot
from trio_streams.storage.store import Store
from trio_streams.storage.wal import SegmentedLog, encode_record


def test_the_nth_matching_call_fails_and_no_other(tmp_path: Path) -> None:
    ops = FaultyFileOps([Fault("write", path="*/b", nth=2, errno=errno.EIO)])
    a = ops.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT, 0o644)
    b = ops.open(tmp_path / "b", os.O_WRONLY | os.O_CREAT, 0o644)
    for _ in range(3):
        ops.write(a, b"x")
    ops.write(b, b"1")
    with pytest.raises(OSError) as caught:
        ops.write(b, b"2")
    assert caught.value.errno == errno.EIO and not is_disk_full(caught.value)
    ops.write(b, b"3")  # times=1: only the second call fails
    ops.close(a)
    ops.close(b)
    assert (tmp_path / "a").read_bytes() == b"xxx" and (tmp_path / "b").read_bytes() == b"13"
    assert ops.fired() == 1


def test_a_short_write_writes_a_prefix_and_returns_its_length(tmp_path: Path) -> None:
    ops = FaultyFileOps([Fault("pwrite", short_bytes=3)])
    fd = ops.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    assert ops.pwrite(fd, b"abcdef", 0) == 3
    assert ops.pwrite(fd, b"def", 3) == 3
    ops.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abcdef"


def test_a_failed_sync_is_never_mistaken_for_a_full_disk(tmp_path: Path) -> None:
    ops = FaultyFileOps([Fault("fdatasync", errno=errno.ENOSPC)])
    fd = ops.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(SyncFailed) as caught:
        ops.fdatasync(fd)
    assert caught.value.errno == errno.ENOSPC and not is_disk_full(caught.value)
    ops.close(fd)


def test_disk_full_until_cleared(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    ops.disk_full()
    with pytest.raises(OSError) as caught:
        ops.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    assert is_disk_full(caught.value) and not (tmp_path / "f").exists()
    ops.clear()
    ops.close(ops.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644))


def test_the_storage_modules_call_through_the_seam(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    with SegmentedLog.open(tmp_path / "wal", 1 << 20, ops) as log:
        list(log.recover(0))
        log.append(encode_record(1, b"payload"))
        log.sync()
    store = Store(tmp_path / "streams", open_files_max=4, hot_tail_bytes_max=0, corrupt_ranges_logged_max=100, ops=ops)
    store.create_sync(1)
    store.append_sync(1, 0, b"data", 4)
    store.sync_dirty_sync()
    store.close_sync()
    write_snapshot(tmp_path / "checkpoints", 7, b"{}", ops)
    operations = {operation for operation, _ in ops.calls}
    assert {"open", "writev", "fdatasync", "pwrite", "write", "fsync", "replace", "close"} <= operations
    assert any(path.endswith(".wal") for operation, path in ops.calls if operation == "writev")


def test_production_calls_are_the_os_functions() -> None:
    assert REAL.pwrite is os.pwrite and REAL.writev is os.writev and REAL.replace is os.replace


def test_checksum_files_are_written_and_cut_through_the_seam(tmp_path: Path) -> None:
    """The .sum file (a full block's crc) and the index are written, and cut back
    by recovery, through ``ops``, so faults reach them too; a short data file is
    reported (False) and left alone."""
    ops = FaultyFileOps()
    store = Store(tmp_path / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=100, ops=ops)
    store.create_sync(1)
    block = b"x" * BLOCK_BYTES  # fills a block: its crc goes to .sum
    store.append_sync(1, 0, block, len(block))
    store.append_sync(1, len(block), b"tail", len(block) + 4)
    assert ("pwrite", str(store.path(1, ".sum"))) in ops.calls
    assert ("write", str(store.path(1, ".idx"))) in ops.calls
    assert store.truncate_sync(1, len(block), len(block))
    truncated = {path for operation, path in ops.calls if operation == "ftruncate"}
    assert {str(store.path(1, kind)) for kind in (".dat", ".idx", ".sum")} <= truncated
    ops.calls.clear()
    assert not store.truncate_sync(1, len(block) + 100, len(block) + 100)
    assert not any(operation == "ftruncate" for operation, _ in ops.calls)
    store.close_sync()
