"""Where start-up recovery spends its time, in-process, on a data directory.

Runs ``recover()`` exactly as a start does (it changes the directory the
same way: cuts, rewrites, orphan removal) and prints its wall, user and
system time, what it read and wrote (``/proc/self/io``), the time spent
cutting stream files back (``Store.truncate_sync``) and rewriting them
(``Store.write_event_sync``), and the page cache's dirty and writeback
bytes before it started; ``--profile`` adds a cProfile listing.

To get a directory: ``scripts/restart_time.py --dir D --keep`` leaves its
data sets under D, or copy any server's data directory while it is stopped. A WAL since the checkpoint is
replayed at every run (recovery never checkpoints), so runs can be repeated.

    .venv/bin/python scripts/recovery_profile.py DATA_DIR [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trio_streams.config import Settings
from trio_streams.storage.recovery import recover
from trio_streams.storage.store import Store


def _proc(path: str) -> dict[str, int]:
    fields = (line.split(":") for line in Path(path).read_text().splitlines())
    return {key: int(value.split()[0]) for key, value in fields}


def _timed(totals: dict[str, float], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args)
        finally:
            totals[name] += time.perf_counter() - started
    return timed


def run(data: Path, profile: bool) -> None:
    settings = Settings(data_dir=str(data))
    store = Store(data / "streams", open_files_max=settings.open_stream_files_max, hot_tail_bytes_max=0,
                  corrupt_ranges_logged_max=10)
    totals = {"truncate_sync": 0.0, "write_event_sync": 0.0}
    for name in totals:
        setattr(store, name, _timed(totals, name, getattr(store, name)))
    memory, io_before, times_before = _proc("/proc/meminfo"), _proc("/proc/self/io"), os.times()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    recovered = recover(data, store, settings)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    times, io = os.times(), _proc("/proc/self/io")
    store.close_sync(sync=False)
    recovered.wal.close()
    moved = " ".join(f"{key} {(io[key] - io_before[key]) / 2**20:.0f} MiB"
                     for key in ("rchar", "wchar", "read_bytes", "write_bytes"))
    print(f"recover {seconds:.2f} s (user {times.user - times_before.user:.2f}, system "
          f"{times.system - times_before.system:.2f}), {recovered.replayed_events} events replayed; {moved}; "
          f"cutting back {totals['truncate_sync']:.2f} s, rewriting {totals['write_event_sync']:.2f} s; before: "
          f"dirty {memory['Dirty'] // 1024} MiB, writeback {memory['Writeback'] // 1024} MiB", flush=True)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for _ in range(args.runs):
        run(args.data_dir, args.profile)


if __name__ == "__main__":
    main()
