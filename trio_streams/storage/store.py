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

import bisect
import collections
import os
import struct
from pathlib import Path

import trio

from ..protocol.jsonmode import TERMINATOR
from ..protocol.state import StreamState, StreamTable
from .fileops import REAL, FileOps

_DATA = ".dat"
_INDEX = ".idx"
_ENTRY = struct.Struct("<Q")


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
    def __init__(self, directory: Path, *, open_files_max: int, hot_tail_bytes_max: int, ops: FileOps = REAL) -> None:
        self.directory = directory
        self.ops = ops
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: collections.OrderedDict[tuple[int, str], int] = collections.OrderedDict()
        self._dirty: set[tuple[int, str]] = set()
        self._open_files_max = max(1, open_files_max)
        self._hot_tail_bytes_max = hot_tail_bytes_max
        self._hot: dict[int, HotTail] = {}

    def path(self, stream_id: int, kind: str = _DATA) -> Path:
        return self.directory / _file_name(stream_id, kind)

    # -- writer thread -------------------------------------------------
    #
    # Each stream has a data file (its own bytes, from its base position on)
    # and an index file of u64 end positions, one per append: the data
    # boundaries that Stream-Fork-Sub-Offset may not cross.

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
            if old_key in self._dirty:
                self.ops.fsync(old_fd)  # the next checkpoint counts on this file being synced
                self._dirty.discard(old_key)
            self.ops.close(old_fd)
        return fd

    def create_sync(self, stream_id: int) -> None:
        for kind in (_DATA, _INDEX):
            self._fd(stream_id, kind, create=True)
            self._dirty.add((stream_id, kind))

    def append_sync(self, stream_id: int, file_position: int, data: bytes, end_position: int) -> None:
        """Writes one append's bytes at ``file_position`` and records its end as a boundary."""
        if not data:
            return
        fd = self._fd(stream_id, _DATA)
        written = self.ops.pwrite(fd, data, file_position)
        while written < len(data):  # short writes are legal; finish them
            written += self.ops.pwrite(fd, data[written:], file_position + written)
        self.ops.write(self._fd(stream_id, _INDEX), _ENTRY.pack(end_position))
        self._dirty.add((stream_id, _DATA))
        self._dirty.add((stream_id, _INDEX))

    def remove_sync(self, stream_id: int) -> None:
        for kind in (_DATA, _INDEX):
            fd = self._fds.pop((stream_id, kind), None)
            if fd is not None:
                self.ops.close(fd)
            self._dirty.discard((stream_id, kind))
            try:
                self.ops.unlink(self.path(stream_id, kind))
            except FileNotFoundError:
                pass

    def truncate_sync(self, stream_id: int, file_length: int, tail: int) -> bool:
        """Cuts a stream's files back to a checkpointed state (recovery); False,
        touching nothing, when the data file is shorter than that state."""
        fd = self._fd(stream_id, _DATA)
        if os.fstat(fd).st_size < file_length:
            return False
        self.ops.ftruncate(fd, file_length)
        entries = self._entries_sync(stream_id)
        self.ops.ftruncate(self._fd(stream_id, _INDEX), bisect.bisect_right(entries, tail) * _ENTRY.size)
        return True

    def sync_dirty_sync(self) -> int:
        synced = 0
        for key in list(self._dirty):
            fd = self._fds.get(key)
            if fd is not None:
                self.ops.fsync(fd)
                synced += 1
        self._dirty.clear()
        return synced

    def remove_orphans_sync(self, live_ids: set[int]) -> int:
        orphans = set()
        for entry in os.scandir(self.directory):
            name, _, kind = entry.name.partition(".")
            try:
                stream_id = int(name, 16)
            except ValueError:
                continue
            if "." + kind in (_DATA, _INDEX) and stream_id not in live_ids:
                orphans.add(stream_id)
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

    def _entries_sync(self, stream_id: int) -> list[int]:
        try:
            raw = self.path(stream_id, _INDEX).read_bytes()
        except FileNotFoundError:
            return []
        usable = len(raw) - len(raw) % _ENTRY.size  # a torn entry is simply not there
        return [e for (e,) in _ENTRY.iter_unpack(raw[:usable])]

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
        pieces = [await self._read_own(*segment) for segment in _segments(table, state, start, end)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_own(self, stream_id: int, base: int, start: int, end: int) -> bytes:
        hot = self._hot.get(stream_id)
        if hot is not None and hot.base <= start and end <= hot.end:
            return bytes(hot.buf[start - hot.base : end - hot.base])
        return await trio.to_thread.run_sync(self._pread, stream_id, start - base, end - base)

    def _pread(self, stream_id: int, start: int, end: int) -> bytes:
        fd = os.open(self.path(stream_id), os.O_RDONLY)
        try:
            chunks = []
            position = start
            while position < end:
                chunk = os.pread(fd, end - position, position)
                if not chunk:
                    raise RuntimeError(f"stream file {stream_id:x} ends before its durable tail")
                chunks.append(chunk)
                position += len(chunk)
            return b"".join(chunks)
        finally:
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
        found = await trio.to_thread.run_sync(self._next_entry_sync, state.stream_id, position)
        return state.tail if found is None else min(found, state.tail)

    def _next_entry_sync(self, stream_id: int, position: int) -> int | None:
        """Binary search of the index file for the first boundary above ``position``."""
        fd = os.open(self.path(stream_id, _INDEX), os.O_RDONLY)
        try:
            lo, hi = 0, os.fstat(fd).st_size // _ENTRY.size
            while lo < hi:
                mid = (lo + hi) // 2
                (entry,) = _ENTRY.unpack(os.pread(fd, _ENTRY.size, mid * _ENTRY.size))
                if entry <= position:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == os.fstat(fd).st_size // _ENTRY.size:
                return None
            return _ENTRY.unpack(os.pread(fd, _ENTRY.size, lo * _ENTRY.size))[0]
        finally:
            os.close(fd)


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
