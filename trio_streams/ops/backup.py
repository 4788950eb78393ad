"""Backups: what goes into one, online (a running server) or offline (a stopped one).

Owns: choosing the files and exactly how many bytes of each, and copying
them into a sink (a tar stream, or a directory) in bounded pieces read in
worker threads.

Online (docs/storage.md, "Backups"): the log writer takes a checkpoint at
position P on request; the backup is that snapshot, each stream file cut
to what P records (data up to the stream's tail, index entries at or below
it, checksums of its full blocks — stream files are append-only, so these
bytes no longer change while appends go on), an empty WAL segment named P
and the last-access times. Restored, recovery starts at P and replays
nothing: the state is exactly the log up to P. Files of streams deleted
while the backup runs are kept until it ends (``Log.hold_removals``), and
the snapshot is opened before anything can prune it.

Offline: a stopped directory holds a consistent state as it is; every
file recovery reads is copied whole (the server's directory lock is held
meanwhile, so none can start).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import fcntl
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import trio

from ..storage import lastaccess
from ..storage.blocksums import BLOCK_BYTES, INDEX_ENTRY, SUM, pread_exact
from ..storage.checkpoint import decode_table
from ..storage.snapshot import decode_snapshot, list_snapshots, snapshot_name
from ..storage.wal import list_segments, segment_name
from . import archive

# Streams whose files are measured in one worker-thread call.
_STREAMS_PER_THREAD_CALL = 256
_STREAM_KINDS = (".dat", ".idx", ".sum")


class BackupFailed(Exception):
    """A backup could not be made; the message says why."""


@dataclasses.dataclass(slots=True)
class Piece:
    """One archive member: the first ``length`` bytes of ``path`` (or of ``fd``, already open)."""

    name: str
    path: Path | None
    length: int
    fd: int | None = None
    data: bytes | None = None  # a member made here, not read from a file


class TarSink:
    """Writes the archive as a tar stream through ``out``; small pieces (headers,
    padding) are gathered so each ``out`` call carries a useful amount."""

    def __init__(self, out: Callable[[bytes], Awaitable[None]], gather_bytes: int) -> None:
        self._out = out
        self._gather_bytes = gather_bytes
        self._pending = bytearray()
        self._size = 0
        self._now = time.time()

    async def _write(self, data: bytes) -> None:
        if len(data) >= self._gather_bytes:  # a file's piece goes out as it was read, uncopied
            await self._flush()
            await self._out(data)
            return
        self._pending += data
        if len(self._pending) >= self._gather_bytes:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            await self._out(pending)

    async def begin(self, name: str, size: int) -> None:
        self._size = size
        await self._write(archive.member_header(name, size, self._now))

    async def data(self, chunk: bytes) -> None:
        await self._write(chunk)

    async def end(self) -> None:
        await self._write(archive.padding(self._size))

    async def finish(self, manifest: bytes) -> None:
        self._pending += archive.closing(manifest, self._now)
        pending, self._pending = bytes(self._pending), bytearray()
        await self._out(pending)


async def write_archive(pieces: AsyncGenerator[Piece, None], sink: TarSink, chunk_bytes: int,
                        kind: str, fields: Mapping[str, Any]) -> archive.Totals:
    """Copies every piece into ``sink``, then the manifest."""
    totals = archive.Totals()
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            await _copy(piece, sink, chunk_bytes, totals)
    await sink.finish(archive.manifest(kind, totals, **fields))
    return totals


async def listed(pieces: list[Piece]) -> AsyncGenerator[Piece, None]:
    for piece in pieces:
        yield piece


async def _copy(piece: Piece, sink: TarSink, chunk_bytes: int, totals: archive.Totals) -> None:
    digest = archive.FileDigest(piece.name, piece.length)
    await sink.begin(piece.name, piece.length)
    if piece.data is not None:
        digest.update(piece.data)
        await sink.data(piece.data)
    elif piece.fd is not None:  # a descriptor handed in stays its owner's to close
        await _copy_file(piece, piece.fd, sink, chunk_bytes, digest)
    else:
        fd = await trio.to_thread.run_sync(os.open, piece.path, os.O_RDONLY)
        try:
            await _copy_file(piece, fd, sink, chunk_bytes, digest)
        finally:
            os.close(fd)
    await sink.end()
    totals.add(piece.length, digest)


async def _copy_file(piece: Piece, fd: int, sink: TarSink, chunk_bytes: int, digest: archive.FileDigest) -> None:
    """The file's first ``piece.length`` bytes, read in worker threads, one bounded piece at a time."""
    offset = 0
    while offset < piece.length:
        chunk = await trio.to_thread.run_sync(pread_exact, fd, min(chunk_bytes, piece.length - offset), offset)
        if not chunk:
            raise BackupFailed(f"{piece.name} ended at {offset} bytes, {piece.length} expected")
        digest.update(chunk)
        await sink.data(chunk)
        offset += len(chunk)


# -- online ----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class OnlinePlan:
    """What the checkpoint at ``position`` records: the snapshot (open) and each stream's extent."""

    position: int
    snapshot_fd: int
    snapshot_bytes: int
    ids: array.array[int]
    bases: array.array[int]
    tails: array.array[int]
    last_access: bytes

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.snapshot_fd)


def plan_online(directory: Path, position: int, last_access: Mapping[int, float]) -> OnlinePlan:
    """Worker thread: opens the checkpoint just taken (before a later one can prune
    it) and notes every stream's id, base and tail in it, compactly."""
    fd = os.open(directory / "checkpoints" / snapshot_name(position), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        table = decode_table(decode_snapshot(pread_exact(fd, size, 0), position))
    except BaseException:
        os.close(fd)
        raise
    ids, bases, tails = array.array("q"), array.array("q"), array.array("q")
    for stream_id in sorted(table.by_id):
        state = table.by_id[stream_id]
        ids.append(stream_id)
        bases.append(state.base)
        tails.append(state.tail)
    kept = {i: at for i, at in last_access.items() if (s := table.by_id.get(i)) is not None and s.expiry.ttl_s is not None}
    saved = orjson.dumps({"version": lastaccess.FORMAT_VERSION, "position": position,
                          "last_access": [[i, at] for i, at in kept.items()]})
    return OnlinePlan(position, fd, size, ids, bases, tails, saved)


async def online_pieces(directory: Path, plan: OnlinePlan) -> AsyncGenerator[Piece, None]:
    """The members of an online backup, stream files measured in worker threads."""
    yield Piece(f"checkpoints/{snapshot_name(plan.position)}", None, plan.snapshot_bytes, fd=plan.snapshot_fd)
    yield Piece(f"wal/{segment_name(plan.position)}", None, 0, data=b"")
    streams = directory / "streams"
    for start in range(0, len(plan.ids), _STREAMS_PER_THREAD_CALL):
        end = min(start + _STREAMS_PER_THREAD_CALL, len(plan.ids))
        batch = await trio.to_thread.run_sync(_measure_streams, streams, plan, start, end)
        for piece in batch:
            yield piece
    yield Piece(lastaccess.FILE_NAME, None, len(plan.last_access), data=plan.last_access)


def _measure_streams(streams: Path, plan: OnlinePlan, start: int, end: int) -> list[Piece]:
    pieces = []
    for i in range(start, end):
        pieces += stream_pieces(streams, plan.ids[i], plan.bases[i], plan.tails[i])
    return pieces


def stream_pieces(streams: Path, stream_id: int, base: int, tail: int) -> list[Piece]:
    """A stream's three files, each cut to what a checkpoint with this tail records.

    A file shorter than that (a stream fenced as damaged) is copied as it is:
    the restored server fences it the same way."""
    name = f"{stream_id:016x}"
    sizes = {}
    for kind in _STREAM_KINDS:
        with contextlib.suppress(FileNotFoundError):
            sizes[kind] = os.stat(streams / (name + kind)).st_size
    data_bytes = min(sizes.get(".dat", 0), tail - base)
    wanted = {
        ".dat": data_bytes,
        ".idx": _index_entries_upto(streams / (name + ".idx"), sizes.get(".idx", 0), tail) * INDEX_ENTRY.size,
        ".sum": min(sizes.get(".sum", 0) // SUM.size, (tail - base) // BLOCK_BYTES) * SUM.size,
    }
    return [Piece(f"streams/{name}{kind}", streams / (name + kind), wanted[kind]) for kind in _STREAM_KINDS
            if kind in sizes]


def _index_entries_upto(path: Path, size: int, tail: int) -> int:
    """How many entries end at or below ``tail`` (ends only grow: binary search by pread)."""
    low, high = 0, size // INDEX_ENTRY.size
    if not high:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while low < high:
            middle = (low + high) // 2
            end = int.from_bytes(pread_exact(fd, 8, middle * INDEX_ENTRY.size), "little")
            if end <= tail:
                low = middle + 1
            else:
                high = middle
    finally:
        os.close(fd)
    return low


# -- offline ---------------------------------------------------------------------


@contextlib.contextmanager
def locked_directory(directory: Path) -> Iterator[None]:
    """Holds the server's directory lock: no server can start on it meanwhile."""
    if not any((directory / sub).is_dir() for sub in ("wal", "checkpoints", "streams")):
        raise BackupFailed(f"{directory} is not a trio-streams data directory (no wal/, checkpoints/ or streams/)")
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupFailed(f"{directory} is in use by a running server: back it up with --url "
                               "(GET /admin/backup), which is consistent while it serves") from None
        yield
    finally:
        os.close(fd)


def offline_pieces(directory: Path) -> tuple[list[Piece], dict[str, Any]]:
    """Every file recovery reads, whole, and the manifest's fields."""
    pieces = []
    snapshots = list_snapshots(directory / "checkpoints") if (directory / "checkpoints").is_dir() else []
    segments = list_segments(directory / "wal") if (directory / "wal").is_dir() else []
    named = [f"checkpoints/{snapshot_name(p)}" for p in snapshots] + [f"wal/{segment_name(s)}" for s in segments]
    if (directory / "streams").is_dir():
        named += sorted(f"streams/{n}" for n in os.listdir(directory / "streams") if archive.member_allowed(f"streams/{n}"))
    if (directory / lastaccess.FILE_NAME).exists():
        named.append(lastaccess.FILE_NAME)
    for name in named:
        pieces.append(Piece(name, directory / name, (directory / name).stat().st_size))
    wal_end = segments[-1] + (directory / "wal" / segment_name(segments[-1])).stat().st_size if segments else None
    return pieces, {"position": max(snapshots, default=0), "wal_end": wal_end, "created_at": time.time()}
