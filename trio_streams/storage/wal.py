"""Write-ahead log: record framing and the segment files that hold records.

Owns: the byte layout of one record (``u32 length | u32 crc32c | u8 type |
payload``, little-endian, crc over type + payload), decoding with the rule
"stop at the first short or invalid record", and the segment files of one log
directory: naming by global log position, rotation, recovery (truncate the
torn tail, drop whatever follows it), and deletion behind a checkpoint.
The format is specified in docs/storage-framing.md.

Never: interprets payloads (a record type is just a byte here), imports trio,
keeps a buffered Python file object, or retries a failed write or fsync (a
failed fsync leaves the page cache in an unknown state, so the log refuses
all further work, recovery included, until the process restarts). Everything
here blocks on the file system; the server calls it through
``trio.to_thread``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import os
import re
import struct
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Final, Union

import crc32c as _crc32c

from .fileops import REAL, FileOps

HEADER: Final = struct.Struct("<IIB")
HEADER_BYTES: Final = HEADER.size
# The crc covers the type byte, which sits at this offset in the header, and
# the payload right after it: one contiguous slice, so one crc call.
_CRC_FROM: Final = 8
RECORD_PAYLOAD_BYTES_MAX: Final = 256 * 1024 * 1024
RECORD_TYPE_MIN: Final = 1
RECORD_TYPE_MAX: Final = 255
SEGMENT_SUFFIX: Final = ".wal"
# Recovery reads this much at a time, so memory is bounded by one chunk plus
# the largest record, not by the segment size.
READ_CHUNK_BYTES: Final = 1024 * 1024
_SEGMENT_NAME: Final = re.compile(r"\A([0-9]{20})\.wal\Z")

# _measure() results other than a record size.
_NEED_MORE: Final = 0
_INVALID: Final = -1

# Buffers one writev may take (POSIX guarantees at least 16; Linux allows 1024).
_IOV_MAX: Final = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 16
Buffer = Union[bytes, bytearray, memoryview]


class WalError(Exception):
    """The log cannot be used: it contradicts the caller, or an I/O failed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    # Global log position (byte address across all segments) of the first
    # header byte.
    position: int
    rtype: int
    payload: bytes

    @property
    def end_position(self) -> int:
        return self.position + HEADER_BYTES + len(self.payload)


# ---------------------------------------------------------------- codec


def encode_record(rtype: int, payload: bytes) -> bytes:
    return b"".join(encode_record_parts(rtype, [payload]))


def encode_record_parts(rtype: int, payload: Sequence[Buffer]) -> list[Buffer]:
    """One record as parts: its header, then the payload's parts as given (a large
    payload is checksummed and later written where it is, never copied)."""
    if not RECORD_TYPE_MIN <= rtype <= RECORD_TYPE_MAX:
        raise ValueError(f"record type must be in 1..255, not {rtype}")
    length = sum(len(part) for part in payload)
    if length > RECORD_PAYLOAD_BYTES_MAX:
        raise ValueError(f"record payload of {length} bytes exceeds the maximum")
    checksum = _crc32c.crc32c(bytes((rtype,)))
    for part in payload:
        checksum = _crc32c.crc32c(part, value=checksum)
    return [HEADER.pack(length, checksum, rtype), *payload]


def _measure(view: memoryview, offset: int) -> int:
    """Size of the valid record at offset, or _NEED_MORE, or _INVALID.

    Every verdict depends only on bytes up to the record's end, so feeding
    input in any split gives the same verdicts as one whole buffer.
    """
    available = len(view) - offset
    if available < HEADER_BYTES:
        return _NEED_MORE
    length, checksum, rtype = HEADER.unpack_from(view, offset)
    # Type 0 is invalid so that a zero-filled tail (a file extended by the
    # file system but never written) stops the scan before its crc is read.
    if length > RECORD_PAYLOAD_BYTES_MAX or rtype == 0:
        return _INVALID
    size = HEADER_BYTES + length
    if available < size:
        return _NEED_MORE
    if _crc32c.crc32c(view[offset + _CRC_FROM : offset + size]) != checksum:
        return _INVALID
    return size


def _decode(view: memoryview, base_position: int) -> tuple[list[Record], int, int]:
    """Records from the start of view, bytes they span, and why it stopped."""
    records = []
    offset = 0
    while (size := _measure(view, offset)) > 0:
        payload = bytes(view[offset + HEADER_BYTES : offset + size])
        records.append(Record(base_position + offset, view[offset + _CRC_FROM], payload))
        offset += size
    return records, offset, size


def scan(buf: bytes | bytearray | memoryview, base_position: int) -> tuple[list[Record], int]:
    """Decode records from the start of buf until the end or the first short
    or invalid record; return them and the number of valid bytes."""
    with memoryview(buf) as view:
        records, consumed, _ = _decode(view, base_position)
    return records, consumed


class _PartsReader:
    """Reads consecutive parts as one stream of bytes, handing out slices, never copies."""

    def __init__(self, parts: Sequence[Buffer]) -> None:
        self._views = collections.deque(memoryview(part) for part in parts if len(part))

    def at_end(self) -> bool:
        return not self._views

    def take(self, count: int) -> Iterator[memoryview]:
        while count and self._views:
            view = self._views.popleft()
            if len(view) > count:
                self._views.appendleft(view[count:])
                view = view[:count]
            count -= len(view)
            yield view


def _whole_records(parts: Sequence[Buffer]) -> bool:
    """What ``_valid_prefix_bytes(b"".join(parts)) == total`` says, without the join."""
    reader = _PartsReader(parts)
    while not reader.at_end():
        header = b"".join(reader.take(HEADER_BYTES))
        if len(header) < HEADER_BYTES:
            return False
        length, checksum, rtype = HEADER.unpack(header)
        if length > RECORD_PAYLOAD_BYTES_MAX or rtype == 0:
            return False
        crc, seen = _crc32c.crc32c(bytes((rtype,))), 0
        for view in reader.take(length):
            crc, seen = _crc32c.crc32c(view, value=crc), seen + len(view)
        if seen < length or crc != checksum:
            return False
    return True


def _valid_prefix_bytes(data: bytes | bytearray | memoryview) -> int:
    with memoryview(data) as view:
        offset = 0
        while (size := _measure(view, offset)) > 0:
            offset += size
    return offset


class RecordScanner:
    """Incremental scan(): feed bytes in any split, get the same records.

    Once an invalid record is seen the scanner stays stopped, as scan() does:
    bytes after a bad record are never trusted, even if they look valid.
    """

    def __init__(self, base_position: int = 0) -> None:
        assert base_position >= 0, base_position
        self._pending = bytearray()
        self._position = base_position
        self._invalid = False

    @property
    def position(self) -> int:
        """Global position just after the last valid record."""
        return self._position

    @property
    def invalid(self) -> bool:
        return self._invalid

    @property
    def pending_bytes(self) -> int:
        """Bytes held that do not (yet) form a valid record."""
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        if self._invalid:
            return []
        self._pending += data
        # The view must be released before the bytearray is resized.
        with memoryview(self._pending) as view:
            records, consumed, verdict = _decode(view, self._position)
        del self._pending[:consumed]
        self._position += consumed
        self._invalid = verdict == _INVALID
        return records


# ---------------------------------------------------------------- files


def segment_name(start_position: int) -> str:
    assert 0 <= start_position < 10**20, start_position
    return f"{start_position:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """Start positions of the segment files in directory, ascending."""
    starts = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _SEGMENT_NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                starts.append(int(match.group(1)))
    return sorted(starts)


def fsync_directory(directory: Path, ops: FileOps = REAL) -> None:
    """Make creations, renames and deletions in directory durable."""
    fd = ops.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview, ops: FileOps = REAL) -> None:
    # os.write may write less than asked (a signal, a nearly full disk).
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += ops.write(fd, view[written:])


def write_all_parts(fd: int, parts: Sequence[Buffer], ops: FileOps = REAL) -> None:
    """Writes the parts in order, as ``write_all`` of their concatenation would."""
    views = [memoryview(part) for part in parts if len(part)]
    first = 0
    while first < len(views):
        written = ops.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:  # a short write stopped inside this part
            views[first] = views[first][written:]


def _create_segment(directory: Path, start_position: int, ops: FileOps = REAL) -> int:
    """Create an empty segment and make its name durable; return an append fd."""
    path = directory / segment_name(start_position)
    # O_EXCL: a name collision would mean two segments claim one position.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
    fd = ops.open(path, flags, 0o644)
    try:
        fsync_directory(directory, ops)
    except BaseException:
        ops.close(fd)
        raise
    return fd


def _truncate_segment(directory: Path, start_position: int, length: int, ops: FileOps = REAL) -> None:
    fd = ops.open(directory / segment_name(start_position), os.O_WRONLY)
    try:
        ops.ftruncate(fd, length)
        ops.fsync(fd)
    finally:
        ops.close(fd)


def _delete_segments(directory: Path, starts: list[int], ops: FileOps = REAL) -> None:
    for start in starts:
        ops.unlink(directory / segment_name(start))
    if starts:
        fsync_directory(directory, ops)


# ---------------------------------------------------------------- the log


@dataclasses.dataclass(frozen=True, slots=True)
class LogStatistics:
    segments: int
    # None until recover() has run to the end.
    end_position: int | None
    bytes_appended: int
    appends: int
    rotations: int
    syncs: int


class SegmentedLog:
    """An append-only log of records spread over segment files.

    Lifecycle: open() -> recover() (iterate it to the end) -> append()/sync()
    -> close(). Appends before recovery has finished are refused, because the
    end of the log is not known until the torn tail has been cut off.
    """

    def __init__(self, directory: Path, segment_bytes_max: int, ops: FileOps = REAL) -> None:
        self._directory = directory
        self._ops = ops
        self._segment_bytes_max = segment_bytes_max
        # Start positions of the segments on disk, ascending; the last one is
        # the current (appended-to) segment once recovered.
        self._segments: list[int] = []
        self._fd: int | None = None
        self._segment_bytes = 0
        self._end: int | None = None
        self._dirty = False
        self._failure: BaseException | None = None
        self._bytes_appended = 0
        self._appends = 0
        self._rotations = 0
        self._syncs = 0

    @classmethod
    def open(cls, directory: str | os.PathLike[str], segment_bytes_max: int, ops: FileOps = REAL) -> SegmentedLog:
        if segment_bytes_max <= 0:
            raise ValueError("segment_bytes_max must be positive")
        path = Path(directory)
        if not path.is_dir():
            path.mkdir(parents=True)
            # The log directory's own name must survive a crash too.
            fsync_directory(path.parent, ops)
        return cls(path, segment_bytes_max, ops)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def end_position(self) -> int:
        if self._end is None:
            raise RuntimeError("the log end is unknown until recover() has finished")
        return self._end

    @property
    def failed(self) -> bool:
        """A write could not be undone or a sync failed: only a restart helps."""
        return self._failure is not None

    @property
    def segment_starts(self) -> tuple[int, ...]:
        return tuple(self._segments)

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- recovery

    def recover(self, from_position: int) -> Iterator[Record]:
        """Yield every valid record at position >= from_position, in order.

        Stops at the first short or invalid record or at a segment whose name
        is not where its predecessor ends; truncates there (fsync) and deletes
        every later segment (fsync directory). Side effects happen as the
        iterator is consumed; the log accepts appends once it is exhausted.
        """
        if from_position < 0:
            raise ValueError("from_position must not be negative")
        if self._failure is not None:
            # After a failed fsync the page cache may hold bytes the disk
            # lacks; re-reading them here could replay records that are gone.
            raise WalError("an earlier write or fsync failed; restart the process") from self._failure
        return self._recover(from_position)

    def _recover(self, from_position: int) -> Iterator[Record]:
        self._close_fd()
        self._end = None
        starts = list_segments(self._directory)
        if not starts:
            # Every segment was deleted behind a checkpoint (or none was ever
            # written): the log continues at the checkpoint's position.
            self._fd = _create_segment(self._directory, from_position, self._ops)
            self._segments = [from_position]
            self._attach_current(from_position)
            return
        first = self._first_segment_index(starts, from_position)
        position = from_position
        kept = len(starts)
        for index in range(first, len(starts)):
            if index > first and starts[index] != position:
                kept = index
                break
            position, file_end = yield from self._replay_segment(starts[index], position)
            if position < file_end:
                _truncate_segment(self._directory, starts[index], position - starts[index], self._ops)
                kept = index + 1
                break
        # Truncate before deleting: a crash in between leaves a successor
        # whose name no longer matches, which the next recovery deletes.
        _delete_segments(self._directory, starts[kept:], self._ops)
        self._segments = starts[:kept]
        self._fd = self._ops.open(self._directory / segment_name(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self._attach_current(position)

    def _first_segment_index(self, starts: list[int], from_position: int) -> int:
        index = bisect.bisect_right(starts, from_position) - 1
        if index < 0:
            raise WalError(
                f"log in {self._directory} starts at {starts[0]}, after position {from_position}: "
                "records in between are missing"
            )
        return index

    def _replay_segment(self, start: int, position: int) -> Generator[Record, None, tuple[int, int]]:
        """Yield the valid records of one segment from position; return the
        end of the valid records and the end of the file, as positions."""
        fd = os.open(self._directory / segment_name(start), os.O_RDONLY)
        try:
            file_bytes = os.fstat(fd).st_size
            offset = position - start
            if offset > file_bytes:
                raise WalError(f"segment {segment_name(start)} ends at {start + file_bytes}, before {position}")
            scanner = RecordScanner(position)
            while offset < file_bytes and not scanner.invalid:
                chunk = os.pread(fd, min(READ_CHUNK_BYTES, file_bytes - offset), offset)
                if not chunk:
                    break
                offset += len(chunk)
                for record in scanner.feed(chunk):
                    # Read-back check: records tile the log with no gaps.
                    assert record.position == position, (record.position, position)
                    position = record.end_position
                    yield record
        finally:
            os.close(fd)
        assert position == scanner.position, (position, scanner.position)
        return position, start + file_bytes

    def _attach_current(self, end_position: int) -> None:
        assert self._fd is not None
        current = self._segments[-1]
        assert current <= end_position, (current, end_position)
        self._segment_bytes = end_position - current
        # Read-back check: the file is exactly as long as the records in it.
        assert os.fstat(self._fd).st_size == self._segment_bytes, (self._segment_bytes,)
        self._end = end_position
        self._dirty = False

    # -- appending

    def append(self, data: bytes) -> int:
        """Write one or more whole encoded records; return their start position.

        A batch is never split across segments, so a batch larger than
        segment_bytes_max gets a segment of its own.
        """
        return self.append_parts([data])

    def append_parts(self, parts: Sequence[Buffer]) -> int:
        """``append`` of the parts' concatenation, written without making it (writev)."""
        self._check_usable()
        assert self._end is not None and self._fd is not None
        size = sum(len(part) for part in parts)
        if not size:
            raise ValueError("append needs at least one record")
        assert _whole_records(parts), "append data must be whole, valid records"
        if self._segment_bytes > 0 and self._segment_bytes + size > self._segment_bytes_max:
            self._rotate()
        start = self._end
        assert start == self._segments[-1] + self._segment_bytes, (start, self._segment_bytes)
        try:
            write_all_parts(self._fd, parts, self._ops)
        except BaseException as error:
            self._undo_append(error)
            raise
        self._segment_bytes += size
        self._end = start + size
        self._dirty = True
        self._bytes_appended += size
        self._appends += 1
        return start

    def _undo_append(self, error: BaseException) -> None:
        """Cuts a failed write's partial batch off, so the log ends at its last
        whole record again and the next append may retry (a full disk frees up).
        If even that fails, positions past the end are unknown: the log is done."""
        assert self._fd is not None
        try:
            self._ops.ftruncate(self._fd, self._segment_bytes)
        except BaseException:
            self._failure = error
            raise
        if not isinstance(error, OSError):
            self._failure = error

    def _rotate(self) -> None:
        assert self._fd is not None and self._end is not None
        # The old segment must be durable before a successor exists: recovery
        # deletes everything after a torn segment, so an unsynced predecessor
        # could take synced (acknowledged) records in the successor with it.
        self._fsync_current()
        start = self._end
        assert start > self._segments[-1], (start, self._segments[-1])
        try:
            fd = _create_segment(self._directory, start, self._ops)
        except BaseException as error:
            # No new file (a full disk refused it): the old segment stays current.
            if (self._directory / segment_name(start)).exists():
                self._failure = error
            raise
        self._ops.close(self._fd)
        self._fd = fd
        self._segments.append(start)
        self._segment_bytes = 0
        self._rotations += 1

    def sync(self) -> None:
        """Make every appended record durable."""
        self._check_usable()
        if self._dirty:
            self._fsync_current()

    def _fsync_current(self) -> None:
        assert self._fd is not None
        try:
            self._ops.fdatasync(self._fd)
        except BaseException as error:
            self._failure = error
            raise
        self._dirty = False
        self._syncs += 1

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise WalError("an earlier write or fsync failed; restart the process") from self._failure
        if self._fd is None:
            raise RuntimeError("the log is closed or recover() has not finished")

    # -- housekeeping

    def delete_before(self, position: int) -> int:
        """Delete segments whose records all lie before position (a segment
        whose successor starts at or before it); never the current segment.
        Returns how many were deleted."""
        self._check_usable()
        if position > self.end_position:
            raise ValueError(f"position {position} is past the log end {self.end_position}")
        doomed = 0
        while doomed + 1 < len(self._segments) and self._segments[doomed + 1] <= position:
            doomed += 1
        _delete_segments(self._directory, self._segments[:doomed], self._ops)
        del self._segments[:doomed]
        assert self._segments, "the current segment is never deleted"
        return doomed

    def close(self) -> None:
        """Release the file; does not sync (durability is always explicit)."""
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._ops.close(fd)

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            segments=len(self._segments),
            end_position=self._end,
            bytes_appended=self._bytes_appended,
            appends=self._appends,
            rotations=self._rotations,
            syncs=self._syncs,
        )
