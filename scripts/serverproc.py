"""A real ``trio-streams serve`` process for the benchmark scripts.

Shared by scripts/checkpoint_latency.py and scripts/restart_time.py: start a
server on a data directory (optionally from another source tree, e.g. an
export of ``main`` for a before/after figure), time it to ``/healthz`` 200,
read its metrics, stop it.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, log_path: Path, *, code: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, **(env or {})}
        if code is not None:  # run another source tree (its package first on the path)
            environ["PYTHONPATH"] = str(code)
        command = [sys.executable, "-m", "trio_streams", "serve", "--data-dir", str(data_dir),
                   "--port", str(self.port), "--log-level", "warning"]
        self.started = time.monotonic()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Not the repository's directory: ``-m`` puts the working directory first
        # on the path, and its trio_streams would shadow ``code``.
        self.process = subprocess.Popen(command, env=environ, cwd=data_dir.parent, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds from process start to the first ``/healthz`` 200."""
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before it was healthy")
            try:
                if httpx.get(self.url + "/healthz", timeout=60.0).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"server not healthy after {timeout_s} s")

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=30.0).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 600.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        finally:
            self._log.close()


def summary(samples_s: list[float]) -> str:
    """Median, p99 and max of latencies, in milliseconds."""
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.1f} ms "
            f"p99={p99 * 1000:.1f} ms max={ordered[-1] * 1000:.1f} ms")
