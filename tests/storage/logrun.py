"""A log writer on a real data directory, for storage tests: recovered, run, then crashed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from trio_streams.config import Settings
from trio_streams.protocol.state import StreamTable
from trio_streams.storage.log import Log
from trio_streams.storage.recovery import recover
from trio_streams.storage.store import Store


def small_store(directory: Path) -> Store:
    return Store(directory / "streams", open_files_max=8, hot_tail_bytes_max=1024, corrupt_ranges_logged_max=10)


@asynccontextmanager
async def running_log(directory: Path, **overrides: object) -> AsyncIterator[tuple[Log, StreamTable]]:
    """The log writer over what recovery found; leaving it is a crash (no final
    checkpoint): the WAL is what the next recovery replays."""
    settings = Settings(data_dir=str(directory), fsync="always").replace(**overrides)
    store = small_store(directory)
    recovered = recover(directory, store, settings)
    log = Log(settings, directory, recovered.wal, store, recovered.table)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            yield log, recovered.table
            nursery.cancel_scope.cancel()
    finally:
        store.close_sync()
        recovered.wal.close()
