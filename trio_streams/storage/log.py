"""The group-commit log writer: the only task that writes the WAL.

Owns: turning batches of events from every stream actor into one WAL
write and (in ``always`` mode) one fsync, then applying them to the
StreamTable and data files in log order and waking each submitter.
Also owns checkpoints (they must be taken between batches, when the table
reflects exactly the log up to its end) and recovery at startup.

Never: decides whether an event is allowed (actors do, via protocol.rules)
and never lets a reader see an event before it is durable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from ..config import Settings
from ..protocol.state import Appended, Created, Deleted, Event, StreamState, StreamTable
from . import checkpoint
from .events import encode_event_parts
from .store import Store
from .wal import Buffer, SegmentedLog, encode_record_parts


def _tail_and_base(state: StreamState) -> tuple[int, int]:
    return state.tail, state.base


class StorageFailed(Exception):
    """The disk refused a write; nothing more can be acknowledged safely."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogStatistics:
    batches: int
    events: int
    syncs: int
    checkpoints: int
    queue_depth: int
    last_batch_events: int
    last_sync_s: float
    wal_end_position: int
    failed: bool


@dataclasses.dataclass(slots=True)
class _Submission:
    events: Sequence[Event]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: BaseException | None = None


class Log:
    def __init__(
        self,
        settings: Settings,
        directory: Path,
        wal: SegmentedLog,
        store: Store,
        table: StreamTable,
    ) -> None:
        self._settings = settings
        self._directory = directory
        self._wal = wal
        self._store = store
        self._table = table
        # Set by the registry: called for each event once it is durable and applied.
        self.on_applied: Callable[[StreamState | None, Event], None] = lambda state, event: None
        self._send, self._receive = trio.open_memory_channel[_Submission](settings.actor_queue_depth)
        self._failed: BaseException | None = None
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._checkpoint_position = wal.end_position
        self._checkpoint_time = time.monotonic()
        self._stats = dict(batches=0, events=0, syncs=0, checkpoints=0, last_batch_events=0)
        self._last_sync_s = 0.0

    # -- producers' side -------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> None:
        """Returns once ``events`` are durable (per the fsync mode) and applied, in order."""
        if self._failed is not None:
            raise StorageFailed(str(self._failed))
        submission = _Submission(events)
        await self._send.send(submission)
        await submission.done.wait()
        if submission.error is not None:
            raise StorageFailed(str(submission.error)) from submission.error

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            **self._stats,
            queue_depth=self._send.statistics().current_buffer_used,
            last_sync_s=self._last_sync_s,
            wal_end_position=self._wal.end_position,
            failed=self._failed is not None,
        )

    def close_intake(self) -> None:
        """No more submissions; ``run`` finishes what it has, flushes and returns."""
        self._send.close()

    # -- the writer task -------------------------------------------------

    async def run(self) -> None:
        async with self._receive:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    break
                if batch:
                    await self._commit(batch)
                await self._maybe_interval_sync()
                await self._maybe_checkpoint()
        with trio.CancelScope(shield=True):
            await self._final_flush()

    async def _next_batch(self) -> list[_Submission] | None:
        timeout = math.inf
        if self._settings.fsync == "interval" and self._unsynced:
            timeout = max(0.0, self._last_sync + self._settings.fsync_interval_ms / 1000 - time.monotonic())
        with trio.move_on_after(timeout):
            try:
                first = await self._receive.receive()
            except trio.EndOfChannel:
                return None
            batch = [first]
            events = len(first.events)
            while events < self._settings.actor_batch_max * 4:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                events += len(batch[-1].events)
            return batch
        return []

    async def _commit(self, batch: list[_Submission]) -> None:
        events = [e for s in batch for e in s.events]
        if self._failed is None:
            try:
                with trio.CancelScope(shield=True):  # a write already started must finish
                    await trio.to_thread.run_sync(self._write_sync, events)
            except OSError as exc:
                self._failed = exc
        for submission in batch:
            if self._failed is not None:
                submission.error = self._failed
            submission.done.set()
        if self._failed is None:
            self._apply(events)
            await self._remove_files()

    async def _remove_files(self) -> None:
        """Deletes the files of streams that left the table (their records are fsynced)."""
        removed, self._table.removed = self._table.removed, []
        if removed:
            def remove_all() -> None:
                for stream_id in removed:
                    self._store.remove_sync(stream_id)

            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_all)

    def _write_sync(self, events: list[Event]) -> None:
        """Worker thread: WAL bytes, data files, then fsync (``always``) — one call per batch."""
        # Parts, never joined: a large append's data is written from where it is.
        parts: list[Buffer] = []
        tails: dict[int, tuple[int, int]] = {}  # stream id → (tail, base) as of this batch
        for event in events:
            position = self._write_data_sync(event, tails)
            rtype, payload = encode_event_parts(event, position)
            parts += encode_record_parts(rtype, payload)
        self._wal.append_parts(parts)
        self._unsynced = True
        if self._settings.fsync == "always" or any(isinstance(e, Deleted) for e in events):
            # Files are only removed once their DELETE record is on disk.
            self._sync_wal_sync()

    def _write_data_sync(self, event: Event, tails: dict[int, tuple[int, int]]) -> int | None:
        """Writes an event's data into its stream file; returns the stream position an append goes to."""
        if isinstance(event, Appended):
            tail, base = tails.get(event.stream_id) or _tail_and_base(self._table.by_id[event.stream_id])
            end = tail + len(event.data)
            self._store.append_sync(event.stream_id, tail - base, event.data, end)
            tails[event.stream_id] = (end, base)
            return tail
        if isinstance(event, Created):
            base = event.fork.base if event.fork is not None else 0
            self._store.create_sync(event.stream_id)
            self._store.append_sync(event.stream_id, 0, event.data, base + len(event.data))
            tails[event.stream_id] = (base + len(event.data), base)
        return None

    def _sync_wal_sync(self) -> None:
        started = time.monotonic()
        self._wal.sync()
        self._last_sync_s = time.monotonic() - started
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._stats["syncs"] += 1

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            state = self._table.apply(event)
            if state is not None and not isinstance(event, Deleted):
                self._store.remember(event.stream_id, state.tail - len(event.data), event.data)
            self.on_applied(state, event)
        for stream_id in self._table.removed:
            self._store.forget(stream_id)
        self._stats["batches"] += 1
        self._stats["events"] += len(events)
        self._stats["last_batch_events"] = len(events)

    async def _maybe_interval_sync(self) -> None:
        if self._settings.fsync != "interval" or not self._unsynced or self._failed is not None:
            return
        if time.monotonic() - self._last_sync >= self._settings.fsync_interval_ms / 1000:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._sync_wal_sync)

    async def _maybe_checkpoint(self) -> None:
        if self._failed is not None:
            return
        grown = self._wal.end_position - self._checkpoint_position
        aged = time.monotonic() - self._checkpoint_time >= self._settings.checkpoint_interval_s
        if grown >= self._settings.checkpoint_wal_bytes or (grown > 0 and aged):
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Snapshot the table at the WAL's end and drop the segments it covers."""
        payload = checkpoint.encode_table(self._table)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._checkpoint_sync, payload)

    def _checkpoint_sync(self, payload: bytes) -> None:
        position = self._wal.end_position
        self._sync_wal_sync()
        self._store.sync_dirty_sync()
        previous = checkpoint.write(self._directory, position, payload)
        if previous is not None:  # the WAL from the previous checkpoint on is its fallback
            self._wal.delete_before(previous)
        self._checkpoint_position = position
        self._checkpoint_time = time.monotonic()
        self._stats["checkpoints"] += 1

    async def _final_flush(self) -> None:
        if self._failed is not None:
            return
        try:
            if self._wal.end_position != self._checkpoint_position:
                await self.checkpoint()
            else:
                await trio.to_thread.run_sync(self._sync_wal_sync)
        except OSError as exc:
            self._failed = exc
