"""Hand-built data directories for recovery and verify tests: streams written
through the real log writer in clean sessions (each ends with a checkpoint),
then records added to the WAL by hand, as a writer that got them wrong would."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Event
from trio_streams.storage.events import encode_event
from trio_streams.storage.log import Log
from trio_streams.storage.recovery import recover
from trio_streams.storage.store import Store
from trio_streams.storage.wal import encode_record, list_segments, segment_name

# One batch per segment and a checkpoint at every clean close: after three
# sessions the WAL before the older checkpoint is gone and only checkpoints can start.
SEGMENT_BYTES = 1


def created(stream_id: int, path: str, data: bytes = b"") -> Created:
    return Created(stream_id, path, "text/plain", Expiry(), 0.0, False, data)


def store_of(directory: Path) -> Store:
    return Store(directory / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10)


def settings_of(directory: Path, mode: str = "tolerate_corrupted_tail") -> Settings:
    return Settings(data_dir=str(directory), fsync="always", wal_segment_bytes_max=SEGMENT_BYTES, wal_recovery_mode=mode)


async def _session(directory: Path, batches: Sequence[Sequence[Event]]) -> None:
    """One run of the log writer that ends cleanly: with a checkpoint of everything."""
    store = store_of(directory)
    recovered = recover(directory, store, settings_of(directory))
    log = Log(settings_of(directory), directory, recovered.wal, store, recovered.table)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        for batch in batches:
            await log.submit(list(batch))
        log.close_intake()
    store.close_sync()
    recovered.wal.close()


def build(directory: Path) -> None:
    """Streams a (id 1) and b (id 2), three clean sessions: checkpoints at the end of
    the last two, the WAL from the older one on. a = "abcdefgh", b = "0123"."""
    trio.run(_session, directory, [[created(1, "a", b"abc"), created(2, "b", b"01")]])
    trio.run(_session, directory, [[Appended(1, 3, b"de")], [Appended(2, 2, b"23")]])
    trio.run(_session, directory, [[Appended(1, 5, b"fgh")]])
    assert len(list((directory / "checkpoints").iterdir())) == 2


def tree(directory: Path) -> dict[str, str]:
    """Every file and directory under directory: its hash, or "dir"."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), directory)] = "dir"
        for name in files:
            path = Path(root) / name
            found[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def append_to_wal(directory: Path, records: Sequence[bytes]) -> int:
    """Appends raw records to the last segment; returns the log position of the first one."""
    start = list_segments(directory / "wal")[-1]
    path = directory / "wal" / segment_name(start)
    position = start + path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"".join(records))
    return position


def record(event: Event) -> bytes:
    return encode_record(*encode_event(event))


def stream_file(directory: Path, stream_id: int, kind: str = "dat") -> Path:
    return directory / "streams" / f"{stream_id:016x}.{kind}"
