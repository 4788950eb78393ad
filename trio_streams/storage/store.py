"""Per-stream data files and their in-memory hot tails.

Owns: where a stream's bytes live once their WAL record is durable — one
file per stream named by its stream id (never by its path, so no client
input ever reaches the filesystem), plus a small in-memory copy of each
active stream's newest bytes so live readers rarely touch the disk.

Threads: the ``*_sync`` methods run in the log writer's worker thread (one
at a time); ``read`` opens its own descriptor in a reader thread, so the
writer's descriptor cache can close files at any moment. Hot tails are
touched only from the Trio thread.

Never: decides what is durable — the WAL is the source of truth; these
files are a cache of it, truncated and rewritten from it on recovery.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from ..protocol.errors import data_corrupt
from ..protocol.jsonmode import TERMINATOR
from ..protocol.retention import trimmed_error
from ..protocol.state import Appended, Created, StreamState, StreamTable, event_end, event_start
from . import blocksums
from .blocksums import BLOCK_BYTES, INDEX_ENTRY, SUM, DataCorrupt, IndexEntry, StreamFds
from .fileops import REAL, FileOps
from .wal import pwrite_all

_DATA = ".dat"
_INDEX = ".idx"
_SUMS = ".sum"
KINDS = (_DATA, _INDEX, _SUMS)
log = logging.getLogger("trio_streams.store")
T = TypeVar("T")


def _file_name(stream_id: int, kind: str) -> str:
    return f"{stream_id:016x}{kind}"


class HotTail:
    __slots__ = ("base", "buf")

    def __init__(self, base: int, data: bytes) -> None:
        self.base = base
        self.buf = bytearray(data)

    @property
    def end(self) -> int:
        return self.base + len(self.buf)


class Store:
    def __init__(self, directory: Path, *, open_files_max: int, hot_tail_bytes_max: int,
                 corrupt_ranges_logged_max: int, ops: FileOps = REAL) -> None:
        self.directory = directory
        self._directory_text = os.fspath(directory)
        self.ops = ops
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: collections.OrderedDict[tuple[int, str], int] = collections.OrderedDict()
        self._dirty: set[tuple[int, str]] = set()
        self._open_files_max = max(1, open_files_max)
        self._hot_tail_bytes_max = hot_tail_bytes_max
        self._hot: dict[int, HotTail] = {}
        # stream id → (file length, crc of its partial last block), for streams with an open data file.
        self._partial: dict[int, tuple[int, int]] = {}
        # Damage is logged once per range (a client retrying a damaged read must not flood
        # the log), and counted every time; the set is bounded, then starts over.
        self._reported: set[tuple[int, int, int]] = set()
        self._reported_max = corrupt_ranges_logged_max
        self._counts = {"data_corrupt_reads_total": 0, "data_corrupt_ranges_total": 0}

    @property
    def open_files_max(self) -> int:
        return self._open_files_max

    def path(self, stream_id: int, kind: str = _DATA) -> Path:
        return self.directory / _file_name(stream_id, kind)

    def file(self, stream_id: int, kind: str = _DATA) -> str:
        """``path`` as a plain string: recovery stats every stream's data file,
        and building a ``Path`` costs more than the ``stat`` itself."""
        return f"{self._directory_text}{os.sep}{_file_name(stream_id, kind)}"

    # -- writer thread -------------------------------------------------
    #
    # Each stream has a data file (its own bytes, from its base position on)
    # an index file of end positions, one per append: the data boundaries
    # that Stream-Fork-Sub-Offset may not cross, and a checksum file of its
    # full blocks (blocksums.py).

    def _fd(self, stream_id: int, kind: str, *, create: bool = False) -> int:
        key = (stream_id, kind)
        fd = self._fds.pop(key, None)
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if kind == _INDEX else 0)
            fd = self.ops.open(self.path(stream_id, kind), flags | (os.O_TRUNC if create else 0), 0o644)
        elif create:
            self.ops.ftruncate(fd, 0)
        self._fds[key] = fd
        while len(self._fds) > self._open_files_max:
            old_key, old_fd = self._fds.popitem(last=False)
            # Closed unsynced: it stays dirty, and the next checkpoint reopens it to
            # sync it. An fsync here would cost every batch that touches more
            # streams than there are cached descriptors (and recovery's replay) one
            # fsync per eviction.
            self.ops.close(old_fd)
            if old_key[1] == _DATA:
                self._partial.pop(old_key[0], None)
        return fd

    def create_sync(self, stream_id: int) -> None:
        for kind in KINDS:
            self._fd(stream_id, kind, create=True)
            self._dirty.add((stream_id, kind))
        self._partial[stream_id] = (0, 0)

    def write_event_sync(self, event: Created | Appended, base: int) -> None:
        """Writes an event's data at its position in a stream whose file starts at
        ``base``; a Created starts the stream's files afresh (replay may redo it)."""
        if isinstance(event, Created):
            self.create_sync(event.stream_id)
        self.append_sync(event.stream_id, event_start(event) - base, event.data, event_end(event))

    def append_sync(self, stream_id: int, file_position: int, data: bytes, end_position: int) -> None:
        """Writes one append's bytes at ``file_position``, their checksums and their end as a boundary.

        Data first, then block checksums, then the index entry: a reader (or
        ``verify``) that sees an entry finds the bytes it covers.
        """
        if not data:
            return
        partial = self._partial_crc_sync(stream_id, file_position, end_position - len(data))
        full, entry_crc, partial = blocksums.extend(file_position, partial, data)
        pwrite_all(self._fd(stream_id, _DATA), data, file_position, self.ops)
        if full:
            sums = b"".join(SUM.pack(c) for c in full)
            pwrite_all(self._fd(stream_id, _SUMS), sums, file_position // BLOCK_BYTES * SUM.size, self.ops)
        self._write_all(self._fd(stream_id, _INDEX), IndexEntry(end_position, entry_crc).pack())
        self._partial[stream_id] = (file_position + len(data), partial)
        for kind in KINDS:
            self._dirty.add((stream_id, kind))

    def _write_all(self, fd: int, data: bytes) -> None:
        """Appends all of ``data`` (the index is O_APPEND): a torn entry left in the
        middle would shift every later entry off its 16-byte slot."""
        written = self.ops.write(fd, data)
        while written < len(data):
            written += self.ops.write(fd, data[written:])

    def _partial_crc_sync(self, stream_id: int, file_position: int, start_position: int) -> int:
        """The crc of the partial block that ends at ``file_position``: known, or from the last index entry."""
        known = self._partial.get(stream_id)
        if known is not None and known[0] == file_position:
            return known[1]
        if file_position % BLOCK_BYTES == 0:
            return 0
        last = self._last_entry_sync(stream_id)
        if last is not None and last.end == start_position:
            return last.block_crc
        # The checksum of the bytes before this append is lost: the block must
        # never verify, or damage in it would be blessed by the new crc.
        start = start_position - file_position % BLOCK_BYTES
        self.report(DataCorrupt(stream_id, start, start_position, "index entry of the partial block is missing or damaged"),
                    read=False)
        return ~self._file_crc_sync(stream_id, blocksums.block_start(file_position), file_position) & 0xFFFFFFFF

    def _last_entry_sync(self, stream_id: int) -> IndexEntry | None:
        try:
            return blocksums.last_entry(self.path(stream_id, _INDEX), stream_id)
        except DataCorrupt:
            return None

    def _file_crc_sync(self, stream_id: int, start: int, end: int) -> int:
        fd = os.open(self.path(stream_id), os.O_RDONLY)
        try:
            return int(blocksums.crc_of(blocksums.pread_exact(fd, end - start, start)))
        finally:
            os.close(fd)

    def remove_sync(self, stream_id: int) -> None:
        self._partial.pop(stream_id, None)
        for kind in KINDS:
            fd = self._fds.pop((stream_id, kind), None)
            if fd is not None:
                self.ops.close(fd)
            self._dirty.discard((stream_id, kind))
            try:
                self.ops.unlink(self.path(stream_id, kind))
            except FileNotFoundError:
                pass

    def punch_sync(self, stream_id: int, base: int, head: int) -> int:
        """Frees the disk blocks of the stream's data below ``head`` (retention trimmed
        it): whole checksum blocks only, so every block a read may still verify keeps
        its bytes. Returns the bytes of disk space freed. Positions stay file offsets.

        Holes read as zeros; nothing reads below the head (410), and ``verify``
        skips these blocks."""
        end = blocksums.block_start(head - base) if head > base else 0
        if end <= 0:
            return 0
        fd = self._fd(stream_id, _DATA)
        before = os.fstat(fd).st_blocks
        self.ops.punch_hole(fd, 0, end)
        return max(0, before - os.fstat(fd).st_blocks) * 512

    def adopt_sync(self, stream_id: int) -> None:
        """Takes over files recovery found already written (``WrittenChecks``): the
        process that wrote them may have died before syncing them, so the next
        checkpoint syncs them, as if this process had written them."""
        for kind in KINDS:
            self._dirty.add((stream_id, kind))

    def truncate_sync(self, stream_id: int, file_length: int, tail: int) -> bool:
        """Cuts a stream's files back to a checkpointed state (recovery); False,
        touching nothing, when the data file is shorter than that state.

        The data file is cut last: recovery leaves alone every stream whose
        data file already has its checkpointed length (docs/storage.md,
        "Recovery"), which holds only if no cut can leave the data file cut
        and the index or checksums not. (Writes extend the data file first.)
        """
        self._partial.pop(stream_id, None)
        if os.fstat(self._fd(stream_id, _DATA)).st_size < file_length:
            return False
        self.ops.ftruncate(self._fd(stream_id, _INDEX),
                           _kept_entries(self._entries_sync(stream_id), tail) * INDEX_ENTRY.size)
        sums_fd = self._fd(stream_id, _SUMS)
        self.ops.ftruncate(sums_fd, _kept_sums_bytes(os.fstat(sums_fd).st_size, file_length))
        self.ops.ftruncate(self._fd(stream_id, _DATA), file_length)
        return True

    def sync_dirty_sync(self) -> int:
        """Fsyncs every file written since the last call, open or not.

        A closed file is reopened to sync it. Linux reports a writeback error
        to the first fsync after it on any descriptor of the file, even one
        opened after the error (since 4.16; PostgreSQL's checkpointer relies on
        the same), and nothing else here fsyncs these files, so no error is lost.
        """
        for key in list(self._dirty):
            fd = self._fds.get(key)
            if fd is not None:
                self.ops.fsync(fd)
            else:
                self._sync_closed(*key)
        synced = len(self._dirty)
        self._dirty.clear()
        return synced

    def _sync_closed(self, stream_id: int, kind: str) -> None:
        try:
            fd = self.ops.open(self.path(stream_id, kind), os.O_RDONLY)
        except FileNotFoundError:
            return  # removed by recovery's orphan sweep or a delete: nothing to keep
        try:
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)

    def remove_orphans_sync(self, live_ids: set[int]) -> int:
        """Removes the files of streams not in ``live_ids``. Start-up runs this over
        three files per stream, so it works on names (no stat, no per-name parsing
        of the live ones)."""
        live = {_file_name(stream_id, "") for stream_id in live_ids}
        named = {name[:16] for name in os.listdir(self.directory) if name[16:] in KINDS}
        orphans = set()
        for name in named - live:
            try:
                orphans.add(int(name, 16))
            except ValueError:
                continue
        for stream_id in orphans:
            self.remove_sync(stream_id)
        return len(orphans)

    def close_sync(self, *, sync: bool = True) -> None:
        """``sync=False`` after a failed fsync: syncing again could report success
        over pages the kernel already dropped."""
        if sync:
            self.sync_dirty_sync()
        for fd in self._fds.values():
            self.ops.close(fd)
        self._fds.clear()

    def _entries_sync(self, stream_id: int) -> list[IndexEntry | None]:
        """Every index entry; None for a damaged one."""
        try:
            raw = self.path(stream_id, _INDEX).read_bytes()
        except FileNotFoundError:
            return []
        usable = len(raw) - len(raw) % INDEX_ENTRY.size  # a torn entry is simply not there
        return [blocksums.unpack_entry(raw, at) for at in range(0, usable, INDEX_ENTRY.size)]

    # -- damage ------------------------------------------------------------

    def report(self, damage: DataCorrupt, path: str | None = None, *, read: bool = True) -> None:
        """Logs a damaged range at ERROR (once per range) and counts it (any thread).

        ``read``: a read was refused over it (else the writer found it).
        """
        self._counts["data_corrupt_reads_total"] += read
        key = (damage.stream_id, damage.start, damage.end)
        if key in self._reported:
            return
        if len(self._reported) >= self._reported_max:
            self._reported.clear()
        self._reported.add(key)
        self._counts["data_corrupt_ranges_total"] += 1
        log.error("stream data damaged: stream %r (id %x), bytes [%d, %d): %s; not served",
                  path, damage.stream_id, damage.start, damage.end, damage.reason)

    def statistics(self) -> dict[str, int]:
        return dict(self._counts)

    async def _checked(self, table: StreamTable, fn: Callable[..., T], *args: object) -> T:
        """Runs a file read in a worker thread; damage becomes a 500 DATA_CORRUPT, reported."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except DataCorrupt as damage:
            owner = table.by_id.get(damage.stream_id)
            if owner is not None and damage.start < owner.head:
                # Trimmed (its hole punched) while we read: gone, not damaged.
                raise trimmed_error(owner.head) from None
            self.report(damage, owner.path if owner is not None else None)
            raise data_corrupt() from None

    # -- trio thread ---------------------------------------------------

    def remember(self, stream_id: int, position: int, data: bytes) -> None:
        """Keeps the newest bytes of a stream in memory (called after they are durable)."""
        if self._hot_tail_bytes_max == 0 or not data:
            return
        hot = self._hot.get(stream_id)
        if hot is None or hot.end != position:
            hot = self._hot[stream_id] = HotTail(position, data[-self._hot_tail_bytes_max :])
            hot.base = position + len(data) - len(hot.buf)
            return
        hot.buf += data
        excess = len(hot.buf) - self._hot_tail_bytes_max
        if excess > self._hot_tail_bytes_max // 2:  # trim in steps, not on every append
            del hot.buf[:excess]
            hot.base += excess

    def forget(self, stream_id: int) -> None:
        self._hot.pop(stream_id, None)

    async def read(self, table: StreamTable, state: StreamState, start: int, end: int) -> bytes:
        """Bytes [start, end) of a stream, stitched across its fork chain.

        The caller guarantees ``end`` ≤ the stream's durable tail. Positions
        below a fork's base come from its source (recursively); sources are
        kept, soft-deleted if need be, while any fork references them.
        """
        pieces = [await self._read_own(table, *segment) for segment in _segments(table, state, start, end)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_own(self, table: StreamTable, stream_id: int, base: int, start: int, end: int) -> bytes:
        hot = self._hot.get(stream_id)
        if hot is not None and hot.base <= start and end <= hot.end:
            return bytes(hot.buf[start - hot.base : end - hot.base])
        return await self._checked(table, self._pread, stream_id, base, start - base, end - base)

    def _pread(self, stream_id: int, base: int, start: int, end: int) -> bytes:
        fds: list[int] = []
        try:
            for kind in KINDS:
                fds.append(os.open(self.file(stream_id, kind), os.O_RDONLY))
            return blocksums.read_verified(StreamFds(data=fds[0], index=fds[1], sums=fds[2]), stream_id, base, start, end)
        except FileNotFoundError:
            if not self.path(stream_id).exists():
                raise  # deleted while we read (remove_sync unlinks the data file first)
            raise DataCorrupt(stream_id, base + start, base + end, "checksum or index file is missing") from None
        finally:
            for fd in fds:
                os.close(fd)

    async def read_messages(self, table: StreamTable, state: StreamState, start: int, tail: int, bytes_max: int) -> bytes:
        """A JSON stream's whole messages from ``start``: at most ``bytes_max``, at least one."""
        end = min(tail, start + bytes_max)
        data = await self.read(table, state, start, end)
        if end == tail or not data:
            return data
        cut = data.rfind(TERMINATOR)
        if cut >= 0:
            return data[: cut + 1]
        # One message larger than the chunk limit: extend to its terminator.
        while end < tail:
            more = await self.read(table, state, end, min(tail, end + bytes_max))
            end += len(more)
            cut = more.find(TERMINATOR)
            if cut >= 0:
                return data + more[: cut + 1]
            data += more
        return data

    async def next_boundary(self, table: StreamTable, state: StreamState, position: int) -> int:
        """The end of the append that contains ``position`` (the tail if there is none)."""
        if position < state.base:
            assert state.fork is not None
            source = table.by_id[state.fork.source_id]
            return min(await self.next_boundary(table, source, position), state.base)
        if position >= state.tail:
            return state.tail
        found = await self._checked(table, self._next_entry_sync, state.stream_id, position)
        return state.tail if found is None else min(found, state.tail)

    def _next_entry_sync(self, stream_id: int, position: int) -> int | None:
        """The first boundary above ``position`` (binary search of the index file)."""
        fd = os.open(self.path(stream_id, _INDEX), os.O_RDONLY)
        try:
            entry = blocksums.first_entry_at_or_past(fd, stream_id, position + 1)
            return None if entry is None else entry.end
        finally:
            os.close(fd)


@dataclasses.dataclass(slots=True)
class _Written:
    """What one stream's files must hold for recovery to leave them alone."""

    file_start: int  # the checkpointed length: replayed data starts here
    kept_entries: int  # index entries the cut back to the checkpoint keeps
    file_end: int
    partial_crc: int
    sums: bytearray  # from block file_start // BLOCK_BYTES on
    entries: bytearray  # after the kept ones
    holds: bool = True


class WrittenChecks:
    """Which streams' files already hold the data recovery would rewrite, exactly
    as the cut back to the checkpoint and ``append_sync`` would leave them.

    After a process crash the page cache still holds everything the server
    wrote, so rewriting it only costs time: cutting files whose blocks are
    already allocated frees them (journal work, discards), then writing
    allocates them again. The proof compares bytes, not just lengths: each
    replayed append's data is read back from the data file and compared,
    and the index entries and block checksums it would write are computed
    as ``append_sync`` computes them and compared with the files, whose
    lengths must be exactly what writing leaves. Reads only (recovery runs
    it while deciding). docs/storage.md, "Recovery".
    """

    def __init__(self, store: Store, open_files_max: int) -> None:
        self._store = store
        self._streams: dict[int, _Written | None] = {}
        # Read descriptors of data files, least recently used closed first.
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._open_files_max = max(1, open_files_max)

    def start_created(self, stream_id: int) -> None:
        """Begins a stream replay creates: writing makes its files afresh, so they must hold nothing else."""
        self._streams[stream_id] = _Written(0, 0, 0, 0, bytearray(), bytearray())

    def start(self, stream_id: int, file_start: int, tail: int) -> None:
        """Begins a checkpointed stream whose replayed data starts at ``file_start`` (position ``tail``)."""
        try:
            self._streams[stream_id] = self._cut_back(stream_id, file_start, tail)
        except (FileNotFoundError, DataCorrupt):
            self._streams[stream_id] = None

    def _cut_back(self, stream_id: int, file_start: int, tail: int) -> _Written | None:
        """The state the cut back leaves, or None when the partial block's crc would not
        come from the kept index entry (``Store._partial_crc_sync``'s other paths)."""
        fd = os.open(self._store.file(stream_id, _INDEX), os.O_RDONLY)
        try:
            count = os.fstat(fd).st_size // INDEX_ENTRY.size
            kept = blocksums.first_slot_at_or_past(fd, stream_id, tail + 1, count)
            last = blocksums.read_entry(fd, stream_id, kept - 1) if kept else None
        finally:
            os.close(fd)
        if file_start % BLOCK_BYTES == 0:
            return _Written(file_start, kept, file_start, 0, bytearray(), bytearray())
        if last is None or last.end != tail:
            return None
        return _Written(file_start, kept, file_start, last.block_crc, bytearray(), bytearray())

    def started(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def add(self, stream_id: int, file_position: int, data: bytes, end_position: int) -> None:
        """One replayed append, in log order: its bytes must be in the data file already."""
        written = self._streams[stream_id]
        if written is None or not written.holds or not data:
            return
        if file_position != written.file_end or not self._data_matches(stream_id, file_position, data):
            written.holds = False
            return
        full, entry_crc, written.partial_crc = blocksums.extend(file_position, written.partial_crc, data)
        written.sums += b"".join(SUM.pack(c) for c in full)
        written.entries += IndexEntry(end_position, entry_crc).pack()
        written.file_end += len(data)

    def _data_matches(self, stream_id: int, file_position: int, data: bytes) -> bool:
        fd = self._fds.pop(stream_id, None)
        if fd is None:
            try:
                fd = os.open(self._store.file(stream_id), os.O_RDONLY)
            except FileNotFoundError:
                return False
        self._fds[stream_id] = fd
        while len(self._fds) > self._open_files_max:
            os.close(self._fds.popitem(last=False)[1])
        return blocksums.pread_exact(fd, len(data), file_position) == data

    def held(self, stream_ids: Callable[[int], bool]) -> set[int]:
        """The streams (of those ``stream_ids`` accepts) whose files hold everything; closes what it opened."""
        self.close()
        return {stream_id for stream_id, written in self._streams.items()
                if written is not None and written.holds and stream_ids(stream_id) and self._files_hold(stream_id, written)}

    def _files_hold(self, stream_id: int, written: _Written) -> bool:
        first_sum = written.file_start // BLOCK_BYTES * SUM.size
        try:
            return (os.stat(self._store.file(stream_id)).st_size == written.file_end
                    and _tail_is(self._store.file(stream_id, _SUMS), first_sum, written.sums,
                                 written.file_end // BLOCK_BYTES * SUM.size)
                    and _tail_is(self._store.file(stream_id, _INDEX), written.kept_entries * INDEX_ENTRY.size,
                                 written.entries, written.kept_entries * INDEX_ENTRY.size + len(written.entries)))
        except FileNotFoundError:
            return False

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __enter__(self) -> WrittenChecks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _tail_is(path: str, offset: int, expected: bytes | bytearray, size: int) -> bool:
    """Whether the file is ``size`` bytes long and holds ``expected`` from ``offset`` on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd).st_size == size and blocksums.pread_exact(fd, len(expected), offset) == expected
    finally:
        os.close(fd)


def _kept_entries(entries: list[IndexEntry | None], tail: int) -> int:
    """How many index entries a cut back to ``tail`` keeps: through the last valid one at or below it.

    Entries past the tail were written after the checkpoint; a damaged one
    among the kept is left in place (reads that need it report it).
    """
    kept = len(entries)
    while kept and (entries[kept - 1] is None or entries[kept - 1].end > tail):  # type: ignore[union-attr]
        kept -= 1
    return kept


def _kept_sums_bytes(sums_bytes: int, file_length: int) -> int:
    """The checksum file cut to the full blocks of a data file of ``file_length`` bytes."""
    return min(sums_bytes // SUM.size, file_length // BLOCK_BYTES) * SUM.size


def _segments(table: StreamTable, state: StreamState, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(stream id, its base, from, to) pieces of [start, end), oldest ancestor first."""
    pieces = []
    upper = end
    while True:
        lower = max(start, state.base)
        if lower < upper:
            pieces.append((state.stream_id, state.base, lower, upper))
        if state.fork is None or start >= state.base:
            break
        upper = min(upper, state.base)
        state = table.by_id[state.fork.source_id]
    pieces.reverse()
    return pieces
