"""Shutdown time with readers that never read, and the cost they put on others.

Starts a real ``trio-streams serve`` on a temporary directory, fills one stream
with more data than any socket buffer holds, attaches N readers (SSE and
long-poll, every fifth a long-poll) whose sockets have tiny receive buffers and
are never read, measures the p50/p99 of small /healthz requests while they
hang on, then sends SIGTERM and measures how long the process takes to exit.
Repeats for a few rounds and prints medians.

    .venv/bin/python scripts/slow_readers.py [--readers 50] [--rounds 3] [--grace-s 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EXE = Path(sys.executable).with_name("trio-streams")
STREAM_BYTES = 8 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(directory: str, port: int, grace_s: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(EXE), "serve", "--port", str(port), "--data-dir", directory, "--shutdown-grace-s", str(grace_s),
         "--log-level", "warning"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not become ready")


def _stalled_reader(port: int, live: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/stream/big?live={live}&offset=-1 HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    return sock


def _healthz_latencies(port: int, count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()
            out.append(time.perf_counter() - started)
    return out


def one_round(readers: int, grace_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        port = _free_port()
        proc = _start(directory, port, grace_s)
        url = f"http://127.0.0.1:{port}/v1/stream/big"
        httpx.put(url, headers={"content-type": "text/plain"}).raise_for_status()
        for _ in range(STREAM_BYTES // (1024 * 1024)):
            httpx.post(url, content=b"x" * 1024 * 1024, headers={"content-type": "text/plain"},
                       timeout=30).raise_for_status()
        sockets = [_stalled_reader(port, "long-poll" if i % 5 == 0 else "sse") for i in range(readers)]
        time.sleep(1.0)  # let every response fill its reader's buffers and block
        latencies = sorted(_healthz_latencies(port, 200))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = None
        exit_s = time.monotonic() - started
        for sock in sockets:
            sock.close()
        return {"exit_s": exit_s if status == 0 else float("inf"),
                "healthz_p50_ms": latencies[len(latencies) // 2] * 1000,
                "healthz_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=5.0)
    args = parser.parse_args()
    rounds = [one_round(args.readers, args.grace_s) for _ in range(args.rounds)]
    print(f"{args.readers} readers that never read, shutdown grace {args.grace_s:g} s, "
          f"{args.rounds} rounds ({os.cpu_count()} cores):")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        print(f"  {key}: median {statistics.median(values):.2f} (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
