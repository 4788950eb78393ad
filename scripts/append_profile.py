#!/usr/bin/env python3
"""Durable appends and JSON batches, ours against the Node reference server (file-backed).

Targets 3 and 4 of the performance issue, measured side by side in one run:
both servers run at once on loopback, each scenario runs on each server back
to back and the order alternates between rounds, so they share the machine's
noise. The load comes from a separate process (this file, ``_load``) so it
has a core of its own; it reports its own CPU share, and a run where it was
near a full core is flagged (the generator, not the server, was the limit).

Scenarios (bounded in requests and time):
  seq       1 connection, sequential 100-byte appends -> p50/p99 latency
  c64s1     64 connections append 100-byte records to 1 stream -> appends/s
  c64s64    64 connections, one stream each -> appends/s
  json100   16 connections POST JSON arrays of 100 messages -> messages/s

    .venv/bin/python scripts/append_profile.py [--rounds 3] [--scenarios seq,c64s1,c64s64,json100]
        [--source DIR] [--no-node] [--profile DIR]

``--source DIR`` serves another checkout's code (``git archive main | tar -x -C DIR``)
as a second "ours" (label ``before``), for a before/after ratio in the same run.
``--profile DIR`` records each scenario on our server with py-spy (when it is
installed) and prints the functions that cost most (self and inclusive time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_SERVER = ROOT / "tests" / "conformance" / "reference_server.mjs"
PREFIX = "/v1/stream/"
SCENARIOS = {
    "seq": dict(conns=1, streams=1, requests=1500, json=False),
    "c64s1": dict(conns=64, streams=1, requests=8000, json=False),
    "c64s64": dict(conns=64, streams=64, requests=8000, json=False),
    "json100": dict(conns=16, streams=1, requests=1500, json=True),
}
TIME_LIMIT_S = 20.0
RECORD = b"0123456789abcdef" * 6 + b"0123"  # 100 bytes
LOAD_BUSY = 0.90  # share of one core at which the generator, not the server, may be the limit


# -- load generator (its own process) -------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers here carry no body or a Content-Length."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.closing = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc)))

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value:
                self.closing = True
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result(int(head[9:12]))


class Client:
    """Reconnects when the server ends a connection (Hypercorn does after 1000 requests)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Conn | None = None

    async def request(self, data: bytes) -> int:
        if self.conn is None or self.conn.closing:
            if self.conn is not None:
                self.conn.transport.close()
            _, self.conn = await asyncio.get_running_loop().create_connection(Conn, "127.0.0.1", self.port)
        self.conn.waiter = asyncio.get_running_loop().create_future()
        self.conn.transport.write(data)
        return await self.conn.waiter


def json_body(batch: int) -> bytes:
    return json.dumps([{"id": i, "user": "u-17", "kind": "chat.message", "text": "hello world " * 4, "n": 1.5}
                       for i in range(batch)], separators=(",", ":")).encode()


def post(port: int, name: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {PREFIX}{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def load(spec: dict) -> dict:
    port, scenario = spec["port"], SCENARIOS[spec["scenario"]]
    content_type = "application/json" if scenario["json"] else "application/octet-stream"
    body = json_body(100) if scenario["json"] else RECORD
    requests = [post(port, f"{spec['tag']}-{i}", body, content_type) for i in range(scenario["streams"])]
    clients = [Client(port) for _ in range(scenario["conns"])]
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()
    issued = 0

    async def writer(i: int, count: int | None) -> None:
        nonlocal issued
        deadline = time.perf_counter() + TIME_LIMIT_S
        request = requests[i % len(requests)]
        while (count is None and issued < scenario["requests"] and time.perf_counter() < deadline) or count:
            if count is None:
                issued += 1
            else:
                count -= 1
            started = time.perf_counter()
            status = await clients[i].request(request)
            if status in (200, 204):
                if count is None:
                    latencies.append(time.perf_counter() - started)
            else:
                errors[status] += 1

    await asyncio.wait_for(asyncio.gather(*(writer(i, 5) for i in range(len(clients)))), 30)  # warm-up
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:  # a request still unanswered well after the time limit ends the run (counted as stuck)
        await asyncio.wait_for(asyncio.gather(*(writer(i, None) for i in range(len(clients)))), TIME_LIMIT_S + 15)
    except asyncio.TimeoutError:
        errors[0] += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    per_request = 100 if scenario["json"] else 1
    return dict(per_s=len(latencies) * per_request / wall, p50_ms=latencies[len(latencies) // 2] * 1e3,
                p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3, load_cpu=cpu / wall,
                errors=dict(errors), done=len(latencies))


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, label: str, workdir: Path, code: Path | None = None) -> None:
        self.label, self.port = label, free_port()
        data = workdir / label
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data)]
        env = dict(os.environ)
        if label == "node":
            command = ["node", str(NODE_SERVER), *common]
        else:
            command = [sys.executable, "-m", "trio_streams", "serve", *common, "--log-level", "warning"]
            if code is not None:
                env["PYTHONPATH"] = str(code)
        self.log = open(workdir / f"{label}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, cwd=workdir if code else ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if self.label == "node" or urllib.request.urlopen(
                            f"http://127.0.0.1:{self.port}/healthz", timeout=2).status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.label} not ready")

    def create(self, name: str, content_type: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{PREFIX}{name}", method="PUT",
                                         headers={"content-type": content_type})
        urllib.request.urlopen(request, timeout=10).close()

    def cpu_s(self) -> float:
        """User and system CPU of the server process, all threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_counters(self) -> dict[str, float]:
        """Our server's WAL events and fsyncs so far (from /metrics); nothing for the Node server."""
        if self.label == "node":
            return {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        counters = {}
        for line in text.splitlines():
            for key in ("events", "fsyncs"):
                if line.startswith(f"trio_streams_log_{key}_total "):
                    counters[key] = float(line.split()[1])
        return counters

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=15)
        self.log.close()


def run_load(server: Server, scenario: str, tag: str, profile: Path | None) -> dict:
    spec = SCENARIOS[scenario]
    content_type = "application/json" if spec["json"] else "application/octet-stream"
    for i in range(spec["streams"]):
        server.create(f"{tag}-{i}", content_type)
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if profile is not None and server.label != "node" and py_spy:
        out = profile / f"{server.label}-{scenario}.txt"
        spy = subprocess.Popen([py_spy, "record", "-p", str(server.proc.pid), "-r", "250", "--format", "raw",
                                "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    cpu_before, log_before = server.cpu_s(), server.log_counters()
    try:
        done = subprocess.run([sys.executable, __file__, "_load"], input=json.dumps(
            dict(port=server.port, scenario=scenario, tag=tag)), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # a server that stopped answering: the round goes on without it
        done = subprocess.CompletedProcess([], 1, "", f"{server.label} {scenario}: no result within 120 s")
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        print(top_functions(profile / f"{server.label}-{scenario}.txt"), file=sys.stderr)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout)
    # Warm-up requests included: 5 per connection.
    result["cpu_us"] = (server.cpu_s() - cpu_before) * 1e6 / (result["done"] + 5 * spec["conns"])
    if log_before:
        after = server.log_counters()
        result["events_per_fsync"] = (after["events"] - log_before["events"]) / max(1, after["fsyncs"] - log_before["fsyncs"])
    return result


def top_functions(collapsed: Path, count: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")]
        n = int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    rows = [f"{collapsed.name}: {total} samples", "  self%  incl%  function"]
    for name, n in own.most_common(count):
        rows.append(f"  {100 * n / total:5.1f}  {100 * inclusive[name] / total:5.1f}  {name}")
    rows.append("  -- inclusive --")
    for name, n in inclusive.most_common(count):
        rows.append(f"  {100 * own[name] / total:5.1f}  {100 * n / total:5.1f}  {name}")
    return "\n".join(rows)


def main() -> int:
    if sys.argv[1:] == ["_load"]:
        print(json.dumps(asyncio.run(load(json.loads(sys.stdin.read())))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--source", type=Path, help="another checkout, served as 'before'")
    parser.add_argument("--no-node", action="store_true")
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles of our server")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="append-profile-") as tmp:
        servers = [Server("ours", Path(tmp))]
        if args.source:
            servers.append(Server("before", Path(tmp), args.source.resolve()))
        if not args.no_node:
            servers.append(Server("node", Path(tmp)))
        results: dict = collections.defaultdict(list)
        try:
            for rnd in range(args.rounds):
                order = servers if rnd % 2 == 0 else servers[::-1]
                for scenario in scenarios:
                    for server in order:
                        try:
                            res = run_load(server, scenario, f"{scenario}-r{rnd}", args.profile if rnd == 0 else None)
                        except RuntimeError as error:
                            print(f"round {rnd} {scenario:8} {server.label:6} failed: {error}", file=sys.stderr)
                            continue
                        results[server.label, scenario].append(res)
                        flag = "  LOAD-BOUND" if res["load_cpu"] >= LOAD_BUSY else ""
                        print(f"round {rnd} {scenario:8} {server.label:6} {res['per_s']:9.0f}/s p50 {res['p50_ms']:6.2f} ms"
                              f" p99 {res['p99_ms']:6.2f} ms cpu/req {res['cpu_us']:5.0f} us"
                              f" events/fsync {res.get('events_per_fsync', 0):5.1f} load cpu {res['load_cpu']:.2f} {res['errors'] or ''}{flag}",
                              file=sys.stderr)
        finally:
            for server in servers:
                server.stop()
    print(report(results, [s.label for s in servers], scenarios))
    return 0


def report(results: dict, labels: list[str], scenarios: list[str]) -> str:
    rows = ["| scenario | " + " | ".join(labels) + " | " + " | ".join(f"{l}/node" for l in labels if l != "node") + " |"]
    rows.append("|---" * (1 + len(labels) + sum(l != "node" for l in labels)) + "|")
    for scenario in scenarios:
        key = "p50_ms" if scenario == "seq" else "per_s"
        med = {l: statistics.median(r[key] for r in results[l, scenario]) for l in labels if results[l, scenario]}
        if len(med) < len(labels):
            continue
        cells = [f"{med[l]:.2f} ms p50" if key == "p50_ms" else f"{med[l]:,.0f}/s" for l in labels]
        ratios = [f"{med[l] / med['node']:.2f}" for l in labels if l != "node" and "node" in med]
        rows.append(f"| {scenario} | " + " | ".join(cells + ratios) + " |")
        cpu = {l: statistics.median(r["cpu_us"] for r in results[l, scenario]) for l in labels}
        rows.append(f"| {scenario} server CPU per request | " + " | ".join(f"{cpu[l]:.0f} us" for l in labels)
                    + " |" * (1 + len(ratios)))
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
