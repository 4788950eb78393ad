"""Start-up recovery from a data directory that may be damaged.

Owns: choosing where to start (the newest checkpoint whose WAL and stream
files hold everything, else an older one with full replay from it), the
recovery modes (``Settings.wal_recovery_mode``: refuse, fence, cut), and
working out which streams a damage touched, so that in the fence mode only
those are fenced off and every other stream serves.

Recovery runs in two phases. Deciding reads only: it chooses the start,
applies the mode to the damage found, and replays every record into the
table (``_Replayer``), which is where a record that does not continue its
stream is found. Only then, the decision to start made, are files changed:
stream files cut back to the checkpoint, the replayed records' data
rewritten (``_Replayer.rewrite``), the torn tail cut, orphans removed.

Never: runs in the Trio thread, or changes a file (or creates a directory)
before the decision to start has been made: every refusal leaves the
directory exactly as it found it, for the operator to copy away and try
another mode on.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from ..config import Settings
from ..protocol.state import Appended, Created, Deleted, Event, StreamState, StreamTable, Trimmed, event_end
from ..protocol.subscriptions import SUBSCRIPTION_EVENTS, SubscriptionEvent, unappliable_subscription
from .blocksums import DataCorrupt, last_entry
from .checkpoint import Recovered, decode_table
from .events import DELETED, decode_event, positioned
from .fileops import REAL, FileOps
from .snapshot import SnapshotCorrupt, decode_snapshot, list_snapshots, snapshot_name
from .store import Store, WrittenChecks
from .wal import Damage, Record, SegmentedLog, WalError, describe_position, list_segments, segment_of

log = logging.getLogger("trio_streams.recovery")


class RecoveryRefused(Exception):
    """Starting would lose or misrepresent acknowledged data; the message says where and why."""


@dataclasses.dataclass(slots=True)
class _Start:
    position: int
    table: StreamTable
    damages: list[Damage]
    # Streams whose data file is shorter than the checkpoint says: id → why.
    short: dict[int, str]
    # Data file sizes (-1: missing) of the checkpoint's streams whose data file
    # is not at its checkpointed length, as the crash left them.
    resized: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def gaps(self) -> list[Damage]:
        return [d for d in self.damages if not d.torn_tail]


def recover(directory: Path, store: Store, settings: Settings, ops: FileOps = REAL) -> Recovered:
    started = time.monotonic()
    log.info("recovery started in %s", directory)
    mode, budget = settings.wal_recovery_mode, settings.wal_resync_checksum_bytes_max
    reader = SegmentedLog.for_survey(directory / "wal")  # reads only, creates nothing
    start = _choose_start(directory, reader, store, budget)
    gaps = _real_gaps(start, store)
    _refuse_unless_allowed(mode, start, gaps)
    fence = mode == "fence_damaged_streams"
    # A WAL ending before a checkpoint that holds everything is skipped over in every mode.
    skip = fence or bool(start.gaps and not gaps)
    with WrittenChecks(store, store.open_files_max) as written:  # closes its descriptors on a refusal too
        progress = _Progress(settings.recovery_progress_interval_s, started)
        replayer = _plan(start, gaps, fence, skip, reader, store, budget, written, progress)
        # Decided: everything below changes files.
        _log_cuts(start, gaps, fence)
        wal = SegmentedLog.open(directory / "wal", settings.wal_segment_bytes_max, ops)
        replayer.rewrite(store, start.resized, wal.recover(start.position, skip_damage=skip, resync_checksum_bytes_max=budget))
    store.remove_orphans_sync(set(start.table.by_id) | set(start.table.fenced_ids))
    _report(start.table)
    seconds = time.monotonic() - started
    log.info("recovered %d streams: checkpoint at %d, %d events replayed in %.3fs",
             len(start.table.by_id), start.position, replayer.replayed, seconds)
    return Recovered(start.table, wal, start.position, replayer.replayed, seconds)


def _plan(start: _Start, gaps: list[Damage], fence: bool, skip: bool, reader: SegmentedLog,
          store: Store, budget: int, written: WrittenChecks, progress: _Progress) -> _Replayer:
    """Replays the WAL into the table without writing anything: every refusal left
    (a record that does not continue its stream, or cannot be read) comes from here."""
    if gaps and not skip and gaps[0].before_start:
        raise RecoveryRefused(
            f"refusing to start (wal_recovery_mode=point_in_time): records the checkpoint at log position "
            f"{start.position} relies on are missing, and stream files show writes after it: {gaps[0].describe()}. "
            "Restore the files from a backup, or start with wal_recovery_mode=fence_damaged_streams")
    evidence = _evidence(store) if gaps else {}  # as the crash left the files
    for stream_id, why in start.short.items():
        start.table.by_id[stream_id].damaged = why
    starts = list_segments(reader.directory) if reader.directory.is_dir() else []
    replayer = _Replayer(start.table, starts, [d.position for d in gaps] if fence else [], fence, written, progress)
    replay: Callable[[Record], None] = replayer.replay
    if gaps and not skip:  # point_in_time: the log is cut at the first damage
        replay = partial(_replay_before, gaps[0].position, replayer.replay)
    reader.survey(start.position, resync_checksum_bytes_max=budget, on_record=replay)
    if fence and gaps:
        replayer.fence_unverified(evidence)
    _fence_forks_of_damaged(start.table)
    start.table.removed.clear()  # their files are orphans, removed after the rewrite
    return replayer


def _replay_before(end: int, replay: Callable[[Record], None], record: Record) -> None:
    if record.position < end:
        replay(record)


def _log_cuts(start: _Start, gaps: list[Damage], fence: bool) -> None:
    for torn in (d for d in start.damages if d.torn_tail):
        # Indistinguishable from the end of the log losing whole records to damage: say so.
        log.warning("cutting a torn tail (an incomplete last write, or damage at the end of the log) at %s", torn.describe())
    if gaps and not fence:  # point_in_time: say exactly what is dropped
        log.error("WAL damaged: cutting the log at log position %d, dropping every later record: %s",
                  gaps[0].position, "; ".join(d.describe() for d in gaps))


# ---------------------------------------------------------------- choosing a start


def _choose_start(directory: Path, wal: SegmentedLog, store: Store, budget: int) -> _Start:
    """The newest checkpoint (or none: full replay) from which the WAL and the
    stream files rebuild everything; else the newest one that can start at all."""
    folder = directory / "checkpoints"
    positions = list_snapshots(folder) if folder.is_dir() else []
    # Every checkpoint ever written covered the log up to its name: recovery
    # must reach at least the newest name, valid or not.
    required_end = positions[-1] if positions else 0
    has_segments = wal.directory.is_dir() and bool(list_segments(wal.directory))
    reasons: list[str] = []
    fallback: _Start | None = None
    for position in [*reversed(positions), None]:
        candidate = _candidate(folder, wal, store, position, budget, required_end, has_segments, reasons)
        if candidate is None:
            continue
        if not candidate.gaps and not candidate.short:
            if reasons:
                log.error("recovering from %s instead: %s", _start_name(position), "; ".join(reasons))
            return candidate
        fallback = fallback or candidate
    if fallback is None:
        raise RecoveryRefused("no checkpoint and WAL together hold the acknowledged history: " + "; ".join(reasons))
    return fallback


def _start_name(position: int | None) -> str:
    return "an empty table with full WAL replay" if position is None else f"checkpoint {snapshot_name(position)}"


def _candidate(folder: Path, wal: SegmentedLog, store: Store, position: int | None, budget: int,
               required_end: int, has_segments: bool, reasons: list[str]) -> _Start | None:
    table = StreamTable()
    if position is not None:
        try:
            table = decode_table(decode_snapshot((folder / snapshot_name(position)).read_bytes(), position))
        except (OSError, SnapshotCorrupt, ValueError, KeyError, TypeError) as exc:
            reasons.append(f"checkpoint {snapshot_name(position)} is damaged ({exc})")
            return None
    start = position or 0
    if not has_segments:
        if start < required_end:
            reasons.append(f"{_start_name(position)} needs WAL records from log position {start}, and there is no WAL")
            return None
        if position is None and _stream_files_exist(store):
            reasons.append("stream files exist but there is neither a checkpoint nor a WAL to describe them")
            return None
        resized = _resized(store, table)
        return _Start(start, table, [], _short_files(store, table, set(), resized), resized)
    deleted: set[int] = set()
    try:
        damages, end = wal.survey(start, resync_checksum_bytes_max=budget, on_record=partial(_note_deleted, deleted))
    except WalError as exc:
        reasons.append(f"{_start_name(position)} cannot be used: {exc}")
        return None
    if end < required_end and not any(d.before_start for d in damages):
        reasons.append(f"{_start_name(position)}: the WAL ends at log position {end}, "
                       f"before the newest checkpoint's {required_end}")
        return None
    resized = _resized(store, table)
    return _Start(start, table, damages, _short_files(store, table, deleted, resized), resized)


def _note_deleted(deleted: set[int], record: Record) -> None:
    if record.rtype == DELETED:
        deleted.add(decode_event(record.rtype, record.payload).stream_id)


def _resized(store: Store, table: StreamTable) -> dict[int, int]:
    """The data file sizes (-1: missing) that differ from the checkpointed lengths:
    one ``stat`` per stream, and only these are looked at again."""
    resized = {}
    for state in table.by_id.values():
        try:
            size = os.stat(store.file(state.stream_id)).st_size
        except FileNotFoundError:
            size = -1
        if size != state.tail - state.base:
            resized[state.stream_id] = size
    return resized


def _short_files(store: Store, table: StreamTable, deleted: set[int], resized: dict[int, int]) -> dict[int, str]:
    """Streams whose data file is shorter than the checkpoint says. A stream the
    WAL deletes later is not among them: its files went with that delete."""
    short = {}
    for stream_id, size in resized.items():
        state = table.by_id[stream_id]
        length = state.tail - state.base
        if stream_id not in deleted and size < length:
            have = "is missing" if size < 0 else f"has {size} bytes"
            short[state.stream_id] = (f"its data file {store.path(state.stream_id).name} {have}; the checkpoint "
                                      f"needs {length} (stream positions {state.base + max(size, 0)}..{state.tail} are lost)")
    return short


def _stream_files_exist(store: Store) -> bool:
    with os.scandir(store.directory) as entries:
        return any(entry.name.endswith(".dat") for entry in entries)


# ---------------------------------------------------------------- modes


def _real_gaps(start: _Start, store: Store) -> list[Damage]:
    """The gaps that may hide acknowledged records.

    A WAL that ends before the checkpoint it is read from, with nothing after,
    lost only records the checkpoint already holds — unless a stream file
    shows writes past its checkpointed tail (records after the checkpoint).
    """
    gaps = start.gaps
    benign = [d for d in gaps if d.before_start and d.resumes_at is None]
    if benign and len(benign) == len(gaps) and not _written_past(store, start.table):
        log.error("WAL damaged but nothing lost: %s; the checkpoint at log position %d holds every record "
                  "before it and no stream file shows a later write, so the log continues at %d",
                  benign[0].describe(), start.position, start.position)
        return []
    return gaps


def _written_past(store: Store, table: StreamTable) -> bool:
    evidence = _evidence(store)
    return any(_unverified_reason(state.tail, state.base, evidence.get(state.stream_id)) for state in table.by_id.values()) \
        or any(stream_id not in table.by_id for stream_id in evidence)


def _refuse_unless_allowed(mode: str, start: _Start, gaps: list[Damage]) -> None:
    problems = [d.describe() for d in gaps]
    problems += [f"stream {start.table.by_id[i].path!r} (id {i}): {why}" for i, why in start.short.items()]
    if mode == "absolute_consistency":
        problems += [f"torn tail at {d.describe()}" for d in start.damages if d.torn_tail]
    refuse = mode in ("tolerate_corrupted_tail", "absolute_consistency") or (mode == "point_in_time" and start.short)
    if problems and refuse:
        raise RecoveryRefused(
            f"refusing to start (wal_recovery_mode={mode}): acknowledged data would be lost or served wrong. "
            + " | ".join(problems)
            + ". Restore the files from a backup, or start with wal_recovery_mode=fence_damaged_streams "
            "to serve every undamaged stream"
        )


# ---------------------------------------------------------------- replay with gaps


class _Progress:
    """An INFO line every ``interval_s`` while records are replayed, so a long
    recovery shows it is moving (worker thread: ``time.monotonic``, not the clock)."""

    # Records between two looks at the time (a look costs about as much as a record).
    RECORDS_PER_LOOK = 4096

    def __init__(self, interval_s: float, started: float) -> None:
        self._interval_s = interval_s
        self._started = started
        self._next = started + interval_s

    def tick(self, replayed: int, position: int) -> None:
        if replayed % self.RECORDS_PER_LOOK or self._interval_s <= 0:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval_s
            log.info("recovery: %d records replayed, at log position %d, %.1f s so far",
                     replayed, position, now - self._started)


class _Replayer:
    """Replays records into the table, checking that each append's position continues
    its stream exactly where its recovered history ends. After a gap a mismatch is what
    the gap lost: the stream is fenced off. Anywhere else a record the table cannot
    apply is a log that was written wrong: fenced in the fence mode, else refused.

    It writes nothing: ``rewrite`` later puts the data of exactly the records it
    applied into the stream files, so that deciding never changes a file."""

    def __init__(self, table: StreamTable, starts: list[int], gaps: list[int], fence: bool,
                 written: WrittenChecks, progress: _Progress | None = None) -> None:
        self._table = table
        self._progress = progress
        self._starts = starts
        self._gaps = gaps
        self._fence = fence
        # Stream id → how many gaps lay before its last verified record.
        self._checked: dict[int, int] = {}
        self._seen_deleted: set[int] = set()
        # Stream id → log position from which its records are not applied (fenced there);
        # 0 for streams fenced before replay, whose files are left as they are.
        self._unapplied_from = {s.stream_id: 0 for s in table.by_id.values() if s.damaged is not None}
        # Tails as checkpointed, of the checkpointed streams replay moves; streams it creates.
        self._checkpointed: dict[int, int] = {}
        self._created: set[int] = set()
        # Log position → where an append written before records kept ``pos`` was placed.
        self._legacy: dict[int, int] = {}
        # Whether each replayed stream's files hold its replayed data already.
        self._written = written
        self.replayed = 0

    def replay(self, record: Record) -> None:
        event = self._decoded(record)
        gap = bisect.bisect_left(self._gaps, record.position)
        self.replayed += 1
        if self._progress is not None:
            self._progress.tick(self.replayed, record.position)
        if isinstance(event, SUBSCRIPTION_EVENTS):
            self._subscription_event(event, record)
        elif isinstance(event, Created):
            self._created_event(event, gap, record)
        elif event.stream_id not in self._table.by_id:
            self._unknown(event, record)
        elif isinstance(event, Appended):
            self._appended(event, gap, record)
        elif isinstance(event, Trimmed):
            self._table.apply(event)
        else:
            self._seen_deleted.add(event.stream_id)
            self._table.apply(event)

    def _subscription_event(self, event: SubscriptionEvent, record: Record) -> None:
        """Subscription state has no files to fence: a change to a subscription whose
        creation a WAL gap lost is left out (logged); anywhere else it is a bug."""
        why = unappliable_subscription(self._table.subscriptions, event)
        if why is None:
            self._table.apply(event)
            return
        if not self._fence and not self._gaps:
            raise RecoveryRefused(f"refusing to start: the record at {self._where(record)} {why}")
        log.error("left out: the record at %s %s", self._where(record), why)

    def _decoded(self, record: Record) -> Event:
        event = decoded(record)
        if isinstance(event, str):
            raise RecoveryRefused(f"refusing to start: the record at {self._where(record)} {event}; "
                                  "restore the files from a backup")
        return event

    def _where(self, record: Record) -> str:
        return describe_position(segment_of(self._starts, record.position), record.position)

    def _created_event(self, event: Created, gap: int, record: Record) -> None:
        why = unappliable(self._table, event)
        if why is not None and not self._fence:
            self._wrong(record, event, why, None)
        old = self._table.by_path.get(event.path)
        if old is not None:  # a create at a taken path: the old stream's Deleted was in a gap
            self._seen_deleted.add(old.stream_id)
            self._table.apply(Deleted(old.stream_id))
        if unappliable(self._table, event) is not None:
            self._table.fenced_ids[event.stream_id] = "created on a stream whose history was lost in WAL damage"
            self._table.next_stream_id = max(self._table.next_stream_id, event.stream_id + 1)
            return
        self._table.apply(event)
        self._created.add(event.stream_id)
        self._checked[event.stream_id] = gap
        self._written.start_created(event.stream_id)
        self._written.add(event.stream_id, 0, event.data, event_end(event))

    def _unknown(self, event: Appended | Deleted | Trimmed, record: Record) -> None:
        if isinstance(event, (Deleted, Trimmed)):
            return  # deleting or trimming what is not there loses nothing
        if not self._fence:
            self._wrong(record, event, unappliable(self._table, event) or "", None)
        self._table.next_stream_id = max(self._table.next_stream_id, event.stream_id + 1)
        if event.stream_id not in self._seen_deleted:
            self._table.fenced_ids.setdefault(
                event.stream_id, f"its record at log position {record.position} follows WAL damage that held its creation")

    def _appended(self, event: Appended, gap: int, record: Record) -> None:
        state = self._table.by_id[event.stream_id]
        if state.damaged is not None:
            return
        if gap > self._checked.get(event.stream_id, 0):
            self._checked[event.stream_id] = gap
            if event.position != state.tail:
                where = "an unknown stream position" if event.position is None else f"stream position {event.position}"
                state.damaged = (f"its first record after the WAL damage at log position {self._gaps[gap - 1]} "
                                 f"was written at {where}, but its recovered history ends at {state.tail}")
                self._unapplied_from[state.stream_id] = record.position
                return
        why = unappliable(self._table, event)
        if why is not None:
            self._wrong(record, event, why, state)
            return
        self._checkpointed.setdefault(state.stream_id, state.tail)
        placed = positioned(self._table, event)  # an old record without a position goes at the tail
        if event.position is None:
            self._legacy[record.position] = state.tail
        if not self._written.started(state.stream_id):
            self._written.start(state.stream_id, state.tail - state.base, state.tail)
        self._written.add(state.stream_id, state.tail - state.base, placed.data, event_end(placed))
        self._table.apply(placed)

    def _wrong(self, record: Record, event: Event, why: str, state: StreamState | None) -> None:
        """A valid record the table cannot apply, with no damage before it."""
        what = f"its record at {self._where(record)} {why}"
        if not self._fence:
            name = f"stream id {event.stream_id}" if state is None else f"stream {state.path!r} (id {state.stream_id})"
            raise RecoveryRefused(f"refusing to start: {name}: {what}. "
                                  "Start with wal_recovery_mode=fence_damaged_streams to serve every other stream")
        assert state is not None, "the fence mode fences unknown streams by id"
        state.damaged = what
        self._unapplied_from[state.stream_id] = record.position

    def rewrite(self, store: Store, resized: dict[int, int], records: Iterator[Record]) -> None:
        """Cuts the stream files back to the checkpoint, then writes the data of every
        record replay applied, in log order, as the running server wrote it.

        A data file already at its checkpointed length (not in ``resized``:
        the sizes the crash left that differ) had nothing written past the checkpoint, or had it all cut
        (data files are extended first and cut last), so its index and
        checksums are exact too: it is left alone, which keeps restart time
        independent of the data stored (docs/storage.md, "Recovery"). So are
        the files of a stream that hold exactly what this would write
        (``WrittenChecks``), which keeps a restart after a process crash from
        cutting and rewriting everything written since the checkpoint.
        """
        held = self._written.held(lambda stream_id: stream_id in self._table.by_id and stream_id not in self._unapplied_from)
        for stream_id in held:
            store.adopt_sync(stream_id)
        for stream_id in resized.keys() - held - self._created:
            state = self._table.by_id.get(stream_id)
            if state is not None and self._unapplied_from.get(stream_id) != 0:
                tail = self._checkpointed.get(stream_id, state.tail)
                store.truncate_sync(stream_id, tail - state.base, tail)
        for record in records:
            event = decode_event(record.rtype, record.payload)
            if isinstance(event, (Deleted, Trimmed, *SUBSCRIPTION_EVENTS)):
                continue
            owner = self._table.by_id.get(event.stream_id)
            if owner is None or owner.stream_id in held or \
                    record.position >= self._unapplied_from.get(owner.stream_id, record.position + 1):
                continue  # deleted since, fenced, never applied, or on disk already
            if event.position is None:
                event = dataclasses.replace(event, position=self._legacy.pop(record.position))
            store.write_event_sync(event, owner.base)

    def fence_unverified(self, evidence: dict[int, tuple[int, int | None] | None]) -> None:
        """Streams with no record after the last gap: fenced unless their files
        show that nothing was written to them beyond what was recovered."""
        for state in self._table.by_id.values():
            if state.damaged is None and self._checked.get(state.stream_id, 0) < len(self._gaps):
                why = _unverified_reason(state.tail, state.base, evidence.get(state.stream_id, None))
                if why:
                    state.damaged = f"{why}, and WAL damage at log position {self._gaps[-1]} may hold its later records"
        for stream_id in evidence:
            known = stream_id in self._table.by_id or stream_id in self._seen_deleted or stream_id in self._table.fenced_ids
            if not known:
                self._table.fenced_ids[stream_id] = "its files exist but its creation was in damaged WAL"
                self._table.next_stream_id = max(self._table.next_stream_id, stream_id + 1)


def _unverified_reason(tail: int, base: int, files: tuple[int, int | None] | None) -> str:
    if files is None:
        return "its data file is missing"
    size, last_boundary = files
    if last_boundary is None:
        return "the last entry of its index is damaged, so where its writes end is unknown"
    if size > tail - base or last_boundary > tail:
        return f"its files hold writes up to stream position {max(base + size, last_boundary)}, past its recovered tail {tail}"
    return ""


def _evidence(store: Store) -> dict[int, tuple[int, int | None] | None]:
    """Per stream file: data bytes and last append boundary, as the crash left them."""
    found: dict[int, tuple[int, int | None] | None] = {}
    with os.scandir(store.directory) as entries:
        for entry in entries:
            name, _, kind = entry.name.partition(".")
            if kind != "dat":
                continue
            try:
                stream_id = int(name, 16)
            except ValueError:
                continue
            found[stream_id] = (entry.stat().st_size, _last_boundary(store, stream_id))
    return found


def _last_boundary(store: Store, stream_id: int) -> int | None:
    """The end of the last append in a stream's index (0: none); None when that entry is damaged."""
    try:
        entry = last_entry(store.path(stream_id, ".idx"), stream_id)
    except DataCorrupt:
        return None
    return 0 if entry is None else entry.end


def decoded(record: Record) -> Event | str:
    """The record's event, or why it cannot be decoded (its checksum holds, so a bug wrote it)."""
    try:
        return decode_event(record.rtype, record.payload)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error) as exc:
        return f"has a valid checksum but cannot be decoded ({type(exc).__name__}: {exc})"


def unappliable(table: StreamTable, event: Event) -> str | None:
    """Why ``table.apply`` must not take ``event`` as the table stands (None: it may).
    Said of the event's record: "its record at <where> <why>"."""
    if isinstance(event, SUBSCRIPTION_EVENTS):
        return unappliable_subscription(table.subscriptions, event)
    if isinstance(event, Created):
        return _uncreatable(table, event)
    state = table.by_id.get(event.stream_id)
    if state is None:
        verb = "appends to" if isinstance(event, Appended) else "trims" if isinstance(event, Trimmed) else "deletes"
        return f"{verb} stream id {event.stream_id}, which does not exist"
    if isinstance(event, (Deleted, Trimmed)):
        return None
    if state.soft_deleted or state.closed:
        return f"appends to the stream after it was {'deleted' if state.soft_deleted else 'closed'}"
    if event.position is not None and event.position != state.tail:
        kind = "a gap" if event.position > state.tail else "an overlap"
        return (f"was written at stream position {event.position}, but its history before it ends "
                f"at {state.tail} ({kind} in the log's positions)")
    return None


def _uncreatable(table: StreamTable, event: Created) -> str | None:
    taken = table.by_path.get(event.path)
    if taken is not None:
        return f"creates {event.path!r}, but {event.path!r} is taken by stream id {taken.stream_id}"
    if event.stream_id < table.next_stream_id:
        return f"creates stream id {event.stream_id}, but ids below {table.next_stream_id} are used already"
    if event.fork is not None and event.fork.source_id not in table.by_id:
        return f"forks stream id {event.fork.source_id}, which does not exist"
    return None


# ---------------------------------------------------------------- after replay


def _fence_forks_of_damaged(table: StreamTable) -> None:
    """A fork reads its source below its base: a damaged source damages its forks."""
    for state in table.by_id.values():
        source = state
        while source.fork is not None and state.damaged is None:
            source = table.by_id[source.fork.source_id]
            if source.damaged is not None:
                state.damaged = f"it is a fork of {source.path!r}, which is damaged"


def _report(table: StreamTable) -> None:
    for state in table.by_id.values():
        if state.damaged is not None:
            log.error("stream %r (id %d) is fenced off: %s", state.path, state.stream_id, state.damaged)
    for stream_id, why in table.fenced_ids.items():
        log.error("stream id %d (path unknown) is fenced off: %s", stream_id, why)
