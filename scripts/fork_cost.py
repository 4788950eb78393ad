"""Forking cost: fork a 1 MiB and a 1 GiB stream, compare time and space.

Forks share the source's storage, so creating one should cost the same
whatever the source's size: one small WAL record, an empty data file.
Runs the storage engine in-process (no HTTP) on a temporary directory with
``--fsync never`` while filling the source, then forks with fsync always.

    .venv/bin/python scripts/fork_cost.py [--gib 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import trio

from trio_streams.config import Settings
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, ForkSpec
from trio_streams.service import Service

CHUNK = bytes(range(256)) * 4096 * 4  # 4 MiB


async def fork_cost(size_bytes: int, forks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        service = Service(Settings(data_dir=directory, fsync="always"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            await service.ready.wait()
            registry, log, store = service.registry, service.log, service.store
            assert registry is not None and log is not None and store is not None
            ct = "application/octet-stream"
            await registry.create("src", CreateRequest(ct, Expiry(), False, b""))
            for _ in range(max(1, size_bytes // len(CHUNK))):
                chunk = CHUNK if size_bytes >= len(CHUNK) else CHUNK[:size_bytes]
                await registry.append("src", AppendRequest(ct, chunk, None, None, False))
            times, wal_growth = [], []
            for i in range(forks):
                wal_before = log.statistics().wal_end_position
                started = time.perf_counter()
                await registry.create(f"fork-{i}", CreateRequest(ct, Expiry(), False, b"", ForkSpec("src", None, 0), False))
                times.append(time.perf_counter() - started)
                wal_growth.append(log.statistics().wal_end_position - wal_before)
            fork = registry.visible("fork-0")
            assert fork is not None
            file_bytes = store.path(fork.stream_id).stat().st_size
            source_tail = registry.visible("src").tail  # type: ignore[union-attr]
            service.stop()
        return {"source_bytes": source_tail, "fork_ms_median": statistics.median(times) * 1000,
                "wal_bytes_per_fork": statistics.median(wal_growth), "fork_file_bytes": file_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--forks", type=int, default=21)
    args = parser.parse_args()
    small = trio.run(fork_cost, 1 << 20, args.forks)
    large = trio.run(fork_cost, int(args.gib * (1 << 30)), args.forks)
    for label, r in (("1 MiB source", small), (f"{args.gib:g} GiB source", large)):
        print(f"{label:>16}: fork median {r['fork_ms_median']:.2f} ms, WAL {r['wal_bytes_per_fork']:.0f} B/fork, "
              f"fork data file {r['fork_file_bytes']} B (source {r['source_bytes']} B)")
    print(f"time ratio large/small: {large['fork_ms_median'] / small['fork_ms_median']:.2f}; "
          f"space ratio: {large['wal_bytes_per_fork'] / small['wal_bytes_per_fork']:.2f}")


if __name__ == "__main__":
    main()
