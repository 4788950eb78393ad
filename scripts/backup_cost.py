"""Online backup cost: how long a backup takes and what it does to appends meanwhile.

Fills a real server (``--fsync never`` while filling) with ``--streams``
streams of ``--mib`` MiB in all, then, with one writer appending 100-byte
records in a loop, measures append latency for a few seconds without a
backup (after a checkpoint that syncs what the fill wrote), then during ``trio-streams backup --url … DEST.tar``; then times the
restore of that archive (which verifies it) and its restart.

    .venv/bin/python scripts/backup_cost.py [--mib 256] [--streams 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess, summary  # noqa: E402

EXE = Path(sys.executable).parent / "trio-streams"
BASELINE_S = 3.0
PIECE = os.urandom(1024 * 1024)


def fill(url: str, streams: int, mib: int) -> None:
    with httpx.Client(timeout=120) as client:
        for i in range(streams):
            assert client.put(f"{url}/v1/stream/s{i}", headers={"content-type": "application/octet-stream"}).status_code == 201
        for n in range(mib):
            r = client.post(f"{url}/v1/stream/s{n % streams}", headers={"content-type": "application/octet-stream"},
                            content=PIECE)
            assert r.status_code in (200, 204), r.text
        assert client.put(f"{url}/v1/stream/probe", headers={"content-type": "text/plain"}).status_code == 201


def append_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.post(f"{url}/v1/stream/probe", headers={"content-type": "text/plain"},
                               content=b"x" * 100).status_code in (200, 204)
            out.append(time.perf_counter() - started)


def measure(url: str, action) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    samples: list[float] = []
    stop = threading.Event()
    writer = threading.Thread(target=append_latencies, args=(url, stop, samples))
    writer.start()
    started = time.monotonic()
    action()
    took = time.monotonic() - started
    stop.set()
    writer.join()
    return samples, took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        data = root / "data"
        data.mkdir()
        server = ServerProcess(data, root / "server.log")
        try:
            server.wait_healthy(60)
            fill(server.url, args.streams, args.mib)
            # The first checkpoint after the fill fsyncs every stream file it wrote; a
            # backup's own checkpoint then costs what one does in steady state.
            first = httpx.post(server.url + "/admin/checkpoint", timeout=600).json()["duration_s"]
            quiet, _ = measure(server.url, lambda: time.sleep(BASELINE_S))
            dest = root / "backup.tar"
            during, took = measure(server.url, lambda: subprocess.run(
                [str(EXE), "backup", "--url", server.url, str(dest)], check=True, capture_output=True))
        finally:
            server.stop()
        size = dest.stat().st_size
        started = time.monotonic()
        subprocess.run([str(EXE), "restore", str(dest), str(root / "restored")], check=True, capture_output=True)
        restore_s = time.monotonic() - started
        restored = ServerProcess(root / "restored", root / "restored.log")
        try:
            ready_s = restored.wait_healthy(120)
        finally:
            restored.stop()
    print(f"data: {args.mib} MiB in {args.streams} streams; archive {size / 2**20:.1f} MiB")
    print(f"checkpoint after the fill (fsyncs the stream files): {first:.2f} s")
    print(f"backup: {took:.2f} s ({size / 2**20 / took:.0f} MiB/s)")
    print(f"appends without a backup: {summary(quiet)}")
    print(f"appends during the backup: {summary(during)}")
    print(f"restore (unpack, fsync, verify): {restore_s:.2f} s; restored server ready in {ready_s:.2f} s")


if __name__ == "__main__":
    main()
