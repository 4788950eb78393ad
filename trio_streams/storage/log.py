"""The group-commit log writer: the only task that writes the WAL.

Owns: turning batches of events from every stream actor into one WAL
write and (in ``always`` mode) one fsync, writing each event's data into
its stream file at the event's position, then waking each submitter and
applying the events to the StreamTable in log order. Also owns checkpoints
(they must be taken between batches, when the table reflects exactly the
log up to its end). Recovery at start-up is recovery.py's.

Order within a batch: check that every event continues its stream (before
anything is written: a wrong position is never made durable), write,
wake, apply. Waking first means a batch that is durable is acknowledged
even if applying it fails (the writer then stops, and a restart replays
it). It cannot expose a stale table: settling a submission only schedules the
submitter, and nothing between the wake and the end of ``_apply`` is a
checkpoint, so no submitter runs — and no actor decides its next batch —
before the table holds the events. Keep it that way: an ``await`` there
would let an actor decide against the durable view without its own events.

Faults (docs/storage.md, "Storage faults"): a full disk fails only the
batch it hit (507), after the WAL and stream files are cut back to the
durable state, and the next batch simply tries again; a failed checkpoint
is retried later. Anything else — a failed fsync, a write that cannot be
undone, a bug — ends the writer: every pending and future submission is
refused at once and the owner is told (``on_failed``).

Never: decides whether an event is allowed (actors do, via protocol.rules)
and never lets a reader see an event before it is durable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from ..clock import SYSTEM_CLOCK, Clock
from ..config import EVENT_DATA_BYTES_MAX, Settings
from ..protocol.errors import ProtocolError
from ..protocol.headers import is_json
from ..protocol.state import (
    Appended, Created, Deleted, Event, StreamState, StreamTable, Trimmed, check_batch, event_start,
)
from ..quick import send_soon, taken
from . import checkpoint
from .events import encode_event_parts
from .fileops import SyncFailed, is_disk_full
from .store import Store
from .wal import Buffer, SegmentedLog, encode_record_parts

log = logging.getLogger("trio_streams.storage")


class StorageFailed(Exception):
    """The disk refused a write; nothing more can be acknowledged safely."""

    def protocol_error(self) -> ProtocolError:
        return ProtocolError(503, "STORAGE_FAILED", f"storage unavailable: {self}")


class DiskFull(StorageFailed):
    """The disk is full: this batch was refused and undone; a later one may succeed."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def protocol_error(self) -> ProtocolError:
        return ProtocolError(507, "INSUFFICIENT_STORAGE", f"the server's disk is full: {self}",
                             (("retry-after", str(self.retry_after_s)),))


class RecordTooLarge(StorageFailed):
    """One event would not fit a WAL record; refused before it reaches the writer."""

    def protocol_error(self) -> ProtocolError:
        return ProtocolError(413, "PAYLOAD_TOO_LARGE", str(self))


@dataclasses.dataclass(slots=True)
class StorageHealth:
    """What /healthz and /metrics say about the disk: ``ok``, ``disk_full`` or ``failed``."""

    since: float  # UNIX seconds (the log's clock) the current state began
    state: str = "ok"
    last_error: str | None = None
    disk_full_episodes: int = 0
    refused_batches: int = 0
    checkpoint_failures: int = 0

    def enter(self, state: str, error: BaseException, now: float) -> bool:
        """Records the error; True if this starts a new episode of ``state``."""
        self.last_error = f"{type(error).__name__}: {error}"
        if self.state == state:
            return False
        self.state, self.since = state, now
        return True

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class LogObserver(Protocol):
    """Where the writer reports what it measures (http/metrics.py turns it into
    histograms; storage knows no metrics library, http/ imports no storage).
    ``fsync`` is called from a worker thread, the others on the event loop."""

    def fsync(self, seconds: float) -> None: ...

    def batch(self, events: int) -> None: ...

    def checkpoint(self, seconds: float) -> None: ...


class _Unobserved:
    def fsync(self, seconds: float) -> None:
        pass

    def batch(self, events: int) -> None:
        pass

    def checkpoint(self, seconds: float) -> None:
        pass


@dataclasses.dataclass(frozen=True, slots=True)
class LogStatistics:
    batches: int
    events: int
    syncs: int
    checkpoints: int
    # Append events written (a close-only append counts) and the messages that
    # appends and creates carried: one per non-empty body, one per line of a JSON
    # stream's body.
    appends: int
    messages: int
    queue_depth: int
    last_batch_events: int
    last_sync_s: float
    wal_end_position: int
    # Bytes of WAL on disk: from the oldest segment kept to the end.
    wal_bytes: int
    # Wall-clock UNIX seconds the last checkpoint was written; 0 before the first.
    last_checkpoint_at: float
    failed: bool
    checkpoint_failures: int
    disk_full_batches: int
    # Retention: heads moved (Trimmed events applied) and the disk space their holes freed.
    trims: int = 0
    trim_bytes_reclaimed: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointTaken:
    """A checkpoint asked for with ``Log.checkpoint_now``, durable on disk."""

    position: int  # the log position it covers: checkpoints/checkpoint-<position>.snap
    duration_s: float  # from its start (between batches) until its snapshot was durable


@dataclasses.dataclass(slots=True)
class _CheckpointRequest:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    taken: CheckpointTaken | None = None
    error: BaseException | None = None

    def settle(self, taken: CheckpointTaken | None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.taken, self.error = taken, error
            self.done.set()


@dataclasses.dataclass(slots=True)
class _Submission:
    events: Sequence[Event]
    settled: bool = False
    error: BaseException | None = None
    waiter: trio.lowlevel.Task | None = None

    def settle(self, error: BaseException | None = None) -> None:
        if not self.settled:
            self.settled, self.error = True, error
            if self.waiter is not None:
                trio.lowlevel.reschedule(self.waiter)

    async def wait(self) -> None:
        """Until settled, even if cancelled meanwhile (the cancellation then comes at
        the waiter's next checkpoint): an answer must match what became durable. A
        shielded cancel scope would do the same at several times the cost, per batch."""
        if self.settled:
            await trio.lowlevel.checkpoint()
            return
        self.waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


class Log:
    def __init__(
        self,
        settings: Settings,
        directory: Path,
        wal: SegmentedLog,
        store: Store,
        table: StreamTable,
        clock: Clock = SYSTEM_CLOCK,
        observer: LogObserver | None = None,
    ) -> None:
        self._settings = settings
        self._observer: LogObserver = observer or _Unobserved()
        # Intervals (fsync, checkpoints, retries) on its monotonic reading, which
        # is trio's: read on the event loop only, never in a worker thread.
        self._clock = clock
        self._directory = directory
        self._wal = wal
        self._store = store
        self._table = table
        # Set by the registry: called for each event once it is durable and applied.
        self.on_applied: Callable[[StreamState | None, Event], None] = lambda state, event: None
        # Set by the service: called once if the writer stops for good.
        self.on_failed: Callable[[BaseException], None] = lambda error: None
        self.health = StorageHealth(since=clock.wall())
        self._in_flight: list[_Submission] = []
        self._checkpoint_retry_at = -math.inf
        self._send, self._receive = trio.open_memory_channel[_Submission](settings.log_queue_depth)
        self._failed: BaseException | None = None
        self._unsynced = False
        # When the interval sync last ran. Other syncs (checkpoints, deletes) do
        # not move it: the next interval sync then only comes earlier, never later.
        self._last_sync = clock.monotonic()
        self._checkpoint_position = wal.end_position
        self._checkpoint_time = clock.monotonic()
        self._checkpoint_started = self._checkpoint_time
        # The checkpoint being written in the background (its cancel scope), if any.
        self._checkpointing: trio.CancelScope | None = None
        # Held around every worker-thread call that touches the WAL: a background
        # checkpoint deletes segments while the writer may be appending.
        self._wal_lock = trio.Lock()
        self._stats = dict(batches=0, events=0, syncs=0, checkpoints=0, appends=0, messages=0, last_batch_events=0)
        self._last_sync_s = 0.0
        # On-demand checkpoints (ops/backup.py, POST /admin/checkpoint): requests not
        # yet begun, and the writer's idle wait, which a request cuts short.
        self._checkpoint_requests: list[_CheckpointRequest] = []
        self._idle: trio.CancelScope | None = None
        # While a backup copies stream files, files of deleted streams are kept
        # (their ids wait here) and removed once the last hold ends.
        self._removal_holds = 0
        self._stopped = False
        self._held_removals: list[int] = []
        self._last_checkpoint_at = 0.0
        # Streams whose trimmed head still needs its hole punched: at start every trimmed
        # stream (a crash may have come between a Trimmed record and its punch, and
        # replay rewrites data below heads), then each one a batch trims.
        self._unpunched: list[int] = [s.stream_id for s in table.by_id.values() if s.head > s.base]
        table.trimmed.clear()  # recovery's replay moved them: not this run's trims
        self._trim_stats = dict(trims=0, trim_bytes_reclaimed=0)

    # -- producers' side -------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> None:
        """Returns once ``events`` are durable (per the fsync mode) and applied, in order.

        Cancelled before they are queued, it submits nothing; once queued, it waits
        for their outcome whatever happens (see ``_Submission.wait``)."""
        if self._failed is not None:
            raise StorageFailed(str(self._failed))
        # config.py holds the body limit to this at start-up, but JSON framing can grow a body.
        if any(len(e.data) > EVENT_DATA_BYTES_MAX for e in events if isinstance(e, (Appended, Created))):
            raise RecordTooLarge(f"a stored append may hold at most {EVENT_DATA_BYTES_MAX} bytes")
        submission = _Submission(events)
        try:
            # Cancelled before, it submits nothing; beyond log_queue_depth it waits (backpressure).
            await send_soon(self._send, submission)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StorageFailed(str(self._failed or "the log is closed")) from None
        await submission.wait()
        if isinstance(submission.error, StorageFailed):
            raise submission.error
        if submission.error is not None:
            raise StorageFailed(str(submission.error)) from submission.error

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            **self._stats,
            queue_depth=self._send.statistics().current_buffer_used,
            last_sync_s=self._last_sync_s,
            wal_end_position=self._wal.end_position,
            wal_bytes=self._wal.end_position - next(iter(self._wal.segment_starts), self._wal.end_position),
            last_checkpoint_at=self._last_checkpoint_at,
            failed=self._failed is not None,
            checkpoint_failures=self.health.checkpoint_failures,
            disk_full_batches=self.health.refused_batches,
            **self._trim_stats,
        )

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def close_intake(self) -> None:
        """No more submissions; ``run`` finishes what it has, flushes and returns."""
        self._send.close()

    async def checkpoint_now(self) -> CheckpointTaken:
        """Asks for a checkpoint begun after this call and returns once it is durable.

        The writer takes it between batches, like its own; one already being
        written began before the request, so a new one follows it."""
        if self._failed is not None or self._stopped:
            raise StorageFailed(str(self._failed or "the log writer stopped"))
        request = _CheckpointRequest()
        self._checkpoint_requests.append(request)
        self._wake()
        await request.done.wait()
        if request.error is not None:
            raise StorageFailed(f"checkpoint failed: {request.error}") from request.error
        assert request.taken is not None
        return request.taken

    def hold_removals(self) -> None:
        """Keeps the files of streams deleted from now on until ``release_removals``."""
        self._removal_holds += 1

    def release_removals(self) -> None:
        self._removal_holds -= 1
        assert self._removal_holds >= 0
        if not self._removal_holds and (self._held_removals or self._unpunched):
            self._wake()  # the writer removes them and punches (it owns the store's descriptors)

    def _wake(self) -> None:
        if self._idle is not None:
            self._idle.cancel()

    # -- the writer task -------------------------------------------------

    async def run(self) -> None:
        """Writes until the intake closes, then flushes. Never raises: a failure
        settles every submission, in flight, queued or future, with an error."""
        async with self._receive:
            try:
                async with trio.open_nursery() as nursery:
                    await self._write_until_closed(nursery)
                    self._abandon_checkpoint()
                with trio.CancelScope(shield=True):
                    await self._final_flush()
            except Exception as error:
                self._fail(_single(error))
            finally:
                # Cancelled (the service is torn down): submitters wait shielded, so
                # whatever is still queued must be answered or they wait forever.
                self._stopped = True
                self._refuse_queued(StorageFailed("the log writer stopped"))
                self._refuse_checkpoint_requests(StorageFailed("the log writer stopped"))

    async def _write_until_closed(self, nursery: trio.Nursery) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            if batch:
                await self._commit(batch)
            await self._remove_files()
            await self._punch_trimmed()
            await self._maybe_interval_sync()
            await self._maybe_checkpoint(nursery)

    def _fail(self, error: BaseException) -> None:
        log.error("storage failed; refusing every write until a restart replays the WAL: %s: %s",
                  type(error).__name__, error, exc_info=error)
        self._failed = error
        self.health.enter("failed", error, self._clock.wall())
        refusal = StorageFailed(f"{type(error).__name__}: {error}")
        self._refuse_queued(refusal)
        self._refuse_checkpoint_requests(refusal)
        self.on_failed(error)

    def _refuse_checkpoint_requests(self, refusal: StorageFailed) -> None:
        requests, self._checkpoint_requests = self._checkpoint_requests, []
        for request in requests:
            request.settle(None, refusal)

    def _refuse_queued(self, refusal: StorageFailed) -> None:
        for submission in self._in_flight:
            _settle(submission, refusal)
        while True:
            try:
                _settle(self._receive.receive_nowait(), refusal)
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        # Submitters blocked on a full channel now get BrokenResourceError.
        self._receive.close()

    async def _next_batch(self) -> list[_Submission] | None:
        timeout = math.inf
        if self._settings.fsync == "interval" and self._unsynced:
            timeout = max(0.0, self._last_sync + self._settings.fsync_interval_ms / 1000 - self._clock.monotonic())
        with trio.move_on_after(timeout) as self._idle:
            if self._pending_work():
                return []  # asked for while the writer was busy: serve it before waiting
            try:
                first = await self._receive.receive()
            except trio.EndOfChannel:
                return None
            batch = [first]
            events = len(first.events)
            while events < self._settings.log_batch_events_max:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                events += len(batch[-1].events)
            return batch
        return []

    def _pending_work(self) -> bool:
        """A checkpoint request it can begin, or held files it may now remove. (A request
        made while a checkpoint is being written waits for that one's end, which wakes
        the writer again: returning at once then would spin without yielding.)"""
        return (bool(self._checkpoint_requests) and self._checkpointing is None) or \
            (bool(self._held_removals or self._unpunched) and not self._removal_holds)

    async def _commit(self, batch: list[_Submission]) -> None:
        events = [e for s in batch for e in s.events]
        self._in_flight = batch  # settled by _fail if this raises
        bases = check_batch(self._table, events)
        try:
            with trio.CancelScope(shield=True):  # a write already started must finish
                async with taken(self._wal_lock):  # a background checkpoint may hold it
                    appends, messages = await trio.to_thread.run_sync(self._write_sync, events, bases,
                                                                      limiter=_UNLIMITED)
        except OSError as error:
            if not is_disk_full(error) or self._wal.failed:
                raise
            await self._refuse_batch(batch, events, error)
            self._in_flight = []
            return
        self._in_flight = []
        self._stats["appends"] += appends
        self._stats["messages"] += messages
        self._resumed()
        for submission in batch:  # durable: acknowledged whatever follows (module docstring)
            submission.settle()
        self._apply(events)  # no checkpoint before it ends: no woken submitter runs before

    async def _refuse_batch(self, batch: list[_Submission], events: list[Event], error: OSError) -> None:
        """The disk is full: the WAL cut itself back; cut the stream files back too
        (they may hold this batch's bytes past the durable tails) and refuse the batch."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._undo_data_sync, events)
        if self.health.enter("disk_full", error, self._clock.wall()):
            self.health.disk_full_episodes += 1
            log.error("disk full: refusing writes with 507 until space is available (%s)", error)
        self.health.refused_batches += 1
        refusal = DiskFull(str(error), self._settings.disk_full_retry_after_s)
        for submission in batch:
            _settle(submission, refusal)

    def _undo_data_sync(self, events: list[Event]) -> None:
        for stream_id in {e.stream_id for e in events if isinstance(e, (Appended, Created))}:
            state = self._table.by_id.get(stream_id)
            if state is None:  # created by the refused batch
                self._store.remove_sync(stream_id)
            else:
                self._store.truncate_sync(stream_id, state.tail - state.base, state.tail)

    def _resumed(self) -> None:
        if self.health.state == "disk_full":
            log.info("disk space available again: writes resumed after %.1f s", self._clock.wall() - self.health.since)
            self.health.state, self.health.since = "ok", self._clock.wall()

    async def _remove_files(self) -> None:
        """Deletes the files of streams that left the table (their records are fsynced),
        unless a backup holds them (``hold_removals``)."""
        removed, self._table.removed = self._table.removed, []
        if self._removal_holds:
            self._held_removals += removed
            return
        removed, self._held_removals = self._held_removals + removed, []
        if removed:
            def remove_all() -> None:
                for stream_id in removed:
                    self._store.remove_sync(stream_id)

            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_all)
            except OSError as error:
                # The DELETE records are durable; leftover files are orphans that
                # the next recovery removes. Nothing reads them meanwhile.
                log.error("removing files of %d deleted streams failed: %s", len(removed), error)

    async def _punch_trimmed(self) -> None:
        """Frees the disk space below the heads retention moved (their records are fsynced),
        unless a backup holds it: a backup copies data as of its checkpoint, trimmed later."""
        if self._removal_holds or not self._unpunched:
            return
        pending, self._unpunched = dict.fromkeys(self._unpunched), []
        trims = [(s.stream_id, s.path, s.base, s.head) for i in pending if (s := self._table.by_id.get(i)) is not None]

        def punch_all() -> list[int]:
            return [self._store.punch_sync(stream_id, base, head) for stream_id, _, base, head in trims]

        try:
            with trio.CancelScope(shield=True):
                freed = await trio.to_thread.run_sync(punch_all)
        except OSError as error:
            # The Trimmed records are durable; the space comes back at the next start.
            log.error("freeing the trimmed data of %d streams failed: %s", len(trims), error)
            return
        for (stream_id, path, _, head), reclaimed in zip(trims, freed):
            self._trim_stats["trim_bytes_reclaimed"] += reclaimed
            log.debug("retention: %d bytes of disk freed below offset %d of stream %r (id %x)",
                      reclaimed, head, path, stream_id)

    def _write_sync(self, events: list[Event], bases: dict[int, int]) -> tuple[int, int]:
        """Worker thread: data files, WAL bytes, then fsync (``always``) — one call per batch.
        Returns the appends and messages written (counted here: a large JSON body's
        lines take a while to count).

        ``bases``: where each written stream's file starts (``check_batch``).
        Data goes into stream files before the WAL record: recovery after WAL
        damage trusts a file that ends exactly at a stream's recovered tail.
        """
        # Parts, never joined: a large append's data is written from where it is.
        parts: list[Buffer] = []
        for event in events:
            if isinstance(event, (Created, Appended)):
                self._store.write_event_sync(event, bases[event.stream_id])
            parts += encode_record_parts(*encode_event_parts(event))
        self._wal.append_parts(parts)
        self._unsynced = True
        if self._settings.fsync == "always" or any(isinstance(e, (Deleted, Trimmed)) for e in events):
            # Files are only removed, and holes punched, once their record is on disk.
            self._sync_wal_sync()
        return self._count_messages_sync(events)

    def _count_messages_sync(self, events: list[Event]) -> tuple[int, int]:
        """Appends in ``events`` and the messages their bodies carry. The table is
        unchanged meanwhile: only the writer task applies, after this returns."""
        json_ids = {e.stream_id for e in events if isinstance(e, Created) and is_json(e.content_type)}
        appends = messages = 0
        for event in events:
            if not isinstance(event, (Created, Appended)):
                continue
            appends += isinstance(event, Appended)
            if not event.data:
                continue
            state = self._table.by_id.get(event.stream_id)
            json_mode = event.stream_id in json_ids or (state is not None and state.json_mode)
            messages += _count_lines(event.data) if json_mode else 1
        return appends, messages

    def _sync_wal_sync(self) -> None:
        started = time.perf_counter()  # a measurement, in a worker thread: not the clock
        self._wal.sync()
        self._last_sync_s = time.perf_counter() - started
        self._observer.fsync(self._last_sync_s)
        self._unsynced = False
        self._stats["syncs"] += 1

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            state = self._table.apply(event)
            if state is not None and isinstance(event, (Created, Appended)):
                self._store.remember(event.stream_id, event_start(event), event.data)
            self.on_applied(state, event)
        if self._table.trimmed:
            self._note_trims()
        for stream_id in self._table.removed:
            self._store.forget(stream_id)
        self._stats["batches"] += 1
        self._stats["events"] += len(events)
        self._stats["last_batch_events"] = len(events)
        self._observer.batch(len(events))

    def _note_trims(self) -> None:
        """One log line per trim the batch applied; their holes are punched after it."""
        self._trim_stats["trims"] += len(self._table.trimmed)
        for stream_id in self._table.trimmed:
            state = self._table.by_id.get(stream_id)
            if state is not None:  # else deleted later in the same batch
                log.info("retention: stream %r (id %x) trimmed to offset %d, %d bytes retained",
                         state.path, stream_id, state.head, state.tail - state.head)
        self._unpunched += self._table.trimmed
        self._table.trimmed.clear()

    async def _maybe_interval_sync(self) -> None:
        if self._settings.fsync != "interval" or not self._unsynced or self._failed is not None:
            return
        if self._clock.monotonic() - self._last_sync >= self._settings.fsync_interval_ms / 1000:
            with trio.CancelScope(shield=True):
                async with self._wal_lock:
                    await trio.to_thread.run_sync(self._sync_wal_sync)
            self._last_sync = self._clock.monotonic()

    async def _maybe_checkpoint(self, nursery: trio.Nursery) -> None:
        if self._checkpointing is not None:
            return
        requests, self._checkpoint_requests = self._checkpoint_requests, []
        if not requests and not self._checkpoint_due():
            return
        started = self._clock.monotonic()
        try:
            begun = await self._begin_checkpoint()
        except BaseException as error:
            for request in requests:
                request.settle(None, error)
            if not isinstance(error, OSError):
                raise
            self._checkpoint_failed(error)
            return
        self._checkpointing = trio.CancelScope()
        nursery.start_soon(self._checkpoint_in_background, self._checkpointing, requests, started, *begun)

    def _checkpoint_due(self) -> bool:
        if self._clock.monotonic() < self._checkpoint_retry_at:
            return False
        grown = self._wal.end_position - self._checkpoint_position
        aged = self._clock.monotonic() - self._checkpoint_time >= self._settings.checkpoint_interval_s
        return grown >= self._settings.checkpoint_wal_bytes or (grown > 0 and aged)

    async def _checkpoint_in_background(self, scope: trio.CancelScope, requests: list[_CheckpointRequest],
                                        started: float, position: int, snapshot: checkpoint.TableSnapshot) -> None:
        try:
            with scope:
                await self._finish_checkpoint(position, snapshot)
            if not scope.cancelled_caught:
                taken = CheckpointTaken(position, self._clock.monotonic() - started)
                for request in requests:
                    request.settle(taken)
        except OSError as error:
            for request in requests:
                request.settle(None, error)
            self._checkpoint_failed(error)
        finally:
            for request in requests:  # abandoned at shutdown, or the writer failed
                request.settle(None, StorageFailed("the checkpoint was abandoned"))
            self._checkpointing = None
            if self._checkpoint_requests:
                self._wake()  # asked for while this one was being written

    def _abandon_checkpoint(self) -> None:
        """At shutdown: the final checkpoint covers more; the abandoned one's temp
        file is pruned by it, and the previous checkpoint stays valid meanwhile."""
        if self._checkpointing is not None:
            self._checkpointing.cancel()

    def _checkpoint_failed(self, error: OSError) -> None:
        """A checkpoint that could not be written changes nothing: the previous one
        and the WAL still describe everything. A failed sync, though, is final."""
        if isinstance(error, SyncFailed) or self._wal.failed:
            raise error
        self.health.checkpoint_failures += 1
        self.health.last_error = f"checkpoint: {type(error).__name__}: {error}"
        self._checkpoint_retry_at = self._clock.monotonic() + self._settings.checkpoint_retry_interval_s
        log.error("checkpoint failed, the previous one and the WAL stay in use; retrying in %g s: %s",
                  self._settings.checkpoint_retry_interval_s, error)

    async def checkpoint(self) -> None:
        """Snapshot the table at the WAL's end and drop the segments it covers."""
        await self._finish_checkpoint(*await self._begin_checkpoint())

    async def _begin_checkpoint(self) -> tuple[int, checkpoint.TableSnapshot]:
        """Between batches, where the table is exactly the log up to its end P:
        make everything up to P durable and fix the snapshot's contents at P.
        The rest (``_finish_checkpoint``) may run while later batches commit."""
        position = self._wal.end_position
        self._checkpoint_started = self._clock.monotonic()
        with trio.CancelScope(shield=True):
            async with self._wal_lock:
                await trio.to_thread.run_sync(self._sync_for_checkpoint_sync)
        # Nothing changed the table during that await: only this task applies events.
        assert self._wal.end_position == position
        return position, checkpoint.TableSnapshot(self._table, slice_streams=self._settings.checkpoint_slice_streams)

    def _sync_for_checkpoint_sync(self) -> None:
        """The WAL up to P and every stream file written before P: a checkpoint
        at P is the only copy of what its stream files hold once the WAL before
        it is deleted. Files written after this are synced by the next one."""
        self._sync_wal_sync()
        self._store.sync_dirty_sync()

    async def _finish_checkpoint(self, position: int, snapshot: checkpoint.TableSnapshot) -> None:
        """Encodes the snapshot slice by slice on the event loop (each slice is a
        few milliseconds of work, then other tasks run) and writes it in pieces
        from a worker thread; once it is durable, drops the WAL it covers."""
        streams = len(self._table.by_id)  # as fixed in the snapshot: nothing applied since
        try:
            previous, written = await self._write_snapshot(position, snapshot)
        finally:
            snapshot.release()
        if previous is not None:  # the WAL from the previous checkpoint on is its fallback
            with trio.CancelScope(shield=True):
                async with self._wal_lock:
                    await trio.to_thread.run_sync(self._wal.delete_before, previous)
        self._checkpoint_position = position
        self._checkpoint_time = self._clock.monotonic()
        self._last_checkpoint_at = self._clock.wall()
        self._stats["checkpoints"] += 1
        seconds = self._checkpoint_time - self._checkpoint_started
        self._observer.checkpoint(seconds)
        log.info("checkpoint written at log position %d: %d streams, %d bytes, %.3f s",
                 position, streams, written, seconds)

    async def _write_snapshot(self, position: int, snapshot: checkpoint.TableSnapshot) -> tuple[int | None, int]:
        """Streams the snapshot to its file in pieces of about ``checkpoint_write_bytes``;
        returns the previous checkpoint's position (kept as the fallback) and the bytes written."""
        writer, previous = await trio.to_thread.run_sync(checkpoint.open_writer, self._directory, position, self._store.ops)
        try:
            pending: list[bytes] = []
            pending_bytes = written = 0
            for piece in snapshot.pieces():
                pending.append(piece)
                pending_bytes += len(piece)
                written += len(piece)
                if pending_bytes >= self._settings.checkpoint_write_bytes:
                    await trio.to_thread.run_sync(writer.write, b"".join(pending))
                    pending, pending_bytes = [], 0
                else:
                    await trio.lowlevel.checkpoint()  # let the loop serve others between slices
            await trio.to_thread.run_sync(writer.write, b"".join(pending))
            with trio.CancelScope(shield=True):  # once durable, the rename must be too
                await trio.to_thread.run_sync(partial(writer.commit, prune_before=previous))
        finally:
            writer.abandon()
        return previous, written

    async def _final_flush(self) -> None:
        if self._wal.end_position != self._checkpoint_position:
            try:
                await self.checkpoint()
                return
            except OSError as error:
                self._checkpoint_failed(error)  # the WAL, synced below, is enough to restart
        await trio.to_thread.run_sync(self._sync_wal_sync)


# Lines are counted this many bytes at a time: a large body is a memoryview, not bytes.
_COUNT_SLICE_BYTES = 1024 * 1024


def _count_lines(data: Buffer) -> int:
    """Stored JSON is one message per line (protocol/jsonmode.py)."""
    if isinstance(data, bytes):
        return data.count(b"\n")
    view = memoryview(data)
    return sum(bytes(view[i:i + _COUNT_SLICE_BYTES]).count(b"\n") for i in range(0, len(view), _COUNT_SLICE_BYTES))


class _Unlimited:
    """A thread limiter that never waits. The writer makes one batch's worker-thread
    call at a time; trio's default limiter would cost each batch a task step."""

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        pass

    def release_on_behalf_of(self, borrower: object) -> None:
        pass


_UNLIMITED: Final = _Unlimited()


def _single(error: Exception) -> Exception:
    """The one error inside the groups a nursery wraps it in."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _settle(submission: _Submission, error: BaseException) -> None:
    submission.settle(error)
