#!/usr/bin/env python3
"""Catch-up read MB/s of this tree against another source tree, run by run.

Each round runs `python -m scripts.bench --scenarios catch-up` (our server only, fsync always)
once per variant, alternating, so both share the machine's noise; a
variant's server imports `trio_streams` from its tree (via PYTHONPATH, in
front of this checkout's editable install). With `--no-cache` the servers
run with the chunk cache off (TRIO_STREAMS_READ_CACHE_BYTES_MAX=0), so every
read goes to the stream files (and, with checksums, is verified) instead of
being answered from encoded chunks cached by the warm-up read.

  git archive main trio_streams | tar -x -C /tmp/before
  .venv/bin/python scripts/catchup_before_after.py --before /tmp/before [--rounds 7] [--no-cache]

Prints per-round MB/s and server CPU ms/MB for both, then medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(tree: Path, cache: bool, out: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(tree)}
    if not cache:
        env["TRIO_STREAMS_READ_CACHE_BYTES_MAX"] = "0"
    subprocess.run([sys.executable, "-m", "scripts.bench", "--servers", "ours", "--scenarios", "catch-up",
                    "--fsync", "always", "--rounds", "1", "--no-charts", "--out", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    run = json.loads((out / "bench.json").read_text())["runs"][0]
    if run.get("problems"):
        raise RuntimeError(f"{tree}: {run['problems']}")
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, type=Path, help="a tree holding the trio_streams package to compare with")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-cache", action="store_true", help="servers run without the encoded-chunk cache")
    a = p.parse_args()
    variants = {"before": a.before.resolve(), "after": ROOT}
    results: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(run_once(variants[name], not a.no_cache, Path(tmp) / f"{name}-{rnd}"))
            print(f"round {rnd + 1}: " + "  ".join(
                f"{n} {results[n][-1]['mb_per_s']:.1f} MB/s ({results[n][-1]['server_cpu_ms_per_mb']:.2f} ms CPU/MB)"
                for n in variants), flush=True)
    med = {n: statistics.median(r["mb_per_s"] for r in results[n]) for n in variants}
    cpu = {n: statistics.median(r["server_cpu_ms_per_mb"] for r in results[n]) for n in variants}
    print(f"medians over {a.rounds} rounds ({'no chunk cache' if a.no_cache else 'default settings'}): "
          f"before {med['before']:.1f} MB/s, {cpu['before']:.2f} ms CPU/MB; "
          f"after {med['after']:.1f} MB/s, {cpu['after']:.2f} ms CPU/MB; "
          f"after/before {med['after'] / med['before']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
