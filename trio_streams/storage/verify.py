"""``trio-streams verify DATA_DIR``: check every file of a data directory against its checksums.

Owns: a read-only scan of WAL segments (record crcs; where a scan stops and
whether valid records follow, by recovery's own ``SegmentedLog.survey``), checkpoints (header and crc) and
stream files (data blocks against ``.sum``, index entries against their own
crc and the data they cover), and the report of what it found — including
every valid WAL record the table cannot apply (by recovery's own rule,
``recovery.unappliable``), which is reported, never skipped silently.

Never: writes, truncates or locks anything, so it may run beside a live
server; files that grow while it reads are read up to the size they had,
files that vanish (a delete, a newer checkpoint) are noted, not damage.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import crc32c as _crc32c

from ..protocol.state import StreamTable
from . import blocksums
from .blocksums import BLOCK_BYTES, INDEX_ENTRY, SUM
from .checkpoint import decode_table
from .events import positioned
from .recovery import decoded, unappliable
from .snapshot import SnapshotCorrupt, decode_snapshot, list_snapshots, snapshot_name
from .wal import (
    HEADER_BYTES, Damage, Record, SegmentedLog, WalError, describe_position, list_segments, segment_name, segment_of,
)


Progress = Callable[[int], None]  # called with bytes just checked


@dataclasses.dataclass(slots=True)
class Finding:
    file: str
    status: str  # "ok", "torn tail", "damaged", "vanished"
    detail: str = ""

    @property
    def damaged(self) -> bool:
        return self.status == "damaged"


@dataclasses.dataclass(slots=True)
class StreamFinding:
    stream_id: int
    path: str | None
    length: int  # bytes checked
    damage: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)  # [start, end) positions
    note: str = ""

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


@dataclasses.dataclass(frozen=True, slots=True)
class Unapplied:
    """A valid WAL record (its checksum holds) that the table cannot apply: a log written wrong."""

    segment: str
    offset: int  # in the segment
    position: int  # log position
    stream_id: int | None  # None when the record cannot even be decoded
    why: str

    @property
    def where(self) -> str:
        return describe_position(self.position - self.offset, self.position)


@dataclasses.dataclass(slots=True)
class Report:
    wal: list[Finding] = dataclasses.field(default_factory=list)
    checkpoints: list[Finding] = dataclasses.field(default_factory=list)
    streams: list[StreamFinding] = dataclasses.field(default_factory=list)
    unapplied: list[Unapplied] = dataclasses.field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return any(f.damaged for f in (*self.wal, *self.checkpoints)) or any(s.damaged for s in self.streams)


def total_bytes(directory: Path) -> int:
    """What a full scan reads, for the progress bar."""
    total = 0
    for sub in ("wal", "checkpoints", "streams"):
        folder = directory / sub
        if folder.is_dir():
            for entry in os.scandir(folder):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
    return total


def load_state(directory: Path, report: Report, progress: Progress = lambda n: None) -> tuple[int, StreamTable, int]:
    """The newest valid checkpoint's position, the table with the WAL after it
    replayed, and the WAL's end (read-only; findings go to ``report``)."""
    position, table = _checkpoints(directory / "checkpoints", report, progress)
    return position, table, _wal(directory / "wal", position, table, report, progress)


def verify_directory(directory: Path, progress: Progress = lambda n: None) -> Report:
    report = Report()
    _, table, wal_end = load_state(directory, report, progress)
    streams = directory / "streams"
    ids = set(table.by_id) | _stream_ids(streams)
    for stream_id in sorted(ids):
        state = table.by_id.get(stream_id)
        finding = verify_stream(streams, stream_id, state.base if state else 0, state.tail if state else None, progress,
                                head=state.head if state else 0)
        finding.path = state.path if state else None
        if state is None:
            finding.note = "not in the log: deleted, or created after the scan"
        elif finding.note == "files missing" and _wal_grew(directory / "wal", wal_end):
            finding.damage.clear()
            finding.note = "vanished: deleted while verifying"
        report.streams.append(finding)
    return report


# -- checkpoints ---------------------------------------------------------------


def _checkpoints(folder: Path, report: Report, progress: Progress) -> tuple[int, StreamTable]:
    """Checks every checkpoint; returns the newest valid one's position and table."""
    newest: tuple[int, StreamTable] | None = None
    positions = list_snapshots(folder) if folder.is_dir() else []
    for position in reversed(positions):
        name = snapshot_name(position)
        try:
            raw = (folder / name).read_bytes()
        except FileNotFoundError:
            report.checkpoints.append(Finding(name, "vanished", "replaced by a newer checkpoint while verifying"))
            continue
        progress(len(raw))
        try:
            payload = decode_snapshot(raw, position)
            table = decode_table(payload)
        except (SnapshotCorrupt, ValueError, KeyError, TypeError) as exc:
            report.checkpoints.append(Finding(name, "damaged", str(exc)))
            continue
        report.checkpoints.append(Finding(name, "ok"))
        if newest is None:
            newest = (position, table)
    return newest if newest is not None else (0, StreamTable())


# -- WAL -----------------------------------------------------------------------


def _wal(folder: Path, from_position: int, table: StreamTable, report: Report, progress: Progress) -> int:
    """Surveys every segment with recovery's own rule (``SegmentedLog.survey``: a torn
    tail versus damage followed by valid records), replaying records from
    ``from_position`` into ``table``; returns the end of the last valid record."""
    starts = list_segments(folder) if folder.is_dir() else []
    if not starts:
        return from_position

    def on_record(record: Record) -> None:
        progress(HEADER_BYTES + len(record.payload))
        if record.position >= from_position:
            _replay(table, record, starts, report)

    try:
        damages, end = SegmentedLog.for_survey(folder).survey(starts[0], on_record=on_record)
    except FileNotFoundError as exc:  # a checkpoint deleted segments behind it meanwhile
        report.wal.append(Finding("wal/", "vanished", f"{exc.filename} was deleted while verifying; verify again"))
        return from_position
    except WalError as exc:
        report.wal.append(Finding("wal/", "damaged", str(exc)))
        return from_position
    for start in starts:
        report.wal += _segment_findings(folder, start, [d for d in damages if d.segment_start == start])
    if not starts[0] <= from_position <= end:
        report.wal.append(Finding("wal/", "damaged", f"records from the checkpoint's position {from_position} are missing"))
    return end


def _segment_findings(folder: Path, start: int, damages: list[Damage]) -> list[Finding]:
    name = segment_name(start)
    if not damages:
        try:
            return [Finding(name, "ok", f"{(folder / name).stat().st_size} bytes")]
        except FileNotFoundError:
            return [Finding(name, "vanished", "deleted after a checkpoint while verifying")]
    return [Finding(name, "torn tail" if d.torn_tail else "damaged", _explain(d)) for d in damages]


def _explain(damage: Damage) -> str:
    where = f"scan stops at position {damage.position} ({damage.what})"
    if damage.torn_tail:
        return f"{where}; nothing valid follows: an incomplete last write (recovery cuts it)"
    if damage.resumes_at is not None:
        return f"{where}; a valid record follows at position {damage.resumes_at}: damage, not a torn tail"
    return f"{where}; no valid record found after it, and it is not the end of the last segment"


def _replay(table: StreamTable, record: Record, starts: list[int], report: Report) -> None:
    """Applies one record, or reports why it cannot be applied (and leaves it out)."""
    event = decoded(record)
    if isinstance(event, str):
        _unapplied(report, starts, record, None, event)
    elif (why := unappliable(table, event)) is not None:
        _unapplied(report, starts, record, getattr(event, "stream_id", None), why)
    else:
        table.apply(positioned(table, event))
        table.removed.clear()


def _unapplied(report: Report, starts: list[int], record: Record, stream_id: int | None, why: str) -> None:
    start = segment_of(starts, record.position)
    report.unapplied.append(Unapplied(segment_name(start), record.position - start, record.position, stream_id, why))


def _wal_grew(folder: Path, scanned_end: int) -> bool:
    starts = list_segments(folder) if folder.is_dir() else []
    if not starts:
        return False
    try:
        return starts[-1] + (folder / segment_name(starts[-1])).stat().st_size > scanned_end
    except FileNotFoundError:
        return True


# -- stream files --------------------------------------------------------------


def _stream_ids(folder: Path) -> set[int]:
    ids = set()
    if folder.is_dir():
        for entry in os.scandir(folder):
            name, _, kind = entry.name.partition(".")
            if kind in ("dat", "idx", "sum"):
                try:
                    ids.add(int(name, 16))
                except ValueError:
                    pass
    return ids


def verify_stream(folder: Path, stream_id: int, base: int, tail: int | None, progress: Progress,
                  head: int = 0) -> StreamFinding:
    """Checks one stream's files up to its last index entry (and its durable ``tail`` when known).

    Whole blocks below the retained ``head`` are skipped: retention punched
    them out (they read as zeros), and nothing will ever read them.

    Reads the index first, then checksums, then data: the writer writes them
    in the opposite order, so everything an entry covers is already there.
    """
    name = f"{stream_id:016x}"
    finding = StreamFinding(stream_id, None, 0)
    try:
        index = (folder / f"{name}.idx").read_bytes()
        sums = (folder / f"{name}.sum").read_bytes()
        data_fd = os.open(folder / f"{name}.dat", os.O_RDONLY)
    except FileNotFoundError:
        if tail is not None and tail > base:
            finding.damage.append((base, tail, "stream files missing"))
            finding.note = "files missing"
        return finding
    progress(len(index) + len(sums))
    try:
        _check_stream(finding, data_fd, index, sums, base, tail, progress, head)
    finally:
        os.close(data_fd)
    return finding


def _check_stream(finding: StreamFinding, data_fd: int, index: bytes, sums: bytes, base: int,
                  tail: int | None, progress: Progress, head: int = 0) -> None:
    entries = _index_entries(finding, index, base)
    end = entries[-1].end if entries else base
    if tail is not None and end < tail:
        finding.damage.append((end, tail, "index ends before the durable tail"))
    crcs = [c for (c,) in SUM.iter_unpack(sums[: len(sums) - len(sums) % SUM.size])]
    length = end - base
    finding.length = length
    punched = blocksums.block_start(head - base) if head > base else 0
    pending = [e for e in entries if e.end - base > punched][::-1]  # pop() gives them in order
    for block in range(punched // BLOCK_BYTES, (length + BLOCK_BYTES - 1) // BLOCK_BYTES):
        at = block * BLOCK_BYTES
        raw = blocksums.pread_exact(data_fd, min(BLOCK_BYTES, length - at), at)
        progress(len(raw))
        if len(raw) < min(BLOCK_BYTES, length - at):
            finding.damage.append((base + at + len(raw), base + length, "data file is shorter than its index"))
            return
        _check_block(finding, block, raw, crcs, pending, base)


def _check_block(finding: StreamFinding, block: int, raw: bytes, crcs: list[int],
                 pending: list[blocksums.IndexEntry], base: int) -> None:
    """One block against its .sum entry (when full) and every index entry that ends in it."""
    at = block * BLOCK_BYTES
    bad = False
    crc, done = 0, 0
    while pending and pending[-1].end - base <= at + len(raw):
        entry = pending.pop()
        upto = entry.end - base - at
        if upto <= 0:
            continue
        crc = _crc32c.crc32c(memoryview(raw)[done:upto], value=crc)
        done = upto
        bad = bad or crc != entry.block_crc
    if len(raw) == BLOCK_BYTES:
        if block >= len(crcs):
            finding.damage.append((base + at, base + at + BLOCK_BYTES, "block checksum missing"))
            return
        bad = bad or _crc32c.crc32c(raw) != crcs[block]
    if bad:
        finding.damage.append((base + at, base + at + len(raw), "checksum mismatch"))


def _index_entries(finding: StreamFinding, index: bytes, base: int) -> list[blocksums.IndexEntry]:
    """The valid entries, in order; damaged or out-of-order ones are reported."""
    entries: list[blocksums.IndexEntry] = []
    previous, bad = base, []
    for at in range(0, len(index) - len(index) % INDEX_ENTRY.size, INDEX_ENTRY.size):
        entry = blocksums.unpack_entry(index, at)
        if entry is None or entry.end <= previous:
            bad.append(at // INDEX_ENTRY.size)
            continue
        if bad:  # the damaged entries lay between the previous valid one and this one
            finding.damage.append((previous, entry.end, f"index entries {bad[0]}..{bad[-1]} damaged"))
            bad = []
        entries.append(entry)
        previous = entry.end
    if bad:
        finding.damage.append((previous, previous, f"index entries {bad[0]}..{bad[-1]} damaged (after the last valid one)"))
    return entries
