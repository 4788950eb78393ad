#!/usr/bin/env python3
"""Run the kill -9 crash test standalone: N rounds on one data directory.

    .venv/bin/python scripts/crash_test.py --rounds 10
    .venv/bin/python scripts/crash_test.py --rounds 3 --fsync never --seed 1234 --keep

Rounds cycle through the fsync modes given (default: always,interval,never),
alternating default and small WAL segment/checkpoint sizes. Prints one line
per round and the summary "crash test: R rounds, A acknowledged appends
checked, L lost"; exits 1 if anything was lost or another check failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crashlib  # noqa: E402
from crashlib import ServerConfig  # noqa: E402

SMALL_LOG = (("WAL_SEGMENT_BYTES_MAX", str(256 * 1024)), ("CHECKPOINT_WAL_BYTES", str(1024 * 1024)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fsync", default="always,interval,never", help="comma-separated modes to cycle through")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--writers", type=int, default=3, help="writers per stream (the last is a producer)")
    parser.add_argument("--load-min-s", type=float, default=0.5)
    parser.add_argument("--load-max-s", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data and server logs)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    modes = [m.strip() for m in args.fsync.split(",") if m.strip()]
    configs = [ServerConfig(modes[i % len(modes)], SMALL_LOG if i % 2 else ()) for i in range(args.rounds)]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    work = Path(tempfile.mkdtemp(prefix="trio-streams-crash-"))
    try:
        summary = crashlib.run_crash_test(
            work, configs, seed=seed, streams=args.streams, writers_per_stream=args.writers,
            load_s=(args.load_min_s, args.load_max_s),
        )
    except crashlib.CrashTestError as exc:
        print(f"crash test: could not run: {exc}", file=sys.stderr)
        print(f"work directory kept: {work}", file=sys.stderr)
        return 2
    ok = summary.lost == 0 and not summary.problems
    if args.keep or not ok:
        print(f"work directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
