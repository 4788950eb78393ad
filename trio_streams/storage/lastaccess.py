"""The sliding-TTL access clock across a clean restart.

Owns: ``last-access.json`` in the data directory — when each stream with a
Stream-TTL was last read or written, saved at a clean shutdown together with
the log position of the final checkpoint — and taking it back at start-up.

Reads are not logged, so only a clean shutdown knows every stream's last
access exactly. The file is used only when recovery started from exactly the
checkpoint it names with nothing replayed after it (nothing happened since),
and it is removed before the server serves, so a later crash can never bring
back a map that misses that run's reads. After a crash there is no file and
the restart counts as an access to every stream: a stream may outlive its TTL
by the downtime, but never expires early.

Never: decides expiry (protocol.rules) or interprets the times.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import orjson

from .fileops import REAL, FileOps
from .wal import fsync_directory, write_all

log = logging.getLogger("trio_streams.storage")

FILE_NAME: Final = "last-access.json"
FORMAT_VERSION: Final = 1
# The file is read whole at start-up; a larger one is ignored (and logged).
FILE_BYTES_MAX: Final = 1024 * 1024 * 1024


def save(directory: Path, position: int, last_access: Mapping[int, float], ops: FileOps = REAL) -> None:
    """Atomically writes the map for the checkpoint at ``position`` (blocking: call from a thread)."""
    payload = orjson.dumps({
        "version": FORMAT_VERSION, "position": position,
        "last_access": [[stream_id, at] for stream_id, at in last_access.items()],
    })
    final = directory / FILE_NAME
    temp = directory / (FILE_NAME + ".tmp")
    fd = ops.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, payload, ops)
        ops.fsync(fd)  # durable before the rename makes it visible
    finally:
        ops.close(fd)
    ops.replace(temp, final)
    fsync_directory(directory, ops)


def take(directory: Path, checkpoint_position: int, replayed_events: int, ops: FileOps = REAL) -> dict[int, float]:
    """The saved map if it belongs to this start (see the module docstring), else empty.

    The file is removed either way, durably, before this returns.
    """
    final = directory / FILE_NAME
    with contextlib.suppress(FileNotFoundError):
        ops.unlink(directory / (FILE_NAME + ".tmp"))  # a save cut short by a crash
    try:
        saved = _load(final)
    except FileNotFoundError:
        return {}
    ops.unlink(final)
    fsync_directory(directory, ops)
    if saved is None:
        return {}
    position, last_access = saved
    if position != checkpoint_position or replayed_events:
        log.info("last-access times from an earlier shutdown do not match this start; a restart counts as an access")
        return {}
    return last_access


def _load(path: Path) -> tuple[int, dict[int, float]] | None:
    size = path.stat().st_size
    if size > FILE_BYTES_MAX:
        log.warning("%s is %d bytes, over %d: ignored; a restart counts as an access", path, size, FILE_BYTES_MAX)
        return None
    try:
        doc = orjson.loads(path.read_bytes())
        if doc["version"] != FORMAT_VERSION:
            raise ValueError(f"unknown version {doc['version']!r}")
        return int(doc["position"]), {int(i): float(at) for i, at in doc["last_access"]}
    except (ValueError, KeyError, TypeError) as error:
        log.warning("%s is unreadable (%s): ignored; a restart counts as an access", path, error)
        return None
