"""Restart time: process start to ``/healthz`` 200, by stream count, total data
and WAL written since the last checkpoint.

Each data directory is built by the storage engine itself, in-process in a
child process (``Service`` and its registry: the same actors, log writer,
stream files and checkpoints as the server, without HTTP): ``--streams``
streams, each created with its share of ``--data-mib`` as initial content
(written with ``fsync=never``; the clean stop that ends the build fsyncs
everything and writes a checkpoint, so the WAL since it is empty). For the
WAL axis, another child appends (in 64 KiB appends spread over the streams)
until that much WAL has been written since the checkpoint and then dies
with ``os._exit`` (kill -9: no final checkpoint, the page cache keeps the
bytes), so the next start replays exactly that WAL.

Each point starts a real ``trio-streams serve`` ``--rounds`` times (SIGTERM
in between; a start that replayed WAL does not checkpoint it at its stop,
so every round replays the same) and prints the median and max. The page
cache is warm (the data were just written): this measures recovery's CPU
and system calls, not cold reads from the disk.

    .venv/bin/python scripts/restart_time.py                 # the matrix in docs/benchmarks.md
    .venv/bin/python scripts/restart_time.py --streams 100000 --data-mib 1024 --wal-mib 0,64,256 --rounds 5

Writes nothing into the repository (a temporary directory, ``--dir`` to choose one).
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
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry
from trio_streams.service import Service

CT = "application/octet-stream"
CREATORS = 256  # concurrent creates: the log writer commits them in large batches
APPEND_BYTES = 64 * 1024


def _names(streams: int) -> list[str]:
    return [f"s/{i:07d}" for i in range(streams)]


async def _in_service(data: Path, settings: dict[str, object], work: object) -> None:
    service = Service(Settings(data_dir=str(data), fsync="never", **settings))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await service.ready.wait()
        await work(service.registry)  # type: ignore[operator]
        service.stop()


def build(data: Path, streams: int, data_bytes: int) -> None:
    """Child process: creates the streams with their content, stops cleanly (a checkpoint)."""
    share = data_bytes // max(1, streams)
    body = bytes(range(256)) * (share // 256 + 1)

    async def create_all(registry: object) -> None:
        names = _names(streams)

        async def creator(first: int) -> None:
            for name in names[first::CREATORS]:
                await registry.create(name, CreateRequest(CT, Expiry(), False, body[:share]))  # type: ignore[attr-defined]

        async with trio.open_nursery() as nursery:
            for first in range(CREATORS):
                nursery.start_soon(creator, first)

    trio.run(_in_service, data, {}, create_all)


def grow_wal(data: Path, streams: int, wal_bytes: int) -> None:
    """Child process: appends about ``wal_bytes`` of WAL, then dies like kill -9."""
    names = _names(streams)
    chunk = b"w" * APPEND_BYTES

    async def append_all(registry: object) -> None:
        for i in range(max(1, wal_bytes // APPEND_BYTES)):
            await registry.append(names[i * 7919 % streams], AppendRequest(CT, chunk, None, None, False))  # type: ignore[attr-defined]
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
        _child("_build", data, streams, mib * 2**20)
        point(f"{streams:>7} streams, {mib:>5} MiB, WAL since checkpoint 0", data, args, results,
              streams=streams, data_mib=mib, wal_mib=0)
        if (streams, mib) == base:
            grown = 0
            for wal_mib in (m for m in args.wal_mib if m > 0):
                _child("_grow", data, streams, (wal_mib - grown) * 2**20)
                grown = wal_mib
                point(f"{streams:>7} streams, {mib:>5} MiB, WAL since checkpoint {wal_mib}", data, args, results,
                      streams=streams, data_mib=mib, wal_mib=wal_mib)
        shutil.rmtree(data.parent)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_build", "_grow"):
        data, streams, size = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        (build if sys.argv[1] == "_build" else grow_wal)(data, streams, size)
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
    args = parser.parse_args()
    args.streams.sort()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="restart-time-", dir=args.dir) as tmp:
        results = run(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
