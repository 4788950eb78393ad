"""What the admin endpoints ask of a running server: a checkpoint now, a backup now.

Owns: turning the log writer's on-demand checkpoint and removal hold into
the two operations, and their failures into ProtocolErrors (the HTTP layer
only speaks those). The backup's contents are backup.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from ..config import Settings
from ..protocol.errors import ProtocolError
from ..service import Service
from ..storage.log import CheckpointTaken, Log, StorageFailed
from ..storage.snapshot import snapshot_name
from . import archive, backup


def _serving_log(service: Service) -> Log:
    if service.failure is not None or service.log is None or not service.ready.is_set():
        raise ProtocolError(503, "NOT_READY", "the server is not serving its log", (("retry-after", "1"),))
    return service.log


async def _checkpoint(log: Log) -> CheckpointTaken:
    try:
        return await log.checkpoint_now()
    except StorageFailed as error:
        raise ProtocolError(503, "CHECKPOINT_FAILED", str(error), (("retry-after", "1"),)) from None


async def checkpoint(service: Service) -> dict[str, object]:
    """Takes a checkpoint and says where it is, once it is durable."""
    taken = await _checkpoint(_serving_log(service))
    return {"position": taken.position, "duration_s": round(taken.duration_s, 6),
            "file": f"checkpoints/{snapshot_name(taken.position)}"}


@dataclasses.dataclass(slots=True)
class OnlineBackup:
    """A backup whose checkpoint is taken; ``write`` streams its archive."""

    position: int
    _directory: Path
    _plan: backup.OnlinePlan
    _chunk_bytes: int
    _fields: dict[str, object]

    async def write(self, out: Callable[[bytes], Awaitable[None]]) -> archive.Totals:
        sink = backup.TarSink(out, self._chunk_bytes)
        return await backup.write_archive(backup.online_pieces(self._directory, self._plan), sink,
                                          self._chunk_bytes, "online", self._fields)


@contextlib.asynccontextmanager
async def online_backup(service: Service, settings: Settings) -> AsyncIterator[OnlineBackup]:
    """Holds removals of deleted streams' files from before the checkpoint until
    the backup ends, so every file the checkpoint names stays readable."""
    log = _serving_log(service)
    log.hold_removals()
    try:
        taken = await _checkpoint(log)
        last_access = service.registry.lifetimes.last_access() if service.registry is not None else {}
        directory = Path(settings.data_dir)
        plan = await trio.to_thread.run_sync(backup.plan_online, directory, taken.position, last_access)
        try:
            fields: dict[str, object] = {
                "position": taken.position, "checkpoint_duration_s": taken.duration_s,
                "streams": len(plan.ids), "created_at": service.clock.wall()}
            yield OnlineBackup(taken.position, directory, plan, settings.backup_read_chunk_bytes, fields)
        finally:
            plan.close()
    finally:
        log.release_removals()
