"""Checkpoint snapshot files: atomic replacement, newest-valid loading.

Owns: the snapshot file format (a fixed header naming the log position the
snapshot covers, then an opaque payload), the temp file / fsync / rename /
fsync-directory sequence that makes a new checkpoint appear atomically, and
pruning older checkpoints once a newer one is durable.

Never: interprets the payload, deletes WAL segments (the caller does that
only after write_snapshot has returned), deletes a file it failed to read
(loading is read-only, so a bad disk cannot make it destroy evidence), or
imports trio. It blocks on the file system; call it through a worker thread.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Final

import crc32c as _crc32c

from .fileops import REAL, FileOps
from .wal import fsync_directory, pwrite_all, write_all

MAGIC: Final = b"TSCK"
VERSION: Final = 1
# magic, version, flags (reserved, 0), position, payload length, crc32c of
# the payload. The position is not under the crc; it is checked against the
# file name instead, so a flipped bit in either is still caught.
HEADER: Final = struct.Struct("<4sHHQQI")
HEADER_BYTES: Final = HEADER.size
# Loading reads the whole payload into memory, so bound it.
SNAPSHOT_PAYLOAD_BYTES_MAX: Final = 4 * 1024 * 1024 * 1024
TEMP_SUFFIX: Final = ".tmp"
_NAME: Final = re.compile(r"\Acheckpoint-([0-9]{20})\.snap\Z")


class SnapshotCorrupt(Exception):
    """A snapshot file is partial or damaged; the message says how."""


def snapshot_name(position: int) -> str:
    assert 0 <= position < 10**20, position
    return f"checkpoint-{position:020d}.snap"


def encode_snapshot(position: int, payload: bytes) -> bytes:
    if position < 0:
        raise ValueError("position must not be negative")
    if len(payload) > SNAPSHOT_PAYLOAD_BYTES_MAX:
        raise ValueError(f"snapshot payload of {len(payload)} bytes exceeds the maximum")
    header = HEADER.pack(MAGIC, VERSION, 0, position, len(payload), _crc32c.crc32c(payload))
    return header + payload


def decode_snapshot(data: bytes, position: int) -> bytes:
    """The payload of a snapshot file named for position, or SnapshotCorrupt."""
    if len(data) < HEADER_BYTES:
        raise SnapshotCorrupt(f"{len(data)} bytes is shorter than the header")
    magic, version, flags, header_position, length, checksum = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotCorrupt(f"bad magic {magic!r}")
    if version != VERSION or flags != 0:
        raise SnapshotCorrupt(f"unknown version {version} / flags {flags}")
    if header_position != position:
        raise SnapshotCorrupt(f"header says position {header_position}, name says {position}")
    if length != len(data) - HEADER_BYTES:
        raise SnapshotCorrupt(f"header says {length} payload bytes, file has {len(data) - HEADER_BYTES}")
    payload = data[HEADER_BYTES:]
    if _crc32c.crc32c(payload) != checksum:
        raise SnapshotCorrupt("payload checksum mismatch")
    return payload


def write_snapshot(
    directory: str | os.PathLike[str], position: int, payload: bytes, ops: FileOps = REAL, *,
    prune_before: int | None = None,
) -> Path:
    """Durably replace the checkpoint with one covering the log up to position.

    When this returns the new file is on disk under its final name and
    checkpoints older than ``prune_before`` (default: the new one) are gone.
    A crash at any point leaves either the old or the new checkpoint valid,
    plus at most a temp file that loading ignores.
    """
    # Check the bytes right before they go to disk, not just the inputs.
    assert decode_snapshot(encode_snapshot(position, payload), position) == payload
    writer = SnapshotWriter(directory, position, ops)
    try:
        writer.write(payload)
    except BaseException:
        writer.abandon()
        raise
    return writer.commit(prune_before=prune_before)


class SnapshotWriter:
    """Writes one snapshot file piece by piece, so a large payload is never
    held whole: the header's length and crc are filled in once it is complete.

    ``commit`` makes it the checkpoint exactly as ``write_snapshot`` does;
    ``abandon`` leaves a temp file that loading ignores and the next commit prunes.
    """

    def __init__(self, directory: str | os.PathLike[str], position: int, ops: FileOps = REAL) -> None:
        if position < 0:
            raise ValueError("position must not be negative")
        self._folder = Path(directory)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._position = position
        self._ops = ops
        self._final = self._folder / snapshot_name(position)
        self._temp = self._folder / (self._final.name + TEMP_SUFFIX)
        self._length = 0
        self._crc = 0
        self._fd: int | None = ops.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(self._fd, bytes(HEADER_BYTES), ops)  # the real header comes last
        except BaseException:
            self.abandon()
            raise

    def write(self, piece: bytes) -> None:
        assert self._fd is not None, "written after commit or abandon"
        if self._length + len(piece) > SNAPSHOT_PAYLOAD_BYTES_MAX:
            raise ValueError(f"snapshot payload of over {self._length + len(piece)} bytes exceeds the maximum")
        write_all(self._fd, piece, self._ops)
        self._crc = _crc32c.crc32c(piece, self._crc)
        self._length += len(piece)

    def commit(self, *, prune_before: int | None = None) -> Path:
        fd = self._fd
        assert fd is not None, "committed twice or after abandon"
        try:
            header = HEADER.pack(MAGIC, VERSION, 0, self._position, self._length, self._crc)
            pwrite_all(fd, header, 0, self._ops)
            # The contents must be durable before the rename makes them visible,
            # or a crash could leave a valid name over a torn file.
            self._ops.fsync(fd)
        finally:
            self.abandon()
        self._ops.replace(self._temp, self._final)
        fsync_directory(self._folder, self._ops)
        position = self._position
        _prune(self._folder, position if prune_before is None else min(prune_before, position), self._ops)
        return self._final

    def abandon(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._ops.close(fd)


def _prune(folder: Path, kept_position: int, ops: FileOps = REAL) -> None:
    """Delete checkpoints older than kept_position and stray temp files.

    Only called once the kept checkpoint's rename is durable, so there is
    always one valid checkpoint on disk. Temp files are left by crashed
    writes; there is one writer, so none can be in progress now.
    """
    removed = False
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        match = _NAME.match(name)
        stale = match is not None and int(match.group(1)) < kept_position
        if stale or (name.startswith("checkpoint-") and name.endswith(".snap" + TEMP_SUFFIX)):
            ops.unlink(folder / name)
            removed = True
    if removed:
        fsync_directory(folder, ops)


def list_snapshots(directory: str | os.PathLike[str]) -> list[int]:
    """Positions of the snapshot files in directory (valid or not), ascending."""
    with os.scandir(directory) as entries:
        matches = [_NAME.match(entry.name) for entry in entries]
    return sorted(int(match.group(1)) for match in matches if match)


def load_latest_snapshot(directory: str | os.PathLike[str]) -> tuple[int, bytes] | None:
    """The newest valid snapshot as (position, payload), or None.

    Corrupt or partial snapshots are skipped in favour of older valid ones;
    temp files never count, however valid they look, because their rename
    never happened.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return None
    for position in reversed(list_snapshots(folder)):
        try:
            data = (folder / snapshot_name(position)).read_bytes()
            return position, decode_snapshot(data, position)
        except (FileNotFoundError, SnapshotCorrupt):
            continue
    return None
