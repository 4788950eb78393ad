"""Retention's disk use: a stream written at a constant rate under a byte budget stays flat.

Starts a real ``trio-streams serve`` on a temporary directory, creates one
stream with ``Trio-Streams-Retention-Max-Bytes`` (and, for contrast, one
without a policy), writes both at the same constant rate, and samples every
second what the disk holds: the allocated size of each stream's data file
(``st_blocks``, so punched holes count as freed), the WAL, and the whole
data directory. A checkpoint every ``--checkpoint-wal-mib`` (segments of a
quarter of that) bounds the WAL, which holds every append until a
checkpoint lets its segments go, whatever the retention.

    .venv/bin/python scripts/retention_disk.py [--seconds 60] [--rate-kib 1024] [--budget-mib 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess  # noqa: E402

APPEND_BYTES = 64 * 1024
OCTET = {"content-type": "application/octet-stream"}


def allocated(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_blocks * 512


def mib(n: float) -> str:
    return f"{n / 2**20:7.1f}"


def run(seconds: float, rate_bytes: int, budget_bytes: int, checkpoint_wal_bytes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="retention-disk-") as root:
        data = Path(root) / "data"
        data.mkdir()
        env = {"TRIO_STREAMS_CHECKPOINT_WAL_BYTES": str(checkpoint_wal_bytes),
               "TRIO_STREAMS_WAL_SEGMENT_BYTES_MAX": str(checkpoint_wal_bytes // 4),
               "TRIO_STREAMS_RETENTION_SWEEP_INTERVAL_S": "1"}
        server = ServerProcess(data, Path(root) / "server.log", env=env)
        try:
            server.wait_healthy(60)
            stream_samples = _write(server.url, data, seconds, rate_bytes, budget_bytes)
            print(f"trims: {server.metric('trio_streams_retention_trims_total'):.0f}, disk freed: "
                  f"{mib(server.metric('trio_streams_retention_reclaimed_bytes_total'))} MiB")
        finally:
            server.stop()
        _report(stream_samples, budget_bytes)


def _write(url: str, data: Path, seconds: float, rate_bytes: int, budget_bytes: int) -> list[tuple[float, int, int, int, int, int]]:
    """Appends ``rate_bytes`` a second to both streams; one sample a second."""
    body = os.urandom(APPEND_BYTES)
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.put("/v1/stream/kept", headers=OCTET | {"trio-streams-retention-max-bytes": str(budget_bytes)})
        client.put("/v1/stream/all", headers=OCTET)
        files = sorted((data / "streams").glob("*.dat"))  # ids in creation order: kept, all
        started, written, next_sample = time.monotonic(), 0, 1.0
        print("    s  written MiB  retained-file MiB  unbounded-file MiB  WAL MiB  data dir MiB"
              "  data dir without the unbounded stream MiB")
        while (elapsed := time.monotonic() - started) < seconds:
            if written < elapsed * rate_bytes:
                for name in ("kept", "all"):
                    assert client.post(f"/v1/stream/{name}", content=body, headers=OCTET).status_code == 204
                written += len(body)
            else:
                time.sleep(min(0.01, written / rate_bytes - elapsed))
            if elapsed >= next_sample:
                sample = (elapsed, written, allocated(files[0]), allocated(files[1]), allocated(data / "wal"),
                          allocated(data))
                samples.append(sample)
                print(f"{sample[0]:5.0f}  {mib(sample[1])}      {mib(sample[2])}            {mib(sample[3])}"
                      f"         {mib(sample[4])}  {mib(sample[5])}  {mib(sample[5] - sample[3])}")
                next_sample += 1.0
    return samples


def _report(samples: list[tuple[float, int, int, int, int, int]], budget_bytes: int) -> None:
    later = samples[len(samples) // 4 :]  # after the first quarter: the stream has filled its budget
    kept = [s[2] for s in later]
    rest = [s[5] - s[3] for s in later]
    print(f"data directory without the unbounded stream, after the first quarter: min {mib(min(rest))} "
          f"max {mib(max(rest))} MiB")
    print(f"retained stream file (budget {mib(budget_bytes).strip()} MiB), after the first quarter: "
          f"min {mib(min(kept))} max {mib(max(kept))} MiB; unbounded stream file at the end: {mib(samples[-1][3])} MiB "
          f"of {mib(samples[-1][1])} MiB written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate-kib", type=int, default=1024, help="KiB per second written to each stream")
    parser.add_argument("--budget-mib", type=float, default=4.0)
    parser.add_argument("--checkpoint-wal-mib", type=int, default=32)
    args = parser.parse_args()
    run(args.seconds, args.rate_kib * 1024, int(args.budget_mib * 2**20), args.checkpoint_wal_mib * 2**20)


if __name__ == "__main__":
    main()
