"""Large JSON appends versus everyone else: latency of small requests, server memory.

Starts a real ``trio-streams serve`` on a temporary directory. A separate
probe process sends small requests at a steady rate for the whole run
(GET /healthz and small JSON appends to their own stream, on keep-alive
connections) and records each one's latency. Each scenario sends 60 MiB
JSON appends (one, or several in parallel) while the probe runs; the
script reports p50/p99 of the probe's requests that started while the
appends were in flight, next to a quiet baseline, and the server's peak RSS
growth (VmRSS sampled every millisecond) relative to the body size.

Scenarios:
  empties   the issue's body, ``[{},{},...]`` (refused by the messages limit)
  realistic 60k messages of about 1 KiB (accepted)
  parallel  four realistic bodies at once, to four streams

    .venv/bin/python scripts/json_append_load.py [--rounds 3] [--mib 60] [--scenarios empties,realistic,parallel]

``--source DIR`` serves another checkout's code (``git archive main | tar -x -C DIR``)
to compare before and after.

``--loop-steps`` instead serves in this process with a Trio instrument and
reports the longest event-loop task steps during each scenario's appends:
the stall itself, without the noise of a shared machine's scheduling.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".venv" / "bin" / "trio-streams"
PREFIX = "/v1/stream/"
JSON = {"content-type": "application/json"}
PROBE_INTERVAL_S = 0.01  # per probe connection: 100 requests/s each
PROBE_CONNECTIONS = 2  # one for /healthz, one for small appends
QUIET_S = 3.0


# -- bodies ---------------------------------------------------------------------


def empties_body(size: int) -> bytes:
    count = (size - 1) // 3
    return b"[" + b"{}," * (count - 1) + b"{}]"


def realistic_body(size: int) -> bytes:
    pad = "lorem ipsum dolor sit amet " * 34  # about 1 KiB per message
    count = size // 1024
    messages = [{"id": i, "user": f"user-{i % 977}", "kind": "chat.message", "text": pad[: 900 + i % 50],
                 "tags": ["a", "b", i % 7], "at": 1_700_000_000.5 + i} for i in range(count)]
    return json.dumps(messages, separators=(",", ":")).encode()


# -- the server -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The editable install's import hook outranks sys.path: drop it to import another checkout.
_RUN_FROM = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, {source!r})
from trio_streams.__main__ import main
sys.exit(main())
"""


def start_server(data_dir: str, port: int, source: str | None = None) -> subprocess.Popen:
    """``source``: another checkout's directory, to measure its code (before/after comparisons)."""
    program = [sys.executable, "-c", _RUN_FROM.format(source=source)] if source else [str(EXE)]
    command = [*program, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir,
               "--append-bytes-max", str(64 << 20), "--log-level", "warning"]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not become ready")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=JSON if body is not None or method == "PUT" else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.001)

    def __enter__(self) -> RssSampler:
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the probe (its own process, so the client side's GIL never skews it) --------------


def probe(port: int, stop: multiprocessing.Event, out: multiprocessing.Queue) -> None:
    samples: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def run(method: str, path: str, body: bytes | None) -> None:
        kind = "healthz" if method == "GET" else "append"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            conn.request(method, path, body=body, headers=JSON if body else {})
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 204), response.status
            with lock:
                samples.append((kind, started, time.monotonic() - started))
            next_at += PROBE_INTERVAL_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=run, args=("GET", "/healthz", None)),
               threading.Thread(target=run, args=("POST", PREFIX + "probe", b'{"probe":true}'))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(samples)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def window(samples: list[tuple[str, float, float]], start: float, end: float, kind: str) -> list[float]:
    return [latency for k, at, latency in samples if k == kind and start <= at <= end]


# -- scenarios ---------------------------------------------------------------------


def run_round(port: int, pid: int, body: bytes, parallel: int, round_no: int) -> dict[str, float]:
    paths = [f"{PREFIX}big-{round_no}-{i}-{time.monotonic_ns()}" for i in range(parallel)]
    for path in paths:
        assert request(port, "PUT", path)[0] == 201
    results: list[tuple[int, float]] = []

    def send(path: str) -> None:
        started = time.monotonic()
        status, _ = request(port, "POST", path, body)
        results.append((status, time.monotonic() - started))

    baseline_rss = rss_kib(pid)
    with RssSampler(pid) as rss:
        started = time.monotonic()
        senders = [threading.Thread(target=send, args=(p,)) for p in paths]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        ended = time.monotonic()
    return {"start": started, "end": ended, "status": results[0][0],
            "append_s": statistics.median(s for _, s in results),
            "rss_growth_x": (rss.peak - baseline_rss) * 1024 / (len(body) * parallel)}


def scenario(port: int, pid: int, body: bytes, parallel: int, rounds: int) -> list[dict[str, float]]:
    out = []
    for i in range(rounds):
        out.append(run_round(port, pid, body, parallel, i))
        time.sleep(1.0)  # let the server settle (checkpoint, freed memory) between rounds
    return out


# -- longest event-loop steps (in-process server) ---------------------------------------


def loop_steps(bodies: dict[str, tuple[bytes, int]], chosen: list[str]) -> None:
    import functools

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from trio_streams.config import Settings
    from trio_streams.http.app import App

    class Steps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.longest: list[tuple[float, str]] = []
            self.watching = False
            self._started: dict[object, float] = {}

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self._started[task] = time.perf_counter()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            started = self._started.pop(task, None)
            if started is not None and self.watching:
                self.longest = sorted([*self.longest, (time.perf_counter() - started, task.name)], reverse=True)[:3]

    def post_all(port: int, name: str, finished: threading.Event) -> None:
        body, parallel = bodies[name]
        paths = [f"{PREFIX}{name}-{i}" for i in range(parallel)]
        for path in paths:
            request(port, "PUT", path)
        senders = [threading.Thread(target=request, args=(port, "POST", path, body)) for path in paths]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        finished.set()

    async def serve_one(name: str, steps: Steps) -> None:
        with tempfile.TemporaryDirectory() as data_dir:
            port = free_port()
            config = Config()
            config.bind, config.errorlog = [f"127.0.0.1:{port}"], None
            finished, stop = threading.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(serve, App(Settings(data_dir=data_dir)), config, shutdown_trigger=stop.wait))
                await trio.sleep(1.0)  # started, recovered
                steps.watching = True
                threading.Thread(target=post_all, args=(port, name, finished), daemon=True).start()
                await trio.to_thread.run_sync(finished.wait)
                steps.watching = False
                stop.set()

    print("| scenario | longest event-loop task steps while the appends ran |")
    print("|---|---|")
    for name in chosen:
        steps = Steps()
        trio.run(serve_one, name, steps, instruments=[steps])
        print(f"| {name} | " + ", ".join(f"{d * 1000:.1f} ms ({task})" for d, task in steps.longest) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=60)
    parser.add_argument("--scenarios", default="empties,realistic,parallel")
    parser.add_argument("--source", help="serve the code of this checkout instead (e.g. an export of main)")
    parser.add_argument("--loop-steps", action="store_true", help="report the longest event-loop steps instead")
    args = parser.parse_args()
    size = args.mib << 20
    bodies = {"empties": (empties_body(size), 1), "realistic": (realistic_body(size), 1),
              "parallel": (realistic_body(size), 4)}
    chosen = args.scenarios.split(",")
    if args.loop_steps:
        loop_steps(bodies, chosen)
        return
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        server = start_server(data_dir, port, args.source)
        try:
            assert request(port, "PUT", PREFIX + "probe")[0] == 201
            stop, queue = multiprocessing.Event(), multiprocessing.Queue()
            prober = multiprocessing.Process(target=probe, args=(port, stop, queue))
            prober.start()
            time.sleep(0.5)
            quiet_start = time.monotonic()
            time.sleep(QUIET_S)
            quiet_end = time.monotonic()
            rounds = {name: scenario(port, server.pid, bodies[name][0], bodies[name][1], args.rounds)
                      for name in chosen}
            stop.set()
            samples = queue.get(timeout=120)
            prober.join()
        finally:
            server.terminate()
            server.wait(30)
    report(samples, (quiet_start, quiet_end), rounds, bodies)


def report(samples, quiet, rounds, bodies) -> None:  # type: ignore[no-untyped-def]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print("| scenario | body | status | append time | probe | p50 | p99 | added p99 | max | peak RSS growth / bytes in flight |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("healthz", "append"):
        base = window(samples, *quiet, kind)
        print(f"| quiet | – | – | – | {kind} | {percentile(base, 0.5) * 1000:.1f} ms | {percentile(base, 0.99) * 1000:.1f} ms "
              f"| – | {max(base) * 1000:.0f} ms | – |")
    for name, results in rounds.items():
        body, parallel = bodies[name]
        label = f"{len(body) / (1 << 20):.0f} MiB" + (f" ×{parallel}" if parallel > 1 else "")
        for kind in ("healthz", "append"):
            base_p99 = percentile(window(samples, *quiet, kind), 0.99) * 1000
            during = [window(samples, r["start"], r["end"], kind) for r in results]
            p50 = statistics.median(percentile(d, 0.5) * 1000 for d in during)
            p99 = statistics.median(percentile(d, 0.99) * 1000 for d in during)
            worst = statistics.median(max(d, default=float("nan")) * 1000 for d in during)
            print(f"| {name} | {label} | {results[0]['status']} | {statistics.median(r['append_s'] for r in results):.2f} s "
                  f"| {kind} | {p50:.1f} ms | {p99:.1f} ms | {p99 - base_p99:+.1f} ms | {worst:.0f} ms "
                  f"| {statistics.median(r['rss_growth_x'] for r in results):.2f}× |")
    print(f"(medians over {len(next(iter(rounds.values())))} rounds of the probe's requests started while the appends "
          f"were in flight; quiet: {QUIET_S:.0f} s before them. RSS growth: peak VmRSS during the appends minus VmRSS "
          f"before, over the bytes of all bodies in flight)")


if __name__ == "__main__":
    main()
