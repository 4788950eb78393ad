"""Latency of a small GET while checkpoints of a 1,000,000-stream table run.

Builds a data directory offline (through the storage API, not 1 M PUTs): a
checkpoint holding ``--streams`` empty filler streams plus two real ones,
``probe`` (a few bytes, read by the probe) and ``trickle`` (appended to).
The fillers have no stream files, which start-up accepts only for fenced
streams, so they are written fenced and the server runs with
``WAL_RECOVERY_MODE=fence_damaged_streams``; a fenced stream is encoded in
every checkpoint like any other, which is all this measures. Then it starts
a real ``trio-streams serve`` on a copy of it, once per source tree:

* quiet: nothing is written, so no checkpoint runs; probe GETs back to back
  (one keep-alive connection, ``--probe-interval-ms`` apart);
* checkpointing: a trickle of appends (every ``--trickle-interval-ms``) with
  ``CHECKPOINT_INTERVAL_S=1``, so a new checkpoint starts as soon as the last
  one is done; the same probe GETs, and the appends' own latencies.

It prints p50 / p99 / max of each, and how many checkpoints completed.
``--before REF`` also runs the code of git ref REF (e.g. ``main``, exported
with ``git archive`` to a temporary directory) on the same data first.
Writes nothing into the repository; everything goes to a temporary directory.

    .venv/bin/python scripts/checkpoint_latency.py --streams 1000000 --before main
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx

from serverproc import ServerProcess, summary
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import StreamState, StreamTable
from trio_streams.storage.checkpoint import encode_table
from trio_streams.storage.snapshot import write_snapshot
from trio_streams.storage.store import Store

CT = "application/octet-stream"
PROBE = b"a small stream read by the probe\n"
FILLER = "benchmark filler: no stream files"
REPO = Path(__file__).resolve().parent.parent
SLOW_S = 0.5  # GETs slower than this are printed as they happen


def build(data: Path, streams: int) -> None:
    started = time.monotonic()
    table = StreamTable()
    for stream_id in range(1, streams + 1):
        table.add(StreamState(stream_id, f"filler/{stream_id:08d}", CT, Expiry(), 1.7e9, damaged=FILLER))
    probe_id, trickle_id = streams + 1, streams + 2
    table.add(StreamState(probe_id, "probe", CT, Expiry(), time.time(), tail=len(PROBE)))
    table.add(StreamState(trickle_id, "trickle", CT, Expiry(), time.time()))
    store = Store(data / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10)
    store.create_sync(probe_id)
    store.append_sync(probe_id, 0, PROBE, len(PROBE))
    store.create_sync(trickle_id)
    store.close_sync()
    payload = encode_table(table)
    write_snapshot(data / "checkpoints", 0, payload)
    print(f"built {streams} streams in {time.monotonic() - started:.1f} s (checkpoint payload {len(payload) / 2**20:.0f} MiB)")


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def probe(client: httpx.Client, url: str, seconds: float, interval_s: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = client.get(url, params={"offset": "-1"})
        latencies.append(time.perf_counter() - started)
        if latencies[-1] > SLOW_S:
            print(f"    slow GET: {latencies[-1] * 1000:.0f} ms, {seconds - (deadline - time.monotonic()):.1f} s into the phase")
        assert response.status_code == 200 and response.content == PROBE, response
        time.sleep(interval_s)
    return latencies


def trickle(url: str, stop: threading.Event, interval_s: float, latencies: list[float]) -> None:
    with httpx.Client(timeout=600.0) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = client.post(url, content=b"x" * 100, headers={"content-type": CT})
            latencies.append(time.perf_counter() - started)
            assert response.status_code in (200, 204), response
            time.sleep(interval_s)


def measure(name: str, template: Path, work: Path, code: Path | None, args: argparse.Namespace) -> None:
    slug = name.split()[0]
    data = work / f"data-{slug}"
    shutil.copytree(template, data)
    env = {"TRIO_STREAMS_CHECKPOINT_INTERVAL_S": "1", "TRIO_STREAMS_WAL_RECOVERY_MODE": "fence_damaged_streams"}
    server = ServerProcess(data, work / f"server-{slug}.log", code=code, env=env)
    try:
        print(f"[{name}] healthy after {server.wait_healthy(args.start_timeout_s):.1f} s")
        stream = server.url + "/v1/stream/"
        interval = args.probe_interval_ms / 1000
        with httpx.Client(timeout=600.0) as client:
            probe(client, stream + "probe", 2.0, interval)  # warm up
            before = server.metric("trio_streams_checkpoints_total")
            quiet = probe(client, stream + "probe", args.seconds, interval)
            assert server.metric("trio_streams_checkpoints_total") == before, "a checkpoint ran in the quiet phase"
            appends: list[float] = []
            stop = threading.Event()
            writer = threading.Thread(target=trickle, args=(stream + "trickle", stop, args.trickle_interval_ms / 1000, appends))
            writer.start()
            busy = probe(client, stream + "probe", args.seconds, interval)
            stop.set()
            writer.join()
            done = server.metric("trio_streams_checkpoints_total") - before
        print(f"[{name}] quiet:         GET {summary(quiet)}")
        print(f"[{name}] checkpointing: GET {summary(busy)}")
        print(f"[{name}] checkpointing: POST {summary(appends)}  ({done:.0f} checkpoints completed)")
        stopping = time.monotonic()
        code_ = server.stop()
        print(f"[{name}] SIGTERM (final checkpoint) took {time.monotonic() - stopping:.1f} s, exit {code_}")
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--probe-interval-ms", type=float, default=10.0)
    parser.add_argument("--trickle-interval-ms", type=float, default=50.0)
    parser.add_argument("--start-timeout-s", type=float, default=1800.0)
    parser.add_argument("--before", metavar="REF", help="also run this git ref's code first (e.g. main)")
    parser.add_argument("--no-after", action="store_true", help="with --before: run only the old code")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkpoint-latency-") as tmp:
        work = Path(tmp)
        build(work / "template", args.streams)
        if args.before:
            measure(f"before ({args.before})", work / "template", work, export(args.before, work / "before-code"), args)
        if not args.no_after:
            measure("after (this tree)", work / "template", work, None, args)


if __name__ == "__main__":
    main()
