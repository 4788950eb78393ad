"""The load generator: one scenario run in its own process.

    python -m scripts.bench.loadgen < spec.json > result.json

It runs in a process of its own so that it gets a core of its own and its
CPU can be measured: ``Meter`` reports the generator's CPU as a share of one
core over the timed phase (``loadgen_cpu_frac``) and the server's CPU from
/proc. The runner flags a run whose generator was near a full core: then the
generator, not the server, may have set the pace.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
import traceback
from typing import Any

from scripts.serverproc import proc_cpu_s, raise_nofile_limit

from .client import Client

PREFIX = "/v1/stream/"
Spec = dict[str, Any]
Result = dict[str, Any]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, q in 0..100."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


def latency_summary(samples_s: list[float], prefix: str = "") -> Result:
    """p50/p99/max in ms, plus the distribution's percentiles 0..100 for the charts."""
    if not samples_s:
        return {f"{prefix}p50_ms": None, f"{prefix}p99_ms": None, f"{prefix}max_ms": None}
    ms = [s * 1e3 for s in samples_s]
    return {f"{prefix}p50_ms": percentile(ms, 50), f"{prefix}p99_ms": percentile(ms, 99), f"{prefix}max_ms": max(ms),
            f"{prefix}percentiles_ms": [percentile(ms, q) for q in range(0, 101)]}


class Meter:
    """Wall time, generator CPU and server CPU over the timed phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.elapsed = self.gen_cpu = 0.0
        self.srv_cpu: float | None = None

    def __enter__(self) -> Meter:
        self.srv0 = proc_cpu_s(self.pid)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = usage.ru_utime + usage.ru_stime
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.gen_cpu = usage.ru_utime + usage.ru_stime - self.cpu0
        srv1 = proc_cpu_s(self.pid)
        self.srv_cpu = None if self.srv0 is None or srv1 is None else srv1 - self.srv0

    def report(self, requests: int = 0) -> Result:
        out: Result = {"elapsed_s": self.elapsed, "server_cpu_s": self.srv_cpu,
                       "loadgen_cpu_frac": self.gen_cpu / self.elapsed if self.elapsed else None}
        if requests and self.srv_cpu is not None:
            out["server_cpu_us_per_req"] = self.srv_cpu / requests * 1e6
        return out


async def quiesce(pid: int | None, quiet_s: float = 0.03, max_s: float = 0.4) -> float:
    """Waits until the server has used no CPU for ``quiet_s`` (at most ``max_s``); returns the wait.

    Before an append that wakes parked readers, the server must have parked
    them all; on a loaded machine a fixed sleep is not enough, and an append
    queued behind the last readers' requests would measure that queue.
    ``max_s`` stays below the long-poll timeout, so parked polls do not expire.
    """
    t0 = time.perf_counter()
    if not pid:
        return 0.0
    last, quiet_since = proc_cpu_s(pid), t0
    while time.perf_counter() - t0 < max_s:
        await asyncio.sleep(0.005)
        now, cpu = time.perf_counter(), proc_cpu_s(pid)
        if cpu != last:
            last, quiet_since = cpu, now
        elif now - quiet_since >= quiet_s:
            break
    return time.perf_counter() - t0


async def create(client: Client, name: str, content_type: str) -> str:
    """Creates a stream; its tail offset."""
    r = await client.request("PUT", PREFIX + name, headers=[("Content-Type", content_type)])
    if r.status not in (200, 201, 204):
        raise RuntimeError(f"PUT {name}: HTTP {r.status}")
    return r.header("stream-next-offset", "-1")


async def catch_up(client: Client, name: str, deadline: float, *, keep_bodies: bool = False
                   ) -> tuple[int, int, list[str], list[bytes]]:
    """Reads a stream from -1 following Stream-Next-Offset: (bytes, requests, problems, bodies)."""
    offset, total, requests, problems, bodies = "-1", 0, 0, [], []
    while True:
        r = await client.request("GET", f"{PREFIX}{name}?offset={offset}", keep_body=keep_bodies)
        requests += 1
        if r.status != 200:
            problems.append(f"catch-up GET {name} offset={offset}: HTTP {r.status}")
            break
        total += r.nbytes
        if r.body is not None:
            bodies.append(r.body)
        nxt = r.header("stream-next-offset")
        if r.header("stream-up-to-date").lower() == "true":
            break
        if not nxt or (nxt == offset and r.nbytes == 0):
            problems.append(f"catch-up GET {name}: no progress at offset={offset}")
            break
        offset = nxt
        if time.perf_counter() > deadline:
            problems.append("catch-up read hit its time limit")
            break
    return total, requests, problems, bodies


def main() -> int:
    from . import live, scenarios  # they import this module's helpers

    raise_nofile_limit()
    spec = json.load(sys.stdin)
    runners = {**scenarios.RUNNERS, **live.RUNNERS}
    result: Result
    try:
        result = asyncio.run(runners[spec["scenario"]](spec))
        result["reconnects"] = Client.reconnects
    except Exception as exc:  # reported, not raised: the runner records it as a failed run
        traceback.print_exc()  # the runner keeps the tail of stderr in the run's problems
        result = {"error": f"{type(exc).__name__}: {exc}", "problems": [f"load generator failed: {exc!r}"]}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
