"""Server processes for the benchmark scripts.

``ServerProcess`` (scripts/checkpoint_latency.py, restart_time.py, ...): a
real ``trio-streams serve`` on a data directory (optionally from another
source tree, e.g. an export of ``main`` for a before/after figure), timed to
``/healthz`` 200, its metrics read, stopped.

``ManagedProcess`` (scripts/bench): any server command in its own process
group with its output in a log file, ready when a predicate says so, stopped
with SIGTERM then SIGKILL; plus what the bench reads from /proc about it.
tests/conftest.py's ``Server`` could reuse ``free_port``, the start/stop of
``ManagedProcess`` and ``raise_nofile_limit``; it keeps its own copies for now.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def raise_nofile_limit() -> int:
    """Raises this process's soft open-file limit to the hard one; returns it.

    Children inherit it, so a launcher calls this before starting servers
    that must hold thousands of connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None if it is gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    except OSError:
        return None


def proc_memory(pid: int | None) -> dict[str, float]:
    """VmRSS and VmHWM in MiB and the thread count of a process ({} if it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
                elif key == "Threads":
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class ManagedProcess:
    """A server command in its own session, logged to a file, stopped by process group."""

    def __init__(self, command: list[str], log_path: Path, *, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.command, self.log_path, self.cwd = command, log_path, cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> float:
        """Seconds until ``ready()`` is true; RuntimeError if the process exits or time runs out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"exited with {code} before ready:\n{self.log_tail()}")
            if ready():
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 8.0) -> int | None:
        """SIGTERM to the process group, SIGKILL if it lingers; the exit status."""
        if self.proc is None:
            return None
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()
