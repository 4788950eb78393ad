#!/usr/bin/env python3
"""Long-poll fan-out through the nginx edge against readers on the origin directly.

The point of the edge (deploy/nginx/edge.conf): identical long-polls collapse
into one upstream request, so the origin's cost per append stays flat as
readers grow. Each case parks N keep-alive readers at one stream's tail (all
sending the same URL, the cursor of the previous answer included), appends
once at the origin, and reads every answer; ``--rounds`` times. Reported per
case: answers delivered, the origin's CPU seconds (utime + stime) and the
long-poll requests it answered per append, nginx's CPU seconds, and delivery
times from the append to each reader's last byte (median, p99, max).

  python3 scripts/edge_fanout.py [--direct 1000] [--edge 1000 10000] [--rounds 5]

The open-file limit is raised to the hard one (readers are sockets of this
process; the origin and nginx inherit it); nginx gets worker_connections
for twice the largest case. Results: a table, and JSON in
build/edge_fanout.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
from nginxproc import edge_http, install_nginx, main_config, requests_in_progress, running, start_origin  # noqa: E402
from pollers import Pollers  # noqa: E402
from serverproc import ManagedProcess, free_port, proc_cpu_s, raise_nofile_limit  # noqa: E402

PARK_TIMEOUT_S = 120.0
DELIVERY_TIMEOUT_S = 120.0
PARK_POLL_INTERVAL_S = 0.2
# Descriptors beyond the readers: the origin's files, nginx's upstream connections, this script's clients.
SPARE_FDS = 512


@dataclass
class Case:
    route: str  # "direct" or "edge"
    readers: int
    rounds: int
    delivered: int
    origin_cpu_s: float
    origin_cpu_s_per_append: float
    origin_long_polls_per_append: float
    nginx_cpu_s: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    delivery_max_ms: float


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--direct", type=int, nargs="*", default=[1000], help="reader counts on the origin directly")
    p.add_argument("--edge", type=int, nargs="*", default=[1000, 10_000], help="reader counts through nginx")
    p.add_argument("--rounds", type=int, default=5, help="appends per case")
    args = p.parse_args(argv)
    largest = max([*args.direct, *args.edge])
    limit = raise_nofile_limit()
    if limit < largest + SPARE_FDS:
        print(f"the open-file limit ({limit}) is too low for {largest} readers", file=sys.stderr)
        return 2
    nginx = install_nginx()
    cases = []
    with tempfile.TemporaryDirectory(prefix="edge-fanout-") as tmp:
        root = Path(tmp)
        room = str(largest + SPARE_FDS)
        origin, origin_port = start_origin(root, ["--log-level", "warning"], {
            "TRIO_STREAMS_CONNECTIONS_MAX": room, "TRIO_STREAMS_SUBSCRIBERS_PER_STREAM_MAX": room})
        try:
            edge_port, status_port = free_port(), free_port()
            # nginx reuses (closes) connections that have not sent a request yet once its
            # worker_connections run short: room for twice the readers. Its descriptors are
            # this process's raised limit (it may not raise its own past the hard limit).
            conf = main_config(root, edge_http(root, origin_port, edge_port, status_port=status_port),
                               worker_connections=2 * largest + SPARE_FDS)
            with running(nginx, conf, root, f"http://127.0.0.1:{edge_port}"):
                nginx_pids = family(nginx_master(root))
                for n in args.direct:
                    cases.append(run_case("direct", n, args.rounds, origin, origin_port, origin_port, None, []))
                for n in args.edge:
                    cases.append(run_case("edge", n, args.rounds, origin, origin_port, edge_port, status_port,
                                          nginx_pids))
        finally:
            origin.stop()
    report(cases)
    return 0 if all(c.delivered == c.readers * c.rounds for c in cases) else 1


def nginx_master(root: Path) -> int:
    """nginx's master process, from the pid file main_config names."""
    return int((root / "nginx.pid").read_text().strip())


def family(pid: int) -> list[int]:
    """``pid`` and its children (nginx's master and workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def run_case(route: str, n: int, rounds: int, origin: ManagedProcess, origin_port: int, port: int,
             status_port: int | None, nginx_pids: list[int]) -> Case:
    origin_url = f"http://127.0.0.1:{origin_port}"
    path = f"/v1/stream/fanout-{route}-{n}-{time.monotonic_ns()}"
    with httpx.Client(timeout=30) as client:
        assert client.put(origin_url + path, headers={"Content-Type": "text/plain"}).status_code == 201
        target = f"{path}?live=long-poll&offset={client.head(origin_url + path).headers['stream-next-offset']}"
        print(f"{route}: parking {n} readers", flush=True)
        with Pollers(port, n) as readers:
            origin_cpu, nginx_cpu = proc_cpu_s(origin.pid) or 0.0, _cpu(nginx_pids)
            polls = long_polls(client, origin_url)
            delays: list[float] = []
            for r in range(rounds):
                readers.send(target)
                wait_parked(client, origin_url, status_port, n)
                payload = f"round {r}".encode()
                appended_at = time.monotonic()
                assert client.post(origin_url + path, content=payload,
                                   headers={"Content-Type": "text/plain"}).status_code == 204
                answers = readers.collect(DELIVERY_TIMEOUT_S)
                delays += [a.done_at - appended_at for a in answers if (a.status, a.body) == (200, payload)]
                last = answers[0].headers
                target = f"{path}?cursor={last['stream-cursor']}&live=long-poll&offset={last['stream-next-offset']}"
            origin_cpu = (proc_cpu_s(origin.pid) or 0.0) - origin_cpu
            nginx_cpu = _cpu(nginx_pids) - nginx_cpu
            polls = settled_long_polls(client, origin_url) - polls
    ordered = sorted(delays) or [float("nan")]
    return Case(route, n, rounds, len(delays), round(origin_cpu, 2), round(origin_cpu / rounds, 3),
                round(polls / rounds, 2), round(nginx_cpu, 2), round(statistics.median(ordered) * 1000, 1),
                round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
                round(ordered[-1] * 1000, 1))


def _cpu(pids: list[int]) -> float:
    return sum(proc_cpu_s(pid) or 0.0 for pid in pids)


def long_polls(client: httpx.Client, origin_url: str) -> int:
    """Long-poll requests the origin has answered."""
    total = 0.0
    for line in client.get(origin_url + "/metrics").text.splitlines():
        if line.startswith("trio_streams_http_requests_total{") and 'kind="long_poll"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def settled_long_polls(client: httpx.Client, origin_url: str) -> int:
    """The count once answers sent are all counted (the origin counts each after its last byte)."""
    previous = -1
    while (current := long_polls(client, origin_url)) != previous:
        previous = current
        time.sleep(PARK_POLL_INTERVAL_S)
    return current


def wait_parked(client: httpx.Client, origin_url: str, status_port: int | None, n: int) -> None:
    """Until every reader waits: at the origin (direct), or in nginx with one at the origin (edge)."""
    end = time.monotonic() + PARK_TIMEOUT_S
    while True:
        if status_port is None:
            parked = _subscribers(client, origin_url) >= n
        else:
            parked = requests_in_progress(status_port) >= n and _subscribers(client, origin_url) >= 1
        if parked:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"{n} readers not parked after {PARK_TIMEOUT_S} s"
                               f" (nginx holds {requests_in_progress(status_port) if status_port else '-'},"
                               f" the origin {_subscribers(client, origin_url)})")
        time.sleep(PARK_POLL_INTERVAL_S)


def _subscribers(client: httpx.Client, origin_url: str) -> int:
    for line in client.get(origin_url + "/metrics").text.splitlines():
        if line.startswith("trio_streams_subscribers "):
            return int(float(line.split()[1]))
    return 0


def report(cases: list[Case]) -> None:
    print(f"\n{'route':7} {'readers':>7} {'delivered':>10} {'origin CPU s/append':>20} {'origin polls/append':>20} "
          f"{'nginx CPU s':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for c in cases:
        print(f"{c.route:7} {c.readers:>7} {c.delivered:>5}/{c.readers * c.rounds:<4} {c.origin_cpu_s_per_append:>20} "
              f"{c.origin_long_polls_per_append:>20} {c.nginx_cpu_s:>11} {c.delivery_p50_ms:>8} "
              f"{c.delivery_p99_ms:>8} {c.delivery_max_ms:>8}")
    out = ROOT / "build" / "edge_fanout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(c) for c in cases], indent=2) + "\n")
    print(f"\n{out}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
