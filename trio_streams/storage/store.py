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
import os
from pathlib import Path

import trio

from ..protocol.jsonmode import TERMINATOR

_SUFFIX = ".dat"


def _file_name(stream_id: int) -> str:
    return f"{stream_id:016x}{_SUFFIX}"


class HotTail:
    __slots__ = ("base", "buf")

    def __init__(self, base: int, data: bytes) -> None:
        self.base = base
        self.buf = bytearray(data)

    @property
    def end(self) -> int:
        return self.base + len(self.buf)


class Store:
    def __init__(self, directory: Path, *, open_files_max: int, hot_tail_bytes_max: int) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._dirty: set[int] = set()
        self._open_files_max = max(1, open_files_max)
        self._hot_tail_bytes_max = hot_tail_bytes_max
        self._hot: dict[int, HotTail] = {}

    def path(self, stream_id: int) -> Path:
        return self.directory / _file_name(stream_id)

    # -- writer thread -------------------------------------------------

    def _fd(self, stream_id: int, *, create: bool = False) -> int:
        fd = self._fds.pop(stream_id, None)
        if fd is None:
            flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if create else os.O_CREAT)
            fd = os.open(self.path(stream_id), flags, 0o644)
        elif create:
            os.ftruncate(fd, 0)
        self._fds[stream_id] = fd
        while len(self._fds) > self._open_files_max:
            old_id, old_fd = self._fds.popitem(last=False)
            if old_id in self._dirty:
                os.fsync(old_fd)  # an evicted file must not lose its unsynced pages' durability claim
                self._dirty.discard(old_id)
            os.close(old_fd)
        return fd

    def create_sync(self, stream_id: int) -> None:
        self._fd(stream_id, create=True)
        self._dirty.add(stream_id)

    def write_sync(self, stream_id: int, file_position: int, data: bytes) -> None:
        if not data:
            return
        fd = self._fd(stream_id)
        written = os.pwrite(fd, data, file_position)
        while written < len(data):  # short writes are legal; finish them
            written += os.pwrite(fd, data[written:], file_position + written)
        self._dirty.add(stream_id)

    def remove_sync(self, stream_id: int) -> None:
        fd = self._fds.pop(stream_id, None)
        if fd is not None:
            os.close(fd)
        self._dirty.discard(stream_id)
        try:
            os.unlink(self.path(stream_id))
        except FileNotFoundError:
            pass

    def truncate_sync(self, stream_id: int, length: int) -> None:
        fd = self._fd(stream_id)
        if os.fstat(fd).st_size < length:
            raise RuntimeError(f"stream file {stream_id:x} is shorter than its checkpointed length {length}")
        os.ftruncate(fd, length)

    def sync_dirty_sync(self) -> int:
        synced = 0
        for stream_id in list(self._dirty):
            fd = self._fds.get(stream_id)
            if fd is not None:
                os.fsync(fd)
                synced += 1
        self._dirty.clear()
        return synced

    def remove_orphans_sync(self, live_ids: set[int]) -> int:
        removed = 0
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(_SUFFIX):
                continue
            try:
                stream_id = int(entry.name[: -len(_SUFFIX)], 16)
            except ValueError:
                continue
            if stream_id not in live_ids:
                self.remove_sync(stream_id)
                removed += 1
        return removed

    def close_sync(self) -> None:
        self.sync_dirty_sync()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

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

    async def read(self, stream_id: int, start: int, end: int) -> bytes:
        """Bytes [start, end) of a stream; the caller guarantees end ≤ its durable tail."""
        if start >= end:
            return b""
        hot = self._hot.get(stream_id)
        if hot is not None and hot.base <= start and end <= hot.end:
            return bytes(hot.buf[start - hot.base : end - hot.base])
        return await trio.to_thread.run_sync(self._pread, stream_id, start, end)

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

    async def read_messages(self, stream_id: int, start: int, tail: int, bytes_max: int) -> bytes:
        """A JSON stream's whole messages from ``start``: at most ``bytes_max``, at least one."""
        end = min(tail, start + bytes_max)
        data = await self.read(stream_id, start, end)
        if end == tail or not data:
            return data
        cut = data.rfind(TERMINATOR)
        if cut >= 0:
            return data[: cut + 1]
        # One message larger than the chunk limit: extend to its terminator.
        while end < tail:
            more = await self.read(stream_id, end, min(tail, end + bytes_max))
            end += len(more)
            cut = more.find(TERMINATOR)
            if cut >= 0:
                return data + more[: cut + 1]
            data += more
        return data
