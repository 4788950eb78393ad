"""Checksums of stream data at rest: fixed blocks plus a per-append prefix crc.

Owns: the layout of a stream's ``.sum`` file and of its ``.idx`` entries,
extending checksums as appends arrive, and checking bytes read back from a
``.dat`` file against them (docs/storage.md, "Checksums of stream data").

A stream file is cut into fixed blocks of ``BLOCK_BYTES`` (file offsets,
so a fork's blocks start at its base). Every full block has a CRC-32C in
the ``.sum`` file, written once, when the append that fills it is written.
The last, partial block has no entry of its own there: every index entry
carries the crc of its block from the block's start up to the entry's end,
so the crc of the partial block at any append boundary is on disk, written
once and never overwritten, and recovery's cut back to a checkpointed
length leaves exactly the checksums of the bytes it keeps.

Never: decides what is durable, or opens files (callers pass descriptors).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence
from typing import Final

import crc32c as _crc32c

# A format constant, not a setting: the files depend on it. Small enough that
# verifying a read costs at most one block beyond each end of the range.
BLOCK_BYTES: Final = 64 * 1024
SUM: Final = struct.Struct("<I")
# end position, crc32c of its block from the block start to the end, crc32c
# of the first 12 bytes (a damaged entry is told from a valid one).
INDEX_ENTRY: Final = struct.Struct("<QII")
_ENTRY_BODY: Final = struct.Struct("<QI")


class DataCorrupt(Exception):
    """Bytes of a stream file do not match their checksum (or it is missing)."""

    def __init__(self, stream_id: int, start: int, end: int, reason: str) -> None:
        super().__init__(f"stream {stream_id:x} bytes [{start}, {end}): {reason}")
        self.stream_id, self.start, self.end, self.reason = stream_id, start, end, reason


@dataclasses.dataclass(frozen=True, slots=True)
class IndexEntry:
    end: int  # stream position after an append
    block_crc: int  # crc32c of the end's block (file offsets) from its start to the end

    def pack(self) -> bytes:
        body = _ENTRY_BODY.pack(self.end, self.block_crc)
        return body + SUM.pack(_crc32c.crc32c(body))


def unpack_entry(raw: bytes | memoryview, offset: int = 0) -> IndexEntry | None:
    """The entry at ``offset``, or None when its own crc does not match."""
    end, block_crc, crc = INDEX_ENTRY.unpack_from(raw, offset)
    if _crc32c.crc32c(memoryview(raw)[offset : offset + _ENTRY_BODY.size]) != crc:
        return None
    return IndexEntry(end, block_crc)


def crc_of(data: bytes | memoryview) -> int:
    return int(_crc32c.crc32c(data))


def block_start(file_offset: int) -> int:
    return file_offset - file_offset % BLOCK_BYTES


def extend(file_position: int, partial_crc: int, data: bytes | memoryview) -> tuple[list[int], int, int]:
    """Appends ``data`` at ``file_position`` to checksums whose partial block had ``partial_crc``.

    Returns the crcs of the blocks it fills (the first is block
    ``file_position // BLOCK_BYTES``), the crc for its index entry (its last
    byte's block, from that block's start) and the new partial crc.
    """
    view = memoryview(data)
    full: list[int] = []
    crc, position, taken = partial_crc, file_position, 0
    while taken < len(view):
        step = min(len(view) - taken, BLOCK_BYTES - position % BLOCK_BYTES)
        crc = _crc32c.crc32c(view[taken : taken + step], value=crc)
        taken, position = taken + step, position + step
        if position % BLOCK_BYTES == 0:
            full.append(crc)
            crc = 0
    # An append that ends on a block boundary is covered by the block it filled.
    return full, full[-1] if position % BLOCK_BYTES == 0 else crc, crc


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``, fewer only at end of file."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def verify_blocks(stream_id: int, base: int, first_block: int, data: bytes, crcs: Sequence[int]) -> None:
    """Checks ``data`` (from block ``first_block``'s start) block by block against ``crcs``."""
    view = memoryview(data)
    for i, expected in enumerate(crcs):
        piece = view[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES]
        if _crc32c.crc32c(piece) != expected:
            start = base + (first_block + i) * BLOCK_BYTES
            raise DataCorrupt(stream_id, start, start + len(piece), "checksum mismatch")


def read_verified(fds: StreamFds, stream_id: int, base: int, start: int, end: int) -> bytes:
    """Bytes [start, end) (file offsets) of a stream file, every block of them verified.

    Reads whole blocks around the range: full blocks are checked against the
    ``.sum`` file; a last block that is not full is checked against the
    first index entry at or past ``end``, which covers it from its start.
    """
    first, last = start // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
    raw = pread_exact(fds.sums, (last - first + 1) * SUM.size, first * SUM.size)
    crcs = [c for (c,) in SUM.iter_unpack(raw[: len(raw) - len(raw) % SUM.size])]
    span_end = (first + len(crcs)) * BLOCK_BYTES
    if len(crcs) < last - first + 1:
        if first + len(crcs) != last:
            raise DataCorrupt(stream_id, base + span_end, base + end, "block checksums missing")
        entry = first_entry_at_or_past(fds.index, stream_id, base + end)
        if entry is None or block_start(entry.end - base - 1) != last * BLOCK_BYTES:
            raise DataCorrupt(stream_id, base + last * BLOCK_BYTES, base + end, "no index entry covers the range")
        crcs.append(entry.block_crc)
        span_end = entry.end - base
    span_start = first * BLOCK_BYTES
    data = pread_exact(fds.data, span_end - span_start, span_start)
    if len(data) < span_end - span_start:
        raise DataCorrupt(stream_id, base + span_start + len(data), base + span_end, "file is shorter than its data")
    verify_blocks(stream_id, base, first, data, crcs)
    if start == span_start and end == span_end:
        return data
    return data[start - span_start : end - span_start]


@dataclasses.dataclass(frozen=True, slots=True)
class StreamFds:
    data: int
    sums: int
    index: int


def first_entry_at_or_past(fd: int, stream_id: int, position: int) -> IndexEntry | None:
    """Binary search of an index file for the first entry whose end is ≥ ``position``."""
    count = os.fstat(fd).st_size // INDEX_ENTRY.size
    slot = first_slot_at_or_past(fd, stream_id, position, count)
    return None if slot == count else read_entry(fd, stream_id, slot)


def first_slot_at_or_past(fd: int, stream_id: int, position: int, count: int) -> int:
    """The number of the first of ``count`` entries whose end is ≥ ``position`` (``count``: none)."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi) // 2
        if read_entry(fd, stream_id, mid).end < position:
            lo = mid + 1
        else:
            hi = mid
    return lo


def last_entry(path: str | os.PathLike[str], stream_id: int) -> IndexEntry | None:
    """The last whole entry of an index file; None when it has none (or no file).
    Raises DataCorrupt when that entry is damaged; a torn entry after it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        count = os.fstat(fd).st_size // INDEX_ENTRY.size
        return read_entry(fd, stream_id, count - 1) if count else None
    finally:
        os.close(fd)


def read_entry(fd: int, stream_id: int, number: int) -> IndexEntry:
    raw = pread_exact(fd, INDEX_ENTRY.size, number * INDEX_ENTRY.size)
    entry = unpack_entry(raw) if len(raw) == INDEX_ENTRY.size else None
    if entry is None:
        raise DataCorrupt(stream_id, 0, 0, f"index entry {number} is damaged")
    return entry
