"""Write-ahead log: record framing and the segment files that hold records.

Owns: the byte layout of one record (``u32 length | u32 crc32c | u8 type |
payload``, little-endian, crc over type + payload), decoding with the rule
"stop at the first short or invalid record", and the segment files of one log
directory: naming by global log position, rotation, recovery (truncate the
torn tail, drop whatever follows it), and deletion behind a checkpoint.
The format is specified in docs/storage.md, "WAL framing, segments and snapshot files".

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
from collections.abc import Callable, Generator, Iterator, Sequence
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
# Searching past damage for the next valid record checksums candidates at
# every offset; this many payload bytes at most (hostile appended data could
# otherwise look like a header at every offset and make the search quadratic).
RESYNC_CHECKSUM_BYTES_MAX: Final = 4 * 1024 * 1024 * 1024
# Offsets worth checksumming: a length whose top byte allows at most
# RECORD_PAYLOAD_BYTES_MAX, and a non-zero type. Found by the regex engine, in C.
_CANDIDATE: Final = re.compile(rb"(?=[\s\S]{3}[\x00-\x10][\s\S]{4}[^\x00])")

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


@dataclasses.dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of the log that hold no valid record, as recovery found them."""

    segment_start: int
    # Log position of the first invalid byte (its file offset is position - segment_start).
    position: int
    what: str
    # Log position of the first valid record after the damage; None when none was found.
    resumes_at: int | None
    # An incomplete last write: in the last segment, with no valid record after it.
    torn_tail: bool
    # The segment ends before the position recovery starts from (a checkpoint's).
    before_start: bool = False

    @property
    def segment(self) -> str:
        return segment_name(self.segment_start)

    def describe(self) -> str:
        where = describe_position(self.segment_start, self.position)
        after = "no valid record follows" if self.resumes_at is None else f"valid records resume at log position {self.resumes_at}"
        return f"{where}: {self.what}; {after}"


def describe_position(segment_start: int, position: int) -> str:
    """Where a log position is on disk, as every report names it."""
    return f"{segment_name(segment_start)} byte {position - segment_start} (log position {position})"


def segment_of(starts: Sequence[int], position: int) -> int:
    """The start of the segment (of ``starts``, ascending) that holds ``position``."""
    return starts[max(0, bisect.bisect_right(starts, position) - 1)]


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


def pwrite_all(fd: int, data: Buffer, offset: int, ops: FileOps = REAL) -> None:
    """Writes all of ``data`` at ``offset``: short writes are legal, so finish them."""
    with memoryview(data) as view:
        written = ops.pwrite(fd, view, offset)
        while written < len(view):
            written += ops.pwrite(fd, view[written:], offset + written)


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


def _read_at(path: Path, offset: int, count: int | None) -> bytes:
    """count bytes (None: the rest of the file) from offset."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        chunks = []
        while count > 0 and (chunk := os.pread(fd, count, offset)):
            chunks.append(chunk)
            offset += len(chunk)
            count -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _measure_within(view: memoryview, offset: int, budget: list[int]) -> int:
    """_measure, charging the bytes it checksums to budget[0]."""
    if len(view) - offset < HEADER_BYTES:
        return _NEED_MORE
    length = HEADER.unpack_from(view, offset)[0]
    if length <= RECORD_PAYLOAD_BYTES_MAX and offset + HEADER_BYTES + length <= len(view):
        budget[0] -= length
        if budget[0] < 0:
            return _INVALID
    return _measure(view, offset)


# ---------------------------------------------------------------- the log


@dataclasses.dataclass(frozen=True, slots=True)
class WalStatistics:
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

    @classmethod
    def for_survey(cls, directory: str | os.PathLike[str]) -> SegmentedLog:
        """A view of an existing log for ``survey()`` only: never recovered, written or locked
        (``trio-streams verify`` reads a live server's WAL through it)."""
        return cls(Path(directory), RECORD_PAYLOAD_BYTES_MAX)

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

    def recover(
        self, from_position: int, *, skip_damage: bool = False, resync_checksum_bytes_max: int = RESYNC_CHECKSUM_BYTES_MAX
    ) -> Iterator[Record]:
        """Yield every valid record at position >= from_position, in order.

        A torn tail (an incomplete last write) is truncated (fsync). Other
        damage (see ``survey``): without ``skip_damage`` the log is cut at
        the first damage and every later segment deleted (point-in-time
        recovery); with it the damaged bytes are skipped, every later valid
        record is yielded and kept, and appends continue after the last one.
        Side effects happen as the iterator is consumed; the log accepts
        appends once it is exhausted.
        """
        if from_position < 0:
            raise ValueError("from_position must not be negative")
        if self._failure is not None:
            # After a failed fsync the page cache may hold bytes the disk
            # lacks; re-reading them here could replay records that are gone.
            raise WalError("an earlier write or fsync failed; restart the process") from self._failure
        return self._recover(from_position, skip_damage, [resync_checksum_bytes_max])

    def survey(
        self, from_position: int, *, resync_checksum_bytes_max: int = RESYNC_CHECKSUM_BYTES_MAX,
        on_record: Callable[[Record], object] = lambda record: None,
    ) -> tuple[list[Damage], int]:
        """Every damage from from_position on, in log order, and the end of the
        last valid record (the log end recovery would find); reads only.
        ``on_record`` sees each valid record on the way (one pass, no replay)."""
        starts = list_segments(self._directory) if self._directory.is_dir() else []
        if not starts:
            return [], from_position
        walk = self._walk(starts, from_position, [resync_checksum_bytes_max])
        damages: list[Damage] = []
        while True:
            try:
                item = next(walk)
            except StopIteration as finished:
                return damages, finished.value
            if isinstance(item, Damage):
                damages.append(item)
            else:
                on_record(item)

    def _recover(self, from_position: int, skip_damage: bool, budget: list[int]) -> Iterator[Record]:
        self._close_fd()
        self._end = None
        starts = list_segments(self._directory)
        if not starts:
            # Every segment was deleted behind a checkpoint (or none was ever
            # written): the log continues at the checkpoint's position.
            self._start_new_segment([], from_position)
            return
        walk = self._walk(starts, from_position, budget)
        final: Damage | None = None
        while True:
            try:
                item = next(walk)
            except StopIteration as finished:
                end = finished.value
                break
            if isinstance(item, Record):
                yield item
                continue
            if not skip_damage and not item.torn_tail:
                if item.before_start:
                    raise WalError(f"records the checkpoint relies on are missing: {item.describe()}")
                walk.close()
                self._cut_at(starts, item.segment_start, item.position)
                return
            final = item if item.resumes_at is None else None
        self._finish(starts, end, final, from_position)

    def _cut_at(self, starts: list[int], segment_start: int, position: int) -> None:
        """Point-in-time end: truncate at position, delete every later segment."""
        kept = starts.index(segment_start) + 1
        _truncate_segment(self._directory, segment_start, position - segment_start, self._ops)
        # Truncate before deleting: a crash in between leaves a successor
        # whose name no longer matches, which the next recovery deletes.
        _delete_segments(self._directory, starts[kept:], self._ops)
        self._segments = starts[:kept]
        self._fd = self._ops.open(self._directory / segment_name(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self._attach_current(position)

    def _finish(self, starts: list[int], end: int, final: Damage | None, from_position: int) -> None:
        if final is not None and final.torn_tail:
            self._cut_at(starts, final.segment_start, final.position)
        elif final is not None:
            # Unreadable bytes (or missing ones) end the log: keep them as
            # evidence and continue in a fresh segment after them.
            last = starts[-1]
            after = max(last + (self._directory / segment_name(last)).stat().st_size, from_position)
            self._start_new_segment(starts, after)
        else:
            self._segments = starts
            self._fd = self._ops.open(self._directory / segment_name(starts[-1]), os.O_WRONLY | os.O_APPEND)
            self._attach_current(end)

    def _start_new_segment(self, starts: list[int], position: int) -> None:
        self._fd = _create_segment(self._directory, position, self._ops)
        self._segments = [*starts, position]
        self._attach_current(position)

    def _walk(self, starts: list[int], from_position: int, budget: list[int]) -> Generator[Record | Damage, None, int]:
        """Records and damages from from_position on, in log order (reads only);
        returns the end of the last valid record."""
        index = self._first_segment_index(starts, from_position)
        position = from_position
        while True:
            start = starts[index]
            file_end = start + (self._directory / segment_name(start)).stat().st_size
            if position > file_end:
                damage = self._damage(starts, index, file_end, file_end, budget, floor=position,
                                      what=f"the segment ends before log position {position}, which recovery starts from")
            else:
                stop, file_end = yield from self._replay_segment(start, position)
                last = index == len(starts) - 1
                if stop == file_end and (last or starts[index + 1] == stop):
                    if last:
                        return stop
                    index, position = index + 1, stop
                    continue
                damage = self._damage(starts, index, stop, file_end, budget, floor=stop, what=self._why_invalid(starts, index, stop, file_end))
            yield damage
            if damage.resumes_at is None:
                return damage.position
            position = damage.resumes_at
            index = bisect.bisect_right(starts, position) - 1

    def _damage(self, starts: list[int], index: int, stop: int, file_end: int, budget: list[int], *, floor: int, what: str) -> Damage:
        resumes_at = None
        if stop < file_end:
            resumes_at = self._search(starts[index], stop + 1, budget)
        for later in starts[index + 1 :]:
            if resumes_at is not None:
                break
            if later >= floor:  # a successor overlapping read positions is not trusted
                resumes_at = self._search(later, later, budget)
        if resumes_at is None and budget[0] < 0:
            what += "; the search for later valid records gave up (wal_resync_checksum_bytes_max)"
        torn = resumes_at is None and index == len(starts) - 1 and budget[0] >= 0 and floor == stop
        return Damage(starts[index], stop, what, resumes_at, torn, before_start=floor > stop)

    def _why_invalid(self, starts: list[int], index: int, stop: int, file_end: int) -> str:
        if stop == file_end:
            return f"the segment ends here but the next segment starts at log position {starts[index + 1]}"
        header = _read_at(self._directory / segment_name(starts[index]), stop - starts[index], HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return f"an incomplete record header of {len(header)} bytes"
        length, _, rtype = HEADER.unpack(header)
        if rtype == 0:
            return "a record of type 0 (zeroed or never-written bytes)"
        if length > RECORD_PAYLOAD_BYTES_MAX:
            return f"a record length of {length} bytes, over the maximum"
        if stop + HEADER_BYTES + length > file_end:
            return f"a record of {length} bytes that runs past the end of the segment"
        return "a record that fails its checksum"

    def _search(self, start: int, from_position: int, budget: list[int]) -> int | None:
        """Position of the first valid record at or after from_position in one
        segment that is followed by another valid record or the segment's end
        (so a lucky checksum match in random bytes is not taken for a record)."""
        data = _read_at(self._directory / segment_name(start), from_position - start, None)
        with memoryview(data) as view:
            for match in _CANDIDATE.finditer(data):
                offset = match.start()
                size = _measure_within(view, offset, budget)
                if size <= 0:
                    if budget[0] < 0:
                        return None
                    continue
                after = offset + size
                if after == len(view) or _measure_within(view, after, budget) > 0:
                    return from_position + offset
        return None

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

    def statistics(self) -> WalStatistics:
        return WalStatistics(
            segments=len(self._segments),
            end_position=self._end,
            bytes_appended=self._bytes_appended,
            appends=self._appends,
            rotations=self._rotations,
            syncs=self._syncs,
        )
