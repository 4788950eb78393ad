"""Restart time: process start to ``/healthz`` 200, by stream count, total data
and WAL written since the last checkpoint.

Each data directory is what a clean stop leaves, written offline through
the storage API (``Store`` writes each stream's data, index and checksum
files; a checkpoint holds the table; no WAL since it): ``--streams`` streams
sharing ``--data-mib`` equally, one append each. For the WAL axis, a child
process runs the storage engine itself (``Service`` and its registry: the
server's actors, log writer and stream files, without HTTP), appends in
64 KiB appends spread over the streams until that much WAL has been written
since the checkpoint, and dies with ``os._exit`` (kill -9: no final
checkpoint, the page cache keeps the bytes), so the next start replays
exactly that WAL.

Each point starts a real ``trio-streams serve`` ``--rounds`` times (SIGTERM
in between; a start that replayed WAL does not checkpoint it at its stop,
so every round replays the same) and prints the median and max. The page
cache is warm (the data were just written): this measures recovery's CPU
and system calls, not cold reads from the disk.

    .venv/bin/python scripts/restart_time.py                 # the matrix in docs/benchmarks.md
    .venv/bin/python scripts/restart_time.py --streams 100000 --data-mib 1024 --wal-mib 0,64,256 --rounds 5

Writes nothing into the repository (a temporary directory, ``--dir`` to choose one;
``--keep`` leaves the data directories there, as the last point left them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from serverproc import ServerProcess
from trio_streams.config import Settings
from trio_streams.protocol.headers import AppendRequest, Expiry
from trio_streams.protocol.state import StreamState, StreamTable
from trio_streams.service import Service
from trio_streams.storage.checkpoint import encode_table
from trio_streams.storage.snapshot import write_snapshot
from trio_streams.storage.store import Store

CT = "application/octet-stream"
BUILD_BATCH_STREAMS = 1000
APPEND_BYTES = 64 * 1024


def _name(number: int) -> str:
    return f"s/{number:07d}"


async def _in_service(data: Path, settings: dict[str, object], work: object) -> None:
    service = Service(Settings(data_dir=str(data), fsync="never", **settings))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await service.ready.wait()
        await work(service.registry)  # type: ignore[operator]
        service.stop()


def build(data: Path, streams: int, data_bytes: int) -> None:
    """What a clean stop leaves (stream files, a checkpoint, no WAL since it),
    written through the storage API: ``Store`` for the stream files (data,
    index, checksums), ``encode_table`` and ``write_snapshot`` for the checkpoint.
    Nothing is fsynced: the page cache serves the restart either way."""
    started = time.monotonic()
    share = data_bytes // max(1, streams)
    body = (bytes(range(256)) * (share // 256 + 1))[:share]
    table = StreamTable()
    for first in range(0, streams, BUILD_BATCH_STREAMS):
        # A store per batch, closed without fsync: its descriptor cache would fsync what it evicts.
        store = Store(data / "streams", open_files_max=3 * BUILD_BATCH_STREAMS, hot_tail_bytes_max=0,
                      corrupt_ranges_logged_max=1)
        for number in range(first, min(streams, first + BUILD_BATCH_STREAMS)):
            stream_id = number + 1
            store.create_sync(stream_id)
            store.append_sync(stream_id, 0, body, share)
            table.add(StreamState(stream_id, _name(number), CT, Expiry(), time.time(), tail=share))
        store.close_sync(sync=False)
    write_snapshot(data / "checkpoints", 0, encode_table(table))
    print(f"  (built {streams} streams, {data_bytes / 2**20:.0f} MiB in {time.monotonic() - started:.0f} s)", flush=True)


def grow_wal(data: Path, streams: int, wal_bytes: int) -> None:
    """Child process: appends about ``wal_bytes`` of WAL, then dies like kill -9."""
    chunk = b"w" * APPEND_BYTES

    async def append_all(registry: object) -> None:
        for i in range(max(1, wal_bytes // APPEND_BYTES)):
            await registry.append(_name(i * 7919 % streams), AppendRequest(CT, chunk, None, None, False))  # type: ignore[attr-defined]
        os._exit(0)  # no final checkpoint: the next start replays all of it

    never = {"checkpoint_wal_bytes": 1 << 62, "checkpoint_interval_s": 1e9}
    trio.run(_in_service, data, never, append_all)


def _child(*args: object) -> None:
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, *map(str, args)], check=True)
    print(f"  ({args[0]} {args[2:]} took {time.monotonic() - started:.0f} s)", flush=True)


def restart_times(data: Path, rounds: int, log_path: Path) -> list[float]:
    times = []
    for _ in range(rounds):
        server = ServerProcess(data, log_path)
        try:
            times.append(server.wait_healthy(600.0))
        finally:
            assert server.stop() == 0, "the server did not stop cleanly"
    return times


def point(label: str, data: Path, args: argparse.Namespace, results: list[dict[str, object]], **what: object) -> None:
    times = restart_times(data, args.rounds, data.parent / "server.log")
    wal = sum(p.stat().st_size for p in (data / "wal").glob("*.wal"))
    stored = sum(p.stat().st_size for p in (data / "streams").glob("*.dat"))
    results.append({**what, "wal_bytes_on_disk": wal, "stream_bytes": stored, "restart_s": times})
    print(f"{label:<44} median {statistics.median(times):6.2f} s  max {max(times):6.2f} s  "
          f"(WAL on disk {wal / 2**20:7.1f} MiB, stream data {stored / 2**30:5.2f} GiB)", flush=True)


def run(args: argparse.Namespace, root: Path) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    seen: set[tuple[int, int]] = set()
    base = (args.streams[-1], args.base_mib)
    for streams, mib in [*((s, args.base_mib) for s in args.streams), *((args.streams[-1], m) for m in args.data_mib)]:
        if (streams, mib) in seen:
            continue
        seen.add((streams, mib))
        data = root / f"d-{streams}-{mib}" / "data"
        build(data, streams, mib * 2**20)
        point(f"{streams:>7} streams, {mib:>5} MiB, WAL since checkpoint 0", data, args, results,
              streams=streams, data_mib=mib, wal_mib=0)
        if (streams, mib) == base:
            grown = 0
            for wal_mib in (m for m in args.wal_mib if m > 0):
                _child("_grow", data, streams, (wal_mib - grown) * 2**20)
                grown = wal_mib
                point(f"{streams:>7} streams, {mib:>5} MiB, WAL since checkpoint {wal_mib}", data, args, results,
                      streams=streams, data_mib=mib, wal_mib=wal_mib)
        if not args.keep:
            shutil.rmtree(data.parent)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_grow":
        grow_wal(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--streams", type=ints, default=[10_000, 50_000, 100_000],
                        help="stream counts, each holding --base-mib in total")
    parser.add_argument("--base-mib", type=int, default=1024, help="total stored data of the streams axis")
    parser.add_argument("--data-mib", type=ints, default=[128, 2048],
                        help="other totals of stored data, at the largest stream count")
    parser.add_argument("--wal-mib", type=ints, default=[0, 64, 256],
                        help="WAL since the last checkpoint, at the largest stream count and --base-mib")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directories under --dir (for scripts/recovery_profile.py)")
    args = parser.parse_args()
    args.streams.sort()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    if args.keep:
        assert args.dir, "--keep needs --dir"
        results = run(args, Path(tempfile.mkdtemp(prefix="restart-time-", dir=args.dir)))
    else:
        with tempfile.TemporaryDirectory(prefix="restart-time-", dir=args.dir) as tmp:
            results = run(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
