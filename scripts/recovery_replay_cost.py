"""Start-up recovery time against the WAL it replays (no checkpoint: full replay).

Recovery decides before it changes a file: a read-only replay of the WAL
into the table, then a second pass that rewrites the replayed records'
data into the stream files (docs/storage.md, "Recovery"). This prints the
best of a few ``recover()`` runs over one hand-written WAL, so the cost of
the extra read pass is visible. Run it against another checkout with
PYTHONPATH to compare.

    .venv/bin/python scripts/recovery_replay_cost.py [--streams 100] [--appends 200000] [--bytes 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Event
from trio_streams.storage.events import encode_event
from trio_streams.storage.recovery import recover
from trio_streams.storage.store import Store
from trio_streams.storage.wal import SegmentedLog, encode_record

BATCH_EVENTS = 1000


def _events(streams: int, appends: int, size: int) -> list[Event]:
    events: list[Event] = [Created(i, f"s{i}", "text/plain", Expiry(), 0.0, False, b"") for i in range(1, streams + 1)]
    tails = dict.fromkeys(range(1, streams + 1), 0)
    for k in range(appends):
        stream_id = k % streams + 1
        events.append(Appended(stream_id, tails[stream_id], b"y" * size))
        tails[stream_id] += size
    return events


def _write_wal(directory: Path, events: list[Event]) -> int:
    with SegmentedLog.open(directory / "wal", 64 * 1024 * 1024) as wal:
        for _ in wal.recover(0):
            pass
        for at in range(0, len(events), BATCH_EVENTS):
            wal.append(b"".join(encode_record(*encode_event(e)) for e in events[at : at + BATCH_EVENTS]))
        wal.sync()
        return wal.end_position


def _recover_seconds(directory: Path) -> float:
    store = Store(directory / "streams", open_files_max=4096, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10)
    started = time.perf_counter()
    recovered = recover(directory, store, Settings(data_dir=str(directory), fsync="never"))
    seconds = time.perf_counter() - started
    store.close_sync()
    recovered.wal.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--appends", type=int, default=200_000)
    parser.add_argument("--bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        wal_bytes = _write_wal(directory, _events(args.streams, args.appends, args.bytes))
        best = min(_recover_seconds(directory) for _ in range(args.runs))
    print(f"{args.streams} streams, {args.appends} appends of {args.bytes} B, WAL {wal_bytes / 2**20:.1f} MiB: "
          f"recovery {best * 1000:.0f} ms (best of {args.runs}), {args.appends / best / 1000:.0f} k records/s")


if __name__ == "__main__":
    main()
