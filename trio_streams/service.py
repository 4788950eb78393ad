"""Service: the storage engine and stream registry as one supervised unit.

Owns: the data directory (and its lock, so two servers never share one),
recovery at startup, and the task tree — the log writer task, the nursery
of stream actors, the expiry sweeper — plus their orderly shutdown:
actors first (they are idle once the HTTP server has drained), then the
log, which flushes and checkpoints before it returns.

Never: speaks HTTP.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import trio

from .config import Settings
from .storage.checkpoint import recover
from .storage.log import Log
from .protocol.state import StreamTable
from .storage.store import Store
from .streams.registry import Registry

log = logging.getLogger("trio_streams")


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry: Registry | None = None
        self.failure: BaseException | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self._stop = trio.Event()
        self._lock_fd: int | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Recovers, serves until ``stop()``, then shuts down cleanly. Never raises."""
        try:
            await self._run()
        except Exception as exc:  # surfaced through /healthz and the CLI's exit code
            log.exception("storage service failed")
            self.failure = exc
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self.finished.set()

    async def _run(self) -> None:
        directory = Path(self.settings.data_dir)
        self._lock_directory(directory)
        store = Store(
            directory / "streams",
            open_files_max=self.settings.open_stream_files_max,
            hot_tail_bytes_max=self.settings.hot_tail_bytes_max,
            corrupt_ranges_logged_max=self.settings.data_corrupt_ranges_logged_max,
        )
        recovered = await trio.to_thread.run_sync(recover, directory, store, self.settings.wal_segment_bytes_max)
        wal_log = Log(self.settings, directory, recovered.wal, store, recovered.table)
        try:
            async with trio.open_nursery() as log_nursery:
                log_nursery.start_soon(wal_log.run)
                await self._serve(wal_log, store, recovered.table)
                wal_log.close_intake()
        finally:
            await trio.to_thread.run_sync(store.close_sync)
            await trio.to_thread.run_sync(recovered.wal.close)

    async def _serve(self, wal_log: Log, store: Store, table: StreamTable) -> None:
        async with trio.open_nursery() as actors:
            registry = Registry(self.settings, table, store, wal_log, actors)
            wal_log.on_applied = registry.on_applied
            self.registry = registry
            actors.start_soon(registry.sweep_expired_forever)
            self.ready.set()
            log.info("ready: %d streams in %s", len(registry.table.by_id), self.settings.data_dir)
            await self._stop.wait()
            actors.cancel_scope.cancel()

    def _lock_directory(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"{directory} is in use by another trio-streams process") from None
        self._lock_fd = fd
