"""Checksums of stream data at rest (storage/blocksums.py through Store).

Every byte read back from a stream file is verified: damage to the data,
its block checksums or its index entries makes the read a 500
DATA_CORRUPT (and is reported), never data.
"""

from __future__ import annotations

import random
from pathlib import Path

import crc32c
import pytest

from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import StreamState, StreamTable
from trio_streams.storage import blocksums
from trio_streams.storage.blocksums import BLOCK_BYTES, SUM
from trio_streams.storage.fileops import Fault, FaultyFileOps
from trio_streams.storage.store import Store

SID = 7


def make_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=100)


def fill(store: Store, sizes: list[int], rng: random.Random) -> tuple[StreamTable, StreamState, bytes]:
    table = StreamTable()
    state = StreamState(SID, "/s", "application/octet-stream", Expiry(None, None, None), 0.0)
    table.add(state)
    store.create_sync(SID)
    data = b""
    for size in sizes:
        chunk = rng.randbytes(size)
        store.append_sync(SID, len(data), chunk, len(data) + size)
        data += chunk
    state.tail = len(data)
    return table, state, data


def test_extend_matches_crc_of_each_block_whatever_the_split() -> None:
    rng = random.Random(1)
    data = rng.randbytes(5 * BLOCK_BYTES + 123)
    position, partial, full = 0, 0, []
    while position < len(data):
        step = rng.randint(1, BLOCK_BYTES + 7)
        piece = data[position : position + step]
        done, entry_crc, partial = blocksums.extend(position, partial, piece)
        full += done
        position += len(piece)
        last_block = blocksums.block_start(position - 1)
        assert entry_crc == crc32c.crc32c(data[last_block:position])
    assert full == [crc32c.crc32c(data[i : i + BLOCK_BYTES]) for i in range(0, 5 * BLOCK_BYTES, BLOCK_BYTES)]
    assert partial == crc32c.crc32c(data[5 * BLOCK_BYTES :])


async def test_every_range_reads_back_verified(tmp_path: Path) -> None:
    rng = random.Random(2)
    store = make_store(tmp_path)
    table, state, data = fill(store, [1, 100, BLOCK_BYTES, 3 * BLOCK_BYTES - 101, 5000, 7], rng)
    for _ in range(200):
        start = rng.randrange(len(data))
        end = rng.randint(start + 1, len(data))
        assert await store.read(table, state, start, end) == data[start:end]
    assert store.statistics()["data_corrupt_reads_total"] == 0


def flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))


async def refused(store: Store, table: StreamTable, state: StreamState, start: int, end: int) -> bool:
    try:
        await store.read(table, state, start, end)
    except ProtocolError as exc:
        assert (exc.status, exc.code) == (500, "DATA_CORRUPT")
        return True
    return False


@pytest.mark.parametrize("seed", range(6))
async def test_a_flipped_data_byte_refuses_every_read_of_it_and_only_reads_of_its_block(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = make_store(tmp_path)
    table, state, data = fill(store, [rng.randint(1, 2 * BLOCK_BYTES) for _ in range(6)], rng)
    at = rng.randrange(len(data))
    flip(store.path(SID), at)
    damaged_from = blocksums.block_start(at)
    for _ in range(60):
        start = rng.randrange(len(data))
        end = rng.randint(start + 1, len(data))
        if start <= at < end:
            assert await refused(store, table, state, start, end)
        elif not await refused(store, table, state, start, end):
            assert await store.read(table, state, start, end) == data[start:end]
        else:  # refused only for sharing the damaged block
            assert start < damaged_from + BLOCK_BYTES and damaged_from < end
    # Exact reads of the byte itself are refused, and it is counted once as a range.
    assert await refused(store, table, state, at, at + 1)
    stats = store.statistics()
    assert stats["data_corrupt_reads_total"] >= 1
    assert stats["data_corrupt_ranges_total"] >= 1


async def test_damaged_checksums_and_index_entries_are_refused_not_served(tmp_path: Path) -> None:
    rng = random.Random(3)
    store = make_store(tmp_path)
    table, state, data = fill(store, [BLOCK_BYTES + 10, 20, 30], rng)
    flip(store.path(SID, ".sum"), 1)  # block 0's checksum
    assert await refused(store, table, state, 0, 10)
    assert await store.read(table, state, BLOCK_BYTES, len(data)) == data[BLOCK_BYTES:]
    # The partial last block is checked against the index entry at or past the read's end.
    flip(store.path(SID, ".idx"), 2 * blocksums.INDEX_ENTRY.size + 3)
    assert await refused(store, table, state, len(data) - 5, len(data))
    # A checksum file cut short leaves full blocks without a checksum: refused.
    store.path(SID, ".sum").write_bytes(b"")
    assert await refused(store, table, state, 0, 10)


async def test_recovery_cut_keeps_exact_checksums_and_appends_continue(tmp_path: Path) -> None:
    rng = random.Random(4)
    store = make_store(tmp_path)
    table, state, data = fill(store, [BLOCK_BYTES // 2, 100], rng)
    checkpointed = len(data)
    # Written after the checkpoint, then cut away by recovery.
    store.append_sync(SID, len(data), rng.randbytes(BLOCK_BYTES), len(data) + BLOCK_BYTES)
    store.close_sync()
    store = make_store(tmp_path)
    store.truncate_sync(SID, checkpointed, checkpointed)
    assert store.path(SID, ".sum").stat().st_size == 0
    more = rng.randbytes(BLOCK_BYTES)
    store.append_sync(SID, checkpointed, more, checkpointed + len(more))
    data += more
    state.tail = len(data)
    assert await store.read(table, state, 0, len(data)) == data
    assert store.path(SID, ".sum").stat().st_size == SUM.size


async def test_a_lost_index_entry_poisons_the_partial_block_instead_of_blessing_it(tmp_path: Path) -> None:
    rng = random.Random(5)
    store = make_store(tmp_path)
    table, state, data = fill(store, [100, 200], rng)
    store.close_sync()
    store = make_store(tmp_path)
    index = store.path(SID, ".idx")
    index.write_bytes(index.read_bytes()[: blocksums.INDEX_ENTRY.size])  # the entry at 300 is gone
    flip(store.path(SID), 150)  # and a byte it covered is damaged
    store.append_sync(SID, len(data), b"x" * 10, len(data) + 10)
    state.tail = len(data) + 10
    assert await refused(store, table, state, 0, state.tail)
    assert store.statistics()["data_corrupt_ranges_total"] >= 1


@pytest.mark.parametrize("short", [1, 2, 15])
async def test_a_short_index_write_is_finished_so_later_entries_stay_aligned(tmp_path: Path, short: int) -> None:
    # write(2) may write fewer bytes than asked (a disk filling up, a signal);
    # a torn entry left mid-file would shift every later entry off its slot
    # and make acknowledged data unreadable (found by simulation seed 0).
    rng = random.Random(6)
    ops = FaultyFileOps([Fault("write", "*.idx", nth=2, short_bytes=short)])
    store = Store(tmp_path / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=100, ops=ops)
    table, state, data = fill(store, [10, 20, 30, 40], rng)
    assert ops.fired() == 1
    assert store.path(SID, ".idx").stat().st_size == 4 * blocksums.INDEX_ENTRY.size
    assert await store.read(table, state, 0, len(data)) == data
    assert await store.next_boundary(table, state, 15) == 30
    assert store.statistics()["data_corrupt_reads_total"] == 0
