"""Sizing figures for docs/deployment.md: memory per stream, memory and file
descriptors per idle live reader (long-poll, SSE), from a real server's /proc.

Streams: two data directories are built offline the way a clean stop leaves
them (``restart_time.build``: stream files and a checkpoint, one small append
per stream), one empty and one with ``--streams`` streams; a real
``trio-streams serve`` recovers each and its RSS is read once it is healthy
("recovered"), and again after a HEAD of every stream over HTTP ("accessed":
every stream has been looked up and its sliding-TTL clock touched).
Per stream = (RSS with N streams - RSS empty) / N.

Live readers: one server, ``--readers`` raw connections each parked in a
long-poll (or an SSE response) on one of a few streams; the figures are the
RSS and descriptor growth from before they connect to when the server counts
them all as subscribers, divided by their number. Socket buffers live in the
kernel and are not in RSS.

Each figure is the median of ``--rounds`` runs (a fresh server each time).

    .venv/bin/python scripts/sizing.py                       # the figures in docs/deployment.md
    .venv/bin/python scripts/sizing.py --streams 100000 --readers 1000 --rounds 3

Writes nothing into the repository (a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restart_time import _name, build  # noqa: E402  (a sibling script: the offline data-directory builder)
from serverproc import ServerProcess  # noqa: E402

PREFIX = "/v1/stream/"
STREAM_BYTES = 64  # each built stream holds one append this size
READER_STREAMS = 10  # live readers are spread over this many streams
HEAD_BATCH = 500  # pipelined HEADs sent before their answers are read
PARK_TIMEOUT_S = 120.0
# Long enough that no reader is answered or recycled while it is measured.
HOLD_MS = 600_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def settled_rss(pid: int) -> int:
    """RSS once it stops moving (the event loop finishes what it was doing)."""
    previous, current = -1, rss_bytes(pid)
    while current != previous:
        time.sleep(0.5)
        previous, current = current, rss_bytes(pid)
    return current


# -- memory per stream ---------------------------------------------------------


def stream_round(root: Path, streams: int) -> dict[str, float]:
    empty, full = root / "empty" / "data", root / f"full-{streams}" / "data"
    if not full.exists():
        build(empty, 0, 0)
        build(full, streams, streams * STREAM_BYTES)
    base = recovered_rss(empty, 0)
    with_streams = recovered_rss(full, streams)
    return {
        "recovered_bytes_per_stream": (with_streams[0] - base[0]) / streams,
        "accessed_bytes_per_stream": (with_streams[1] - base[1]) / streams,
        "rss_empty_mib": base[0] / 2**20,
    }


def recovered_rss(data: Path, streams: int) -> tuple[int, int]:
    """(RSS after recovery, RSS after a HEAD of every stream)."""
    # Idle actors and sweeps would blur the figure: actors exit at once, the sweep waits.
    env = {"TRIO_STREAMS_ACTOR_IDLE_S": "0.1", "TRIO_STREAMS_EXPIRY_SWEEP_INTERVAL_S": "3600"}
    server = ServerProcess(data, data.parent / "server.log", env=env)
    try:
        server.wait_healthy(600.0)
        recovered = settled_rss(server.process.pid)
        head_all(server.port, streams)
        return recovered, settled_rss(server.process.pid)
    finally:
        assert server.stop() == 0, "the server did not stop cleanly"


def head_all(port: int, streams: int) -> None:
    """A HEAD of every stream, pipelined on one keep-alive connection in batches:
    an HTTP client library would spend minutes of CPU on 100,000 requests."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for first in range(0, streams, HEAD_BATCH):
            batch = range(first, min(streams, first + HEAD_BATCH))
            sock.sendall(b"".join(f"HEAD {PREFIX}{_name(n)} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in batch))
            received = b""
            while received.count(b"\r\n\r\n") < len(batch):
                chunk = sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                received += chunk
            assert received.count(b"HTTP/1.1 200 ") == len(batch), received[:300]


# -- memory and descriptors per live reader --------------------------------------


def reader_round(root: Path, readers: int, mode: str) -> dict[str, float]:
    data = root / f"readers-{mode}-{time.monotonic_ns()}" / "data"
    data.mkdir(parents=True)
    env = {"TRIO_STREAMS_CONNECTIONS_MAX": str(readers + 100), "TRIO_STREAMS_LONG_POLL_TIMEOUT_MS": str(HOLD_MS),
           "TRIO_STREAMS_SSE_CONNECTION_S": str(HOLD_MS / 1000)}
    server = ServerProcess(data, data.parent / "server.log", env=env)
    try:
        server.wait_healthy(60.0)
        for number in range(READER_STREAMS):
            assert httpx.put(server.url + PREFIX + f"r/{number}", timeout=10.0).status_code == 201
        park(server, min(50, readers), mode)  # first use of the code paths, not counted
        pid = server.process.pid
        before_rss, before_fds = settled_rss(pid), fds(pid)
        held = park(server, readers, mode, keep=True)
        after_rss, after_fds = settled_rss(pid), fds(pid)
        for sock in held:
            sock.close()
        return {"bytes_per_reader": (after_rss - before_rss) / readers, "fds_per_reader": (after_fds - before_fds) / readers}
    finally:
        assert server.stop() == 0, "the server did not stop cleanly"


def park(server: ServerProcess, count: int, mode: str, keep: bool = False) -> list[socket.socket]:
    """Opens ``count`` live reads and waits until the server has subscribed every one."""
    start = server.metric("trio_streams_subscribers")
    held = []
    for number in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port))
        path = f"{PREFIX}r/{number % READER_STREAMS}?offset=now&live={mode}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        held.append(sock)
    wait_for(lambda: server.metric("trio_streams_subscribers") >= start + count, PARK_TIMEOUT_S, f"{count} {mode} readers")
    if keep:
        return held
    for sock in held:
        sock.close()
    wait_for(lambda: server.metric("trio_streams_subscribers") <= start, PARK_TIMEOUT_S, "readers to leave")
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sizing-") as tmp:
        root = Path(tmp)
        report("streams", [stream_round(root, args.streams) for _ in range(args.rounds)])
        for mode in ("long-poll", "sse"):
            report(f"{mode} readers", [reader_round(root, args.readers, mode) for _ in range(args.rounds)])


def report(what: str, rounds: list[dict[str, float]]) -> None:
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        print(f"{what:<18} {key:<28} median {statistics.median(values):10.1f}   runs {[round(v, 1) for v in values]}",
              flush=True)


if __name__ == "__main__":
    main()
