"""Connection flood: idle connections and stalled bodies against a real server.

Reproduces the hostile-input review's Finding 5 (1,100 idle connections and
100 stalled POST bodies made /healthz time out) against `trio-streams serve`
with a given connections_max and read timeout, and reports what happened:
how many connections were shed, /healthz latency on a fresh connection and
on one opened before the flood, and how long stalled bodies were held.

    .venv/bin/python scripts/conn_flood.py [--idle 1100] [--stalled 100] \\
        [--connections-max 1000] [--read-timeout-s 2]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".venv" / "bin" / "trio-streams"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_ms(sock: socket.socket) -> str:
    """GET /healthz on a raw keep-alive connection (httpx would drop an idle pooled one after 5 s)."""
    started = time.perf_counter()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while not received.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            return f"connection closed after {received[:12]!r}"
        received += chunk
    return f"{received[9:12].decode()} in {(time.perf_counter() - started) * 1000:.1f} ms"


def fresh_healthz_ms(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return healthz_ms(sock)


def wait_ready(port: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if fresh_healthz_ms(port).startswith("200"):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not become ready")


def open_many(port: int, count: int, payload: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def wait_all_closed(socks: list[socket.socket], opened_at: float, timeout_s: float) -> tuple[int, float]:
    """How many of ``socks`` the server closed within ``timeout_s``, and when the last one went."""
    closed, last = 0, 0.0
    for sock in socks:
        sock.settimeout(max(0.01, opened_at + timeout_s - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            continue
        except ConnectionResetError:
            pass
        closed += 1
        last = max(last, time.monotonic() - opened_at)
    return closed, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--connections-max", type=int, default=1000)
    parser.add_argument("--read-timeout-s", type=float, default=2.0)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [str(EXE), "serve", "--port", str(port), "--data-dir", data, "--log-level", "warning",
             "--connections-max", str(args.connections_max), "--keep-alive-timeout-s", "600",
             "--request-read-timeout-s", str(args.read_timeout_s)],
        )
        try:
            wait_ready(port)
            httpx.put(f"{url}/v1/stream/flood", headers={"content-type": "text/plain"})
            with socket.create_connection(("127.0.0.1", port), timeout=10) as early:
                print("healthz before the flood:", healthz_ms(early))
                stalled_at = time.monotonic()
                stalled = open_many(port, args.stalled, b"POST /v1/stream/flood HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\nabc")
                closed, last = wait_all_closed(stalled, stalled_at, args.read_timeout_s + 10)
                print(f"{args.stalled} stalled bodies: {closed} closed by the server, "
                      f"all within {last:.1f} s of being opened")
                idle_at = time.monotonic()
                idle = open_many(port, args.idle, b"")
                print(f"opened {args.idle} idle connections in {time.monotonic() - idle_at:.1f} s")
                print("healthz on a connection from before the flood:", healthz_ms(early))
                print("healthz on a fresh connection during the flood:", fresh_healthz_ms(port))
                for sock in idle + stalled:
                    sock.close()
                closed_at = time.monotonic()
                while (answer := fresh_healthz_ms(port)).startswith("503") and time.monotonic() < closed_at + 30:
                    time.sleep(0.05)
                print(f"healthz on a fresh connection {time.monotonic() - closed_at:.2f} s after the flood closed:",
                      answer)
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                print("\n".join(line for line in metrics.splitlines() if "connections_" in line))
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()
