"""Scheduler trips on the write path: a batch costs no task step it does not need.

Every append goes through its actor's submission and one log-writer batch;
a needless yield there is one more pass of the scheduler per batch (with
64 streams, per append), and one more step of latency for a lone writer.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Created
from trio_streams.storage.log import Log, StorageFailed
from trio_streams.storage.recovery import recover

from logrun import small_store


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.of: collections.Counter[trio.lowlevel.Task] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.of[task] += 1


def created(stream_id: int) -> Created:
    return Created(stream_id, f"/s{stream_id}", "text/plain", Expiry(None, None, None), 0.0, False, b"x")


@asynccontextmanager
async def idle_log(directory: Path) -> AsyncIterator[Log]:
    """A log writer not yet running, on a fresh directory."""
    settings = Settings(data_dir=str(directory), fsync="always")
    store = small_store(directory)
    recovered = recover(directory, store, settings)
    try:
        yield Log(settings, directory, recovered.wal, store, recovered.table)
    finally:
        store.close_sync()
        recovered.wal.close()


async def test_a_submission_with_room_in_the_queue_is_queued_in_the_submitters_first_step(tmp_path: Path) -> None:
    async with idle_log(tmp_path) as log:
        await _queued_in_first_step(log)


async def _queued_in_first_step(log: Log) -> None:
    steps, submitters = Steps(), []

    async def submit() -> None:
        submitters.append(trio.lowlevel.current_task())
        with contextlib.suppress(StorageFailed):  # the writer, cancelled, refuses it
            await log.submit([created(1)])

    trio.lowlevel.add_instrument(steps)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()  # no writer runs yet: the submission stays queued
        trio.lowlevel.remove_instrument(steps)
        assert log.statistics().queue_depth == 1
        assert steps.of[submitters[0]] == 1  # then it waits for the writer; no yield before
        nursery.start_soon(log.run)  # which answers it: the submitter waits for that, cancelled or not
        nursery.cancel_scope.cancel()


async def test_a_cancelled_submitter_submits_nothing(tmp_path: Path) -> None:
    async with idle_log(tmp_path) as log:
        with trio.CancelScope() as scope:
            scope.cancel()
            await log.submit([created(1)])
        assert scope.cancelled_caught and log.statistics().queue_depth == 0


async def test_a_batch_costs_the_writer_two_steps_take_it_and_answer_it(tmp_path: Path) -> None:
    """Woken by the submission, it writes in a worker thread (its one wait), then answers and
    applies. (Yields before the thread call — for the WAL lock, for trio's thread
    limiter — would each be one more.)"""
    async with idle_log(tmp_path) as log:
        await _batch_steps(log)


async def _batch_steps(log: Log) -> None:
    steps, writers = Steps(), []

    async def run_writer() -> None:
        writers.append(trio.lowlevel.current_task())
        await log.run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for a batch
        trio.lowlevel.add_instrument(steps)
        await log.submit([created(1)])
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.remove_instrument(steps)
        assert steps.of[writers[0]] == 2
        nursery.cancel_scope.cancel()


async def test_a_submitter_cancelled_while_it_waits_still_gets_the_outcome(tmp_path: Path) -> None:
    """Once queued, the events may become durable: their submitter's answer must say so
    (an actor's reply must match the log), so its wait outlives a cancellation."""
    async with idle_log(tmp_path) as log:
        answered = trio.Event()
        scopes: list[trio.CancelScope] = []

        async def submit() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await log.submit([created(1)])
                answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            await trio.testing.wait_all_tasks_blocked()  # queued; no writer runs yet
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not answered.is_set() and log.statistics().queue_depth == 1
            nursery.start_soon(log.run)
            with trio.fail_after(30):
                await answered.wait()
            assert log.statistics().events == 1
            nursery.cancel_scope.cancel()
