"""Service: the storage engine and stream registry as one supervised unit.

Owns: the data directory (and its lock, so two servers never share one),
recovery at startup, and the task tree — the log writer task, the nursery
of stream actors, the expiry sweeper — plus their orderly shutdown:
actors first (they are idle once the HTTP server has drained), then the
log, which flushes and checkpoints before it returns.

A storage failure the log cannot recover from (a failed fsync) stops writes
at once; with ``storage_failure = "exit"`` the service then shuts down as
for SIGTERM and reports the failure, so the process exits non-zero and a
supervisor's restart replays the WAL.

Never: speaks HTTP.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import logging
import os
from functools import partial
from pathlib import Path

import trio

from .clock import SYSTEM_CLOCK, Clock
from .config import Settings
from .storage import lastaccess
from .storage.fileops import REAL, FileOps
from .storage.log import Log, LogObserver, StorageFailed
from .storage.recovery import RecoveryRefused, recover
from .protocol.state import Event, StreamState, StreamTable
from .protocol.subscriptions import SUBSCRIPTION_EVENTS
from .storage.store import Store
from .streams.facade import Streams
from .streams.registry import Registry
from .streams.view import DurableView
from .subscriptions import ports as subscription_ports
from .subscriptions.manager import SubscriptionManager
from .webhooks.keys import SigningKeys

log = logging.getLogger("trio_streams")

# Health statuses in which the server takes traffic (/healthz/ready is 200):
# "degraded" is a full disk (writes get 507 and retry; reads serve) or fenced
# damaged streams (every other stream serves). Recovering, failed (writes
# refused until a restart) and draining (shutting down) are not ready.
READY_STATUSES = ("ok", "degraded")


class DataDirectoryLocked(RuntimeError):
    """Another process holds the data directory's lock."""


def lock_data_directory(directory: Path) -> int:
    """Creates the directory if needed and takes its lock; returns the descriptor that holds it.

    flock, not a pid file: the kernel drops the lock with the process, so a
    crash never leaves a stale lock behind for the restart to trip over.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryLocked(f"data directory {directory} is in use by another trio-streams process") from None
    return fd


class Service:
    def __init__(self, settings: Settings, ops: FileOps = REAL, clock: Clock = SYSTEM_CLOCK,
                 observer: LogObserver | None = None) -> None:
        self.settings = settings
        # Told the log writer's measurements (fsync, batch sizes, checkpoints) for /metrics.
        self.observer = observer
        # Every mutating file call of this instance goes through it (tests inject faults).
        self.ops = ops
        # Every wall-clock and interval reading of the streams layer (tests pass a mock-driven one).
        self.clock = clock
        # What the HTTP layer uses, once ready; the rest is for this service and tests of the layer.
        self.streams: Streams | None = None
        self.subscriptions: SubscriptionManager | None = None
        self.registry: Registry | None = None
        self.view: DurableView | None = None
        self._store: Store | None = None
        self.failure: BaseException | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self._stop = trio.Event()
        self._lock_fd: int | None = None
        self._log: Log | None = None
        # Shutdown has begun (App.drain): no longer ready for new traffic.
        self.draining = False
        # The last recovery's duration and the WAL records it replayed (None until it ends).
        self.recovery_seconds: float | None = None
        self.recovery_replayed_events = 0

    def health(self) -> dict[str, object]:
        """/healthz detail: ``status`` (ok, degraded, recovering, failed), a reason
        when not ok, the ``storage`` section (state, since, last error) and the
        ``fenced`` streams (damaged at recovery, refused with 503)."""
        storage = self._log.health.as_dict() if self._log is not None else {"state": "starting"}
        fenced = self.streams.fenced() if self.streams is not None else []
        detail: dict[str, object] = {"status": "ok", "storage": storage, "fenced": fenced}
        if self.failure is not None:
            detail.update(status="failed", reason=str(self.failure))
        elif self._log is not None and self._log.failed is not None:
            detail.update(status="failed", reason=f"storage failed, writes refused: {storage['last_error']}")
        elif not self.ready.is_set():
            detail.update(status="recovering", reason="recovering the write-ahead log")
        elif storage["state"] != "ok":
            detail.update(status="degraded", reason=f"writes refused: {storage['state']}")
        elif fenced:
            detail.update(status="degraded", reason=f"{len(fenced)} damaged stream(s) fenced")
        detail.update(recovering=detail["status"] == "recovering", draining=self.draining,
                      ready=detail["status"] in READY_STATUSES and not self.draining)
        return detail

    def statistics(self) -> dict[str, float]:
        """Plain counters for /metrics: streams, store, and the log's (prefixed ``log_``), once ready."""
        if self.streams is None or self._store is None or self._log is None:
            return {}
        stats: dict[str, float] = {**self.streams.statistics(), **self._store.statistics()}
        stats.update({f"log_{name}": float(value) for name, value in dataclasses.asdict(self._log.statistics()).items()})
        return stats

    def webhook_keys(self) -> SigningKeys | None:
        """The running server's webhook signing keys, once loaded (POST /admin/webhook-key/rotate)."""
        ports = self.subscriptions.ports if self.subscriptions is not None else None
        return ports.keys if ports is not None and isinstance(ports.keys, SigningKeys) else None

    @property
    def log(self) -> Log | None:
        return self._log

    @property
    def store(self) -> Store | None:
        return self._store

    def stop(self) -> None:
        self._stop.set()

    def adopt_lock(self, fd: int) -> None:
        """Takes over a lock on the data directory taken before start-up (startup.py);
        without one, ``run`` takes it itself. Closed when the service finishes."""
        assert self._lock_fd is None, "the data directory is already locked by this service"
        self._lock_fd = fd

    async def run(self) -> None:
        """Recovers, serves until ``stop()``, then shuts down cleanly. Never raises."""
        try:
            await self._run()
        except (RecoveryRefused, DataDirectoryLocked) as exc:  # the message is the whole story; no traceback
            log.error("%s", exc)
            self.failure = exc
        except Exception as exc:  # surfaced through /healthz and the CLI's exit code
            log.exception("storage service failed")
            self.failure = exc
        else:
            if self._log is not None and self._log.failed is not None and self.failure is None:
                self.failure = StorageFailed(f"storage failed: {self._log.failed}")
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            log.info("storage stopped%s", "" if self.failure is None else f" after a failure: {self.failure}")
            self.finished.set()

    async def _run(self) -> None:
        directory = Path(self.settings.data_dir)
        if self._lock_fd is None:
            self._lock_fd = lock_data_directory(directory)
        store = Store(
            directory / "streams",
            open_files_max=self.settings.open_stream_files_max,
            hot_tail_bytes_max=self.settings.hot_tail_bytes_max,
            ops=self.ops,
            corrupt_ranges_logged_max=self.settings.data_corrupt_ranges_logged_max,
        )
        self._store = store
        recovered = await trio.to_thread.run_sync(recover, directory, store, self.settings, self.ops)
        self.recovery_seconds, self.recovery_replayed_events = recovered.seconds, recovered.replayed_events
        # The recovered table lives as long as the process: keep the cyclic
        # collector from walking it (a full collection over 1 M streams stalls
        # the event loop for most of a second; docs/storage.md, "Checkpoints").
        gc.freeze()
        last_access = await trio.to_thread.run_sync(
            lastaccess.take, directory, recovered.checkpoint_position, recovered.replayed_events, self.ops)
        wal_log = Log(self.settings, directory, recovered.wal, store, recovered.table, self.clock, self.observer)
        wal_log.on_failed = self._storage_failed
        self._log = wal_log
        try:
            async with trio.open_nursery() as log_nursery:
                log_nursery.start_soon(wal_log.run)
                await self._serve(wal_log, store, recovered.table, last_access)
                wal_log.close_intake()
            if wal_log.failed is None:
                await self._save_last_access(directory, recovered.wal.end_position)
        finally:
            await trio.to_thread.run_sync(partial(store.close_sync, sync=wal_log.failed is None))
            await trio.to_thread.run_sync(recovered.wal.close)

    async def _save_last_access(self, directory: Path, position: int) -> None:
        """A clean shutdown keeps the sliding-TTL clock (storage/lastaccess.py)."""
        assert self.registry is not None and self.view is not None
        view = self.view
        saved = {i: at for i, at in self.registry.lifetimes.last_access().items()
                 if (state := view.by_id(i)) is not None and state.expiry.ttl_s is not None}
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lastaccess.save, directory, position, saved, self.ops)
        except OSError as error:  # only the TTL clock is lost: the restart counts as an access
            log.error("saving last-access times failed: %s", error)

    async def _serve(self, wal_log: Log, store: Store, table: StreamTable, last_access: dict[int, float]) -> None:
        async with trio.open_nursery() as actors:
            self.view = DurableView(table, store)
            registry = Registry(self.settings, self.view, wal_log.submit, actors, self.clock, release=store.forget)
            wal_log.on_applied = registry.on_applied
            registry.lifetimes.restore(last_access)
            self.registry = registry
            self.streams = Streams(registry)
            manager = SubscriptionManager(self.settings, table, wal_log.submit, self.streams, self.clock,
                                          await self._subscription_ports())
            wal_log.on_applied = partial(_on_applied, registry, manager)
            self.subscriptions = manager
            actors.start_soon(manager.run)
            actors.start_soon(registry.sweep_expired_forever)
            actors.start_soon(registry.sweep_retention_forever)
            actors.start_soon(registry.fanout.run)
            self.ready.set()
            log.info("ready: %d streams in %s", self.view.count(), self.settings.data_dir)
            await self._stop.wait()
            log.info("shutting down: stopping stream actors, flushing the log")
            actors.cancel_scope.cancel()

    async def _subscription_ports(self) -> subscription_ports.Ports | None:
        """Webhook signing keys and the wake-token secret (files under data_dir)."""
        try:
            return await trio.to_thread.run_sync(subscription_ports.load_ports, self.settings, self.clock.wall)
        except ValueError as error:  # a damaged key file: the operator decides, nothing is regenerated
            raise RecoveryRefused(f"webhook keys: {error}") from None

    def _storage_failed(self, error: BaseException) -> None:
        if self.settings.storage_failure == "exit":
            log.error("storage failed: draining and exiting so that a restart replays the WAL")
            # Set now, not on exit: requests are refused while the actors stop.
            self.failure = StorageFailed(f"storage failed: {error}")
            self._stop.set()
        else:
            log.error("storage failed: serving reads only until restarted (storage_failure=read-only)")


def _on_applied(registry: Registry, manager: SubscriptionManager, state: StreamState | None, event: Event) -> None:
    """Stream events go to the registry's readers and to the subscriptions task;
    subscription events are answered by their own submitter."""
    if isinstance(event, SUBSCRIPTION_EVENTS):
        return
    registry.on_applied(state, event)
    manager.on_applied(state, event)
