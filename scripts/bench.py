#!/usr/bin/env python3
"""Side-by-side benchmark: trio_streams against the Node reference server.

One run starts every server under test at once (our `trio-streams serve`,
once per --fsync mode, and `node tests/conformance/reference_server.mjs`),
each with a fresh data directory under a temporary directory, on loopback.
It then repeats the scenarios for --rounds rounds; inside a round every
scenario runs on every server back to back, and the server order rotates
from round to round, so the servers share the machine's noise. Each scenario
run is driven by a separate load-generator process (this file, invoked as
`bench.py _loadgen`, raw HTTP/1.1 over asyncio protocols with keep-alive
connections) so the generator gets a core of its own and is measured: its
CPU use is reported, and a run where it was near 100% is flagged.

Scenarios (all bounded in requests and in time):
  append-1   C writers (16) append 100-byte records to 1 stream
  append-16  C writers append 100-byte records to 16 streams
             -> appends/s, p50/p99 request latency, server CPU per append
  read       catch-up read of a 16 MiB stream from offset -1, following
             Stream-Next-Offset until Stream-Up-To-Date -> MiB/s
  fanout     N long-poll readers (100) on one stream; once the server is
             idle (all polls parked) a writer appends one record; time from
             the append being sent, and from its ack, to each reader's
             data -> p50/p99 (ack->data is negative when a server answers
             the readers before the writer, as the reference server does)
  memory     VmRSS / VmHWM of each server process after the rounds

The verdict is medians over rounds and ratios ours/node, never a single
absolute number. Results: a table on stdout, build/bench.json, build/bench.md.

  .venv/bin/python scripts/bench.py [--rounds N] [--quick]
      [--fsync always,never] [--scenarios append-1,append-16,read,fanout]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
NODE_SERVER = ROOT / "tests" / "conformance" / "reference_server.mjs"
NODE_MODULES = ROOT / "tests" / "conformance" / "node_modules" / "@durable-streams" / "server"
OURS_EXE = ROOT / ".venv" / "bin" / "trio-streams"
PREFIX = "/v1/stream/"
CT = "application/octet-stream"
LONG_POLL_TIMEOUT_MS = 500
READY_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("append-1", "append-16", "read", "fanout")
LOADGEN_BUSY = 0.90  # a run whose generator used >= 90% of a core is flagged

# Per-scenario parameters: full run and --quick run.
PARAMS = {
    "full": {
        "rounds": 5,
        "append": dict(requests=1500, writers=16, record_bytes=100, warmup_per_conn=5, time_limit_s=15.0),
        "read": dict(stream_bytes=16 * 1024 * 1024, append_bytes=256 * 1024, reads=3, time_limit_s=20.0),
        "fanout": dict(readers=100, events=15, record_bytes=100, settle_s=0.02, time_limit_s=20.0),
    },
    "quick": {
        "rounds": 3,
        "append": dict(requests=500, writers=16, record_bytes=100, warmup_per_conn=3, time_limit_s=8.0),
        "read": dict(stream_bytes=16 * 1024 * 1024, append_bytes=256 * 1024, reads=2, time_limit_s=10.0),
        "fanout": dict(readers=100, events=6, record_bytes=100, settle_s=0.02, time_limit_s=10.0),
    },
}


# ---------------------------------------------------------------------------
# Load generator (runs in its own process: `bench.py _loadgen < spec.json`)
# ---------------------------------------------------------------------------

class Response:
    __slots__ = ("status", "headers", "body", "nbytes", "t")

    def __init__(self, status: int, headers: dict, body: bytes | None, nbytes: int, t: float) -> None:
        self.status, self.headers, self.body, self.nbytes, self.t = status, headers, body, nbytes, t


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Parses Content-Length and chunked bodies incrementally; the completion
    time of a response is taken in data_received, so it does not include
    the event loop's delay in waking up the awaiting task.
    """

    _IDLE, _HEAD, _FIXED, _CSIZE, _CDATA, _CCRLF, _TRAILER = range(7)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = self._IDLE
        self.waiter: asyncio.Future | None = None
        self.lost = False
        self.closing = False  # the server said "Connection: close"

    @classmethod
    async def open(cls, host: str, port: int) -> "HttpConn":
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request(self, data: bytes, *, head: bool = False, keep_body: bool = False) -> asyncio.Future:
        if self.lost:
            raise ConnectionError("connection already closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.state = self._HEAD
        self.is_head = head
        self.keep_body = keep_body
        self.parts: list[bytes] = []
        self.nbytes = 0
        self.transport.write(data)  # type: ignore[union-attr]
        return self.waiter

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        self.buf += data
        try:
            self._parse()
        except Exception as exc:  # malformed response: fail the request
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.close()

    def _take(self, limit: int) -> int:
        n = min(limit, len(self.buf))
        if self.keep_body:
            self.parts.append(bytes(self.buf[:n]))
        del self.buf[:n]
        self.nbytes += n
        return n

    def _parse(self) -> None:
        buf = self.buf
        while True:
            st = self.state
            if st == self._HEAD:
                idx = buf.find(b"\r\n\r\n")
                if idx < 0:
                    return
                lines = bytes(buf[:idx]).split(b"\r\n")
                del buf[: idx + 4]
                self.status = int(lines[0].split(b" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower().decode()] = v.strip().decode()
                self.headers = headers
                if self.is_head or self.status in (204, 304) or self.status < 200:
                    self._finish()
                    return
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self.state = self._CSIZE
                elif "content-length" in headers:
                    self.remaining = int(headers["content-length"])
                    self.state = self._FIXED
                    if self.remaining == 0:
                        self._finish()
                        return
                else:
                    raise ValueError("response without length (close-delimited) is not supported")
            elif st == self._FIXED or st == self._CDATA:
                if not buf:
                    return
                self.remaining -= self._take(self.remaining)
                if self.remaining:
                    return
                if st == self._FIXED:
                    self._finish()
                    return
                self.state = self._CCRLF
            elif st == self._CSIZE:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    return
                size = int(bytes(buf[:idx]).split(b";")[0], 16)
                del buf[: idx + 2]
                if size == 0:
                    self.state = self._TRAILER
                else:
                    self.remaining = size
                    self.state = self._CDATA
            elif st == self._CCRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = self._CSIZE
            elif st == self._TRAILER:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    return
                del buf[: idx + 2]
                if idx == 0:
                    self._finish()
                    return
            else:
                return

    def _finish(self) -> None:
        t = time.perf_counter()
        self.state = self._IDLE
        if self.headers.get("connection", "").lower() == "close":
            self.closing = True
        body = b"".join(self.parts) if self.keep_body else None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.status, self.headers, body, self.nbytes, t))


class Client:
    """A keep-alive connection that reopens when the server closes it.

    Hypercorn (under our server) closes a connection after 1000 requests
    (its keep_alive_max_requests default) with "Connection: close", as a
    server may; a real client reconnects, and so does this one. Requests are
    never retried, so an append is never sent twice.
    """

    reconnects = 0  # over all clients of the process

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: HttpConn | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> "Client":
        c = cls(host, port)
        c.conn = await HttpConn.open(host, port)
        return c

    async def request(self, data: bytes, *, head: bool = False, keep_body: bool = False) -> Response:
        if self.conn is None or self.conn.lost or self.conn.closing:
            if self.conn is not None:
                self.conn.close()
                Client.reconnects += 1
            self.conn = await HttpConn.open(self.host, self.port)
        return await self.conn.request(data, head=head, keep_body=keep_body)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _req(method: str, host: str, target: str, body: bytes = b"", content_type: str | None = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def _proc_cpu_s(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (fields 14, 15)
    except OSError:
        return None


class Meter:
    """Wall time, generator CPU and server CPU over the measured phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid

    def __enter__(self) -> "Meter":
        self.srv0 = _proc_cpu_s(self.pid)
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = r.ru_utime + r.ru_stime
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self.t0
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.gen_cpu = r.ru_utime + r.ru_stime - self.cpu0
        srv1 = _proc_cpu_s(self.pid)
        self.srv_cpu = None if self.srv0 is None or srv1 is None else srv1 - self.srv0

    def report(self) -> dict:
        return dict(elapsed_s=self.elapsed, loadgen_cpu_frac=self.gen_cpu / self.elapsed if self.elapsed else None,
                    server_cpu_s=self.srv_cpu)


async def _create(host: str, port: int, name: str) -> str:
    conn = await Client.open(host, port)
    try:
        r = await conn.request(_req("PUT", f"{host}:{port}", PREFIX + name, b"", CT))
        if r.status not in (200, 201):
            raise RuntimeError(f"PUT {name}: HTTP {r.status}")
        return r.headers.get("stream-next-offset", "-1")
    finally:
        conn.close()


async def _catch_up(conn: Client, hostport: str, name: str, deadline: float) -> tuple[int, int, list[str]]:
    """Reads a whole stream from -1; returns (bytes, requests, problems)."""
    offset, total, requests, problems = "-1", 0, 0, []
    while True:
        r = await conn.request(_req("GET", hostport, f"{PREFIX}{name}?offset={offset}"))
        requests += 1
        if r.status != 200:
            problems.append(f"catch-up GET {name} offset={offset}: HTTP {r.status}")
            break
        total += r.nbytes
        nxt = r.headers.get("stream-next-offset")
        if r.headers.get("stream-up-to-date", "").lower() == "true":
            break
        if not nxt or (nxt == offset and r.nbytes == 0):
            problems.append(f"catch-up GET {name}: no progress at offset={offset}")
            break
        offset = nxt
        if time.perf_counter() > deadline:
            problems.append("catch-up read hit its time limit")
            break
    return total, requests, problems


async def lg_append(spec: dict) -> dict:
    host, port, p = spec["host"], spec["port"], spec["params"]
    hostport = f"{host}:{port}"
    tag = spec["tag"]
    names = [f"{tag}-s{i}" for i in range(spec["streams"])]
    for name in names:
        await _create(host, port, name)
    payload = (b"0123456789abcdef" * ((p["record_bytes"] // 16) + 1))[: p["record_bytes"]]
    reqs = {n: _req("POST", hostport, PREFIX + n, payload, CT) for n in names}
    conns = [await Client.open(host, port) for _ in range(p["writers"])]
    ok_per_stream = {n: 0 for n in names}
    errors: dict[str, int] = {}

    async def one(conn: Client, name: str, lat: list | None) -> None:
        t0 = time.perf_counter()
        r = await conn.request(reqs[name])
        if r.status == 204 or r.status == 200:
            ok_per_stream[name] += 1
            if lat is not None:
                lat.append(r.t - t0)
        else:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1

    # Warm-up: every connection appends a few records, not measured.
    async def warm(i: int) -> None:
        for _ in range(p["warmup_per_conn"]):
            await one(conns[i], names[i % len(names)], None)
    await asyncio.gather(*(warm(i) for i in range(len(conns))))

    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + p["time_limit_s"]

    async def writer(i: int) -> None:
        nonlocal issued
        conn, name = conns[i], names[i % len(names)]
        while issued < p["requests"] and time.perf_counter() < deadline:
            issued += 1
            await one(conn, name, latencies)

    with Meter(spec.get("server_pid")) as m:
        await asyncio.gather(*(writer(i) for i in range(len(conns))))
    done = len(latencies)
    problems = [f"{n} appends answered HTTP {s}" for s, n in errors.items()]
    notes = []
    if done < p["requests"]:
        notes.append(f"time limit: {done}/{p['requests']} appends completed")
    # Integrity: each stream holds exactly the records acknowledged.
    deadline2 = time.perf_counter() + 30
    for n in names:
        got, _, probs = await _catch_up(conns[0], hostport, n, deadline2)
        problems += probs
        want = ok_per_stream[n] * len(payload)
        if got != want:
            problems.append(f"stream {n}: read back {got} bytes, {want} acknowledged")
    for c in conns:
        c.close()
    res = m.report()
    res.update(
        appends=done,
        appends_per_s=done / m.elapsed if m.elapsed else None,
        p50_ms=_pct(latencies, 50) * 1e3 if latencies else None,
        p99_ms=_pct(latencies, 99) * 1e3 if latencies else None,
        server_cpu_us_per_append=(m.srv_cpu / done * 1e6) if (m.srv_cpu is not None and done) else None,
        problems=problems, notes=notes,
    )
    return res


async def lg_read(spec: dict) -> dict:
    host, port, p = spec["host"], spec["port"], spec["params"]
    hostport = f"{host}:{port}"
    name = spec["stream"]
    conn = await Client.open(host, port)
    problems: list[str] = []
    # Setup once per server: the stream persists across rounds.
    r = await conn.request(_req("HEAD", hostport, PREFIX + name), head=True)
    if r.status == 404:
        await _create(host, port, name)
        chunk = bytes(range(256)) * (p["append_bytes"] // 256)
        post = _req("POST", hostport, PREFIX + name, chunk, CT)
        written = 0
        while written < p["stream_bytes"]:
            r = await conn.request(post)
            if r.status not in (200, 204):
                raise RuntimeError(f"setup append: HTTP {r.status}")
            written += len(chunk)
    # Warm-up read, not measured (page cache, server-side caches).
    got, _, probs = await _catch_up(conn, hostport, name, time.perf_counter() + p["time_limit_s"])
    problems += probs
    total = 0
    requests = 0
    per_read: list[float] = []
    deadline = time.perf_counter() + p["time_limit_s"]
    with Meter(spec.get("server_pid")) as m:
        for _ in range(p["reads"]):
            t0 = time.perf_counter()
            got, nreq, probs = await _catch_up(conn, hostport, name, deadline)
            per_read.append(time.perf_counter() - t0)
            problems += probs
            if got != p["stream_bytes"]:
                problems.append(f"catch-up read returned {got} bytes, expected {p['stream_bytes']}")
            total += got
            requests += nreq
            if time.perf_counter() > deadline:
                break
    conn.close()
    mib = total / (1024 * 1024)
    res = m.report()
    res.update(
        mib=mib, reads=len(per_read), requests_per_read=requests / max(1, len(per_read)),
        mib_per_s=mib / m.elapsed if m.elapsed else None,
        read_ms_median=statistics.median(per_read) * 1e3 if per_read else None,
        server_cpu_ms_per_mib=(m.srv_cpu / mib * 1e3) if (m.srv_cpu is not None and mib) else None,
        problems=problems,
    )
    return res


async def _quiesce(pid: int | None, quiet_s: float = 0.03, max_s: float = 0.4) -> float:
    """Waits until the server process has used no CPU for quiet_s (max max_s); returns the wait.

    max_s stays below the 500 ms long-poll timeout, so the wait itself does
    not make parked polls expire.

    Before an append, the server must have parked every reader's long-poll;
    with a slow server on a loaded machine a fixed sleep is not enough, and
    an append queued behind 100 poll requests measures the queue instead.
    """
    t0 = time.perf_counter()
    if not pid:
        return 0.0
    last, quiet_since = _proc_cpu_s(pid), t0
    while time.perf_counter() - t0 < max_s:
        await asyncio.sleep(0.005)
        now, cpu = time.perf_counter(), _proc_cpu_s(pid)
        if cpu != last:
            last, quiet_since = cpu, now
        elif now - quiet_since >= quiet_s:
            break
    return time.perf_counter() - t0


async def lg_fanout(spec: dict) -> dict:
    host, port, p = spec["host"], spec["port"], spec["params"]
    hostport = f"{host}:{port}"
    name = spec["tag"] + "-fan"
    start = await _create(host, port, name)
    n = p["readers"]
    readers: list[Client] = []
    for i in range(0, n, 10):  # connect in small batches: listen backlogs are finite
        readers += await asyncio.gather(*(Client.open(host, port) for _ in range(min(10, n - i))))
    writer = await Client.open(host, port)
    problems: list[str] = []
    notes: list[str] = []
    counters = dict(timeouts=0, errors=0, bad_body=0)
    inflight = 0
    current = {"k": -1, "payload": b"", "recv": [], "all": asyncio.Event()}
    stop = False

    async def reader(i: int) -> None:
        nonlocal inflight
        conn, offset, cursor = readers[i], start, None
        while not stop:
            target = f"{PREFIX}{name}?offset={offset}&live=long-poll"
            if cursor:
                target += f"&cursor={cursor}"
            inflight += 1
            try:
                r = await conn.request(_req("GET", hostport, target), keep_body=True)
            finally:
                inflight -= 1
            cursor = r.headers.get("stream-cursor", cursor)
            if r.status == 200:
                if r.body != current["payload"]:
                    counters["bad_body"] += 1
                current["recv"].append(r.t)
                if len(current["recv"]) >= n:
                    current["all"].set()
                offset = r.headers.get("stream-next-offset", offset)
            elif r.status == 204:
                counters["timeouts"] += 1
                offset = r.headers.get("stream-next-offset", offset)
            else:
                counters["errors"] += 1
                await asyncio.sleep(0.01)

    tasks = [asyncio.ensure_future(reader(i)) for i in range(n)]
    ack_lat: list[float] = []
    send_lat: list[float] = []
    last_lat: list[float] = []  # per event: append sent -> the last reader has the data
    quiesce_waits: list[float] = []
    missed = 0
    deadline = time.perf_counter() + p["time_limit_s"]
    events_done = 0
    m = Meter(spec.get("server_pid"))
    for k in range(p["events"] + 1):  # event 0 warms up, not measured
        if k == 1:
            m.__enter__()
        # Every reader must have a poll in flight, then give the server time to park them.
        t_wait = time.perf_counter() + 2.0
        while inflight < n and time.perf_counter() < t_wait:
            await asyncio.sleep(0.002)
        quiesce_waits.append(await _quiesce(spec.get("server_pid")))
        await asyncio.sleep(p["settle_s"])
        payload = f"event-{k:06d}-".encode().ljust(p["record_bytes"], b"x")
        current.update(k=k, payload=payload, recv=[], all=asyncio.Event())
        t_send = time.perf_counter()
        r = await writer.request(_req("POST", hostport, PREFIX + name, payload, CT))
        if r.status not in (200, 204):
            problems.append(f"fan-out append: HTTP {r.status}")
            break
        t_ack = r.t
        try:
            await asyncio.wait_for(current["all"].wait(), 3.0)
        except asyncio.TimeoutError:
            pass
        recv = list(current["recv"])
        if k >= 1:
            events_done += 1
            missed += n - len(recv)
            ack_lat += [t - t_ack for t in recv]
            send_lat += [t - t_send for t in recv]
            if recv:
                last_lat.append(max(recv) - t_send)
        if time.perf_counter() > deadline:
            notes.append(f"time limit after {events_done} events")
            break
    m.__exit__()
    stop = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in readers + [writer]:
        c.close()
    if missed:
        problems.append(f"{missed} reader deliveries missing after 3 s")
    if counters["bad_body"]:
        problems.append(f"{counters['bad_body']} long-poll bodies differ from the appended record")
    if counters["timeouts"]:
        notes.append(f"{counters['timeouts']} long-polls timed out ({LONG_POLL_TIMEOUT_MS} ms) and were re-issued")
    if counters["errors"]:
        problems.append(f"{counters['errors']} long-polls answered with an error status")
    res = m.report()
    res.update(
        events=events_done, readers=n, deliveries=len(ack_lat),
        ack_p50_ms=_pct(ack_lat, 50) * 1e3 if ack_lat else None,
        ack_p99_ms=_pct(ack_lat, 99) * 1e3 if ack_lat else None,
        p50_ms=_pct(send_lat, 50) * 1e3 if send_lat else None,
        p99_ms=_pct(send_lat, 99) * 1e3 if send_lat else None,
        last_reader_p50_ms=_pct(last_lat, 50) * 1e3 if last_lat else None,
        before_ack_frac=sum(1 for x in ack_lat if x < 0) / len(ack_lat) if ack_lat else None,
        quiesce_wait_ms_median=statistics.median(quiesce_waits) * 1e3 if quiesce_waits else None,
        long_poll_timeouts=counters["timeouts"],
        problems=problems, notes=notes,
    )
    return res


def loadgen_main() -> int:
    spec = json.load(sys.stdin)
    fn = {"append": lg_append, "read": lg_read, "fanout": lg_fanout}[spec["kind"]]
    try:
        result = asyncio.run(fn(spec))
        result["reconnects"] = Client.reconnects
    except Exception as exc:  # reported, not raised: the orchestrator records it
        result = {"error": f"{type(exc).__name__}: {exc}", "problems": [f"load generator failed: {exc!r}"]}
    json.dump(result, sys.stdout)
    return 0


# ---------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, label: str, kind: str, fsync: str | None, workdir: Path) -> None:
        self.label, self.kind, self.fsync = label, kind, fsync
        self.port = free_port()
        self.data_dir = workdir / label
        self.log_path = workdir / f"{label}.log"
        self.proc: subprocess.Popen | None = None
        self.rss_samples: list[dict] = []

    @property
    def command(self) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
                  "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]
        if self.kind == "ours":
            return [str(OURS_EXE), "serve", *common, "--fsync", str(self.fsync), "--log-level", "warning"]
        return ["node", str(NODE_SERVER), *common]

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        if self.kind == "node":
            try:
                return "reference server listening on" in self.log_path.read_text(errors="replace")
            except OSError:
                return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} not ready after {READY_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory(self) -> dict:
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    key, _, val = line.partition(":")
                    if key in ("VmRSS", "VmHWM", "Threads"):
                        v = val.split()[0]
                        out[key] = int(v) / 1024 if key != "Threads" else int(v)  # kB -> MiB
        except OSError:
            pass
        return out

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


def run_loadgen(spec: dict, timeout: float) -> dict:
    try:
        cp = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_loadgen"], input=json.dumps(spec),
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": "load generator timed out", "problems": [f"load generator exceeded {timeout:.0f}s"]}
    if cp.returncode != 0 or not cp.stdout.strip():
        return {"error": f"load generator exit {cp.returncode}", "problems": [cp.stderr.strip()[-500:]]}
    return json.loads(cp.stdout)


# Metrics in the summary: (scenario, key, label, unit, better)
METRICS = [
    ("append-1", "appends_per_s", "append 1 stream: appends/s", "/s", "higher"),
    ("append-1", "p50_ms", "append 1 stream: p50 latency", "ms", "lower"),
    ("append-1", "p99_ms", "append 1 stream: p99 latency", "ms", "lower"),
    ("append-1", "server_cpu_us_per_append", "append 1 stream: server CPU/append", "us", "lower"),
    ("append-16", "appends_per_s", "append 16 streams: appends/s", "/s", "higher"),
    ("append-16", "p50_ms", "append 16 streams: p50 latency", "ms", "lower"),
    ("append-16", "p99_ms", "append 16 streams: p99 latency", "ms", "lower"),
    ("append-16", "server_cpu_us_per_append", "append 16 streams: server CPU/append", "us", "lower"),
    ("read", "mib_per_s", "catch-up read 16 MiB: MiB/s", "MiB/s", "higher"),
    ("read", "server_cpu_ms_per_mib", "catch-up read: server CPU/MiB", "ms", "lower"),
    ("fanout", "p50_ms", "fan-out 100 readers: p50 append sent->data", "ms", "lower"),
    ("fanout", "p99_ms", "fan-out 100 readers: p99 append sent->data", "ms", "lower"),
    ("fanout", "last_reader_p50_ms", "fan-out: sent->all 100 have data, p50", "ms", "lower"),
    ("fanout", "ack_p50_ms", "fan-out: p50 ack->data (<0: before ack)", "ms", "lower"),
    ("fanout", "ack_p99_ms", "fan-out: p99 ack->data (<0: before ack)", "ms", "lower"),
    ("memory", "VmRSS", "memory: RSS after scenarios", "MiB", "lower"),
    ("memory", "VmHWM", "memory: peak RSS", "MiB", "lower"),
]


def summarise(results: dict, servers: list[Server], memory: dict) -> dict:
    """Median over rounds of each metric per server, and ratios ours/node."""
    summary: dict = {}
    for scen, key, label, unit, better in METRICS:
        row = {"label": label, "unit": unit, "better": better, "median": {}, "min": {}, "max": {}, "n": {}}
        for s in servers:
            if scen == "memory":
                vals = [memory[s.label][key]] if key in memory.get(s.label, {}) else []
            else:
                vals = [r[key] for r in results[s.label].get(scen, []) if r.get(key) is not None]
            if vals:
                row["median"][s.label] = statistics.median(vals)
                row["min"][s.label], row["max"][s.label] = min(vals), max(vals)
            row["n"][s.label] = len(vals)
        node = row["median"].get("node")
        row["ratio"] = {}
        row["paired_ratio"] = {}
        for s in servers:
            if s.kind != "ours":
                continue
            ours = row["median"].get(s.label)
            if ours is not None and node and ours > 0 and node > 0:  # a ratio of signed values means nothing
                row["ratio"][s.label] = ours / node
            if scen != "memory":  # median of per-round ratios (same round = shared noise)
                a = results[s.label].get(scen, [])
                b = results["node"].get(scen, []) if "node" in results else []
                pr = [x[key] / y[key] for x, y in zip(a, b) if (x.get(key) or 0) > 0 and (y.get(key) or 0) > 0]
                if pr:
                    row["paired_ratio"][s.label] = statistics.median(pr)
        summary[f"{scen}:{key}"] = row
    return summary


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(summary: dict, servers: list[Server], *, markdown: bool, spread: bool = False) -> str:
    ours = [s.label for s in servers if s.kind == "ours"]
    cols = ["metric", "unit", "better"] + [s.label for s in servers] + [f"{o}/node" for o in ours]
    rows = []
    for row in summary.values():
        cells = [row["label"], row["unit"], row["better"]]
        for s in servers:
            v = fmt(row["median"].get(s.label))
            if spread and s.label in row["min"] and row["n"].get(s.label, 0) > 1:
                v += f" ({fmt(row['min'][s.label])}–{fmt(row['max'][s.label])})"
            cells.append(v)
        for o in ours:
            r = row["ratio"].get(o)
            cells.append("—" if r is None else f"{r:.2f}x")
        rows.append(cells)
    if markdown:
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(cols))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_mib"] = int(open("/proc/meminfo").readline().split()[1]) // 1024
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        pkg = json.loads((NODE_MODULES / "package.json").read_text())
        info["reference_server"] = f"@durable-streams/server {pkg.get('version')}"
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "trio_streams"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        info["trio_streams_dirty"] = bool(dirty)
    except (OSError, ValueError):
        pass
    return info


DURABILITY = {
    "always": "ours, --fsync always: 204 only after the batch's WAL records are fdatasync'd (group commit: "
              "one fdatasync per batch of concurrent appends); data files are written, synced at checkpoints",
    "interval": "ours, --fsync interval: 204 after write(2) to the WAL; fdatasync at most every 5 ms later "
                "(an OS crash can lose the last ~5 ms of acknowledged appends; a process crash cannot)",
    "never": "ours, --fsync never: 204 after write(2); fsync only at checkpoints/shutdown "
             "(an OS crash can lose acknowledged appends; a process crash cannot)",
    "node": "node reference (@durable-streams/server 0.3.7, file-backed store): 204 only after write + fdatasync of "
            "the stream's log file, one fdatasync per append, then an awaited LMDB metadata commit (lmdb-js "
            "overlappingSync: the commit's own syncs run in the background; recovery reconciles metadata from the "
            "file). strace: 3 fdatasync per append. Appends to one stream are serialised by a per-stream lock: "
            "no group commit",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark trio_streams against the Node reference server.")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 5; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="a ~1-minute run: fewer requests, 3 rounds")
    p.add_argument("--fsync", default=None,
                   help="comma-separated --fsync modes of our server to run, each as its own server "
                        "(default always,never)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (memory is always reported)")
    p.add_argument("--no-node", action="store_true", help="skip the reference server (no ratios)")
    p.add_argument("--out", default=str(BUILD), help="directory for bench.json and bench.md (default build/)")
    p.add_argument("--keep-data", action="store_true", help="keep the servers' data directories and logs")
    a = p.parse_args(argv)
    a.mode = "quick" if a.quick else "full"
    if a.rounds is None:
        a.rounds = PARAMS[a.mode]["rounds"]
    if a.fsync is None:
        a.fsync = "always,never"
    a.fsync_modes = [m.strip() for m in a.fsync.split(",") if m.strip()]
    for m in a.fsync_modes:
        if m not in ("always", "interval", "never"):
            p.error(f"--fsync: unknown mode {m!r}")
    a.scenario_list = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    for s in a.scenario_list:
        if s not in SCENARIOS:
            p.error(f"--scenarios: unknown scenario {s!r}")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    return a


def main(argv: list[str]) -> int:
    if argv[:1] == ["_loadgen"]:
        return loadgen_main()
    args = parse_args(argv)
    params = PARAMS[args.mode]
    if not OURS_EXE.exists():
        print(f"bench: {OURS_EXE} not found (run `make install`)", file=sys.stderr)
        return 2
    if not args.no_node and (shutil.which("node") is None or not NODE_MODULES.exists()):
        print("bench: node or tests/conformance/node_modules missing (run `make node-deps`)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="trio-streams-bench-"))
    servers = [Server(f"ours-{m}", "ours", m, workdir) for m in args.fsync_modes]
    if not args.no_node:
        servers.append(Server("node", "node", None, workdir))
    results: dict = {s.label: {sc: [] for sc in args.scenario_list} for s in servers}
    raw: list[dict] = []
    problems: list[str] = []
    notes: list[str] = []
    memory: dict = {}
    exit_codes: dict = {}
    started = time.time()
    info = machine_info()
    print(f"bench: {args.mode} run, {args.rounds} rounds, servers: {', '.join(s.label for s in servers)}; "
          f"{info.get('nproc')} CPUs, load {' '.join(info.get('loadavg_start', []))}", flush=True)
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
            s.rss_samples.append({"after": "start", **s.memory()})
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
            for scen in args.scenario_list:
                for s in order:
                    if not s.alive():
                        raise RuntimeError(f"{s.label} died (exit {s.proc.returncode}):\n{s.log_tail()}")
                    kind = "append" if scen.startswith("append") else scen
                    spec = {"kind": kind, "host": "127.0.0.1", "port": s.port, "server_pid": s.proc.pid,
                            "params": params[kind], "tag": f"b{rnd}-{scen}-{uuid.uuid4().hex[:8]}",
                            "streams": 16 if scen == "append-16" else 1, "stream": "bench-read-16mib"}
                    res = run_loadgen(spec, timeout=params[kind]["time_limit_s"] * 3 + 60)
                    res.update(server=s.label, scenario=scen, round=rnd)
                    raw.append(res)
                    if "error" not in res:
                        results[s.label][scen].append(res)
                    for pr in res.get("problems", []):
                        problems.append(f"round {rnd} {scen} {s.label}: {pr}")
                    for note in res.get("notes", []):
                        notes.append(f"round {rnd} {scen} {s.label}: {note}")
                    busy = res.get("loadgen_cpu_frac")
                    if busy is not None and busy >= LOADGEN_BUSY:
                        problems.append(f"round {rnd} {scen} {s.label}: load generator used {busy:.0%} of a "
                                        "core (it may be the bottleneck)")
                    brief = {k: res.get(k) for k in ("appends_per_s", "mib_per_s", "p50_ms", "p99_ms") if res.get(k)}
                    print(f"  round {rnd + 1}/{args.rounds} {scen:9s} {s.label:12s} "
                          + "  ".join(f"{k}={fmt(v)}" for k, v in brief.items())
                          + (f"  gen-cpu={busy:.0%}" if busy is not None else "")
                          + (f"  ERROR {res['error']}" if "error" in res else ""), flush=True)
            for s in servers:
                s.rss_samples.append({"after": f"round {rnd}", **s.memory()})
        for s in servers:
            memory[s.label] = s.memory()
    except (RuntimeError, KeyboardInterrupt) as exc:
        problems.append(f"run aborted: {exc}")
        print(f"bench: aborted: {exc}", file=sys.stderr)
    finally:
        for s in servers:
            code = s.stop()
            exit_codes[s.label] = code
            if code not in (0, None):
                problems.append(f"{s.label} exited with status {code} on SIGTERM; log tail:\n{s.log_tail(10)}")
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(results, servers, memory)
    elapsed = time.time() - started
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": date, "elapsed_s": elapsed, "mode": args.mode, "rounds": args.rounds, "machine": info,
        "params": params, "servers": {s.label: {"command": s.command, "durability": DURABILITY[s.fsync or "node"],
                                                "rss_samples": s.rss_samples, "exit_code": exit_codes.get(s.label)}
                                      for s in servers},
        "summary": summary, "problems": problems, "notes": notes, "runs": raw,
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    text_table = table(summary, servers, markdown=False)
    md = [f"# Benchmark: trio_streams vs Node reference — {date}", "",
          f"{args.mode} run, {args.rounds} rounds, {elapsed:.0f} s; machine: {info.get('nproc')} CPUs "
          f"({info.get('cpu', '?')}), shared; load average at start {' '.join(info.get('loadavg_start', []))}; "
          f"commit {info.get('git_commit', '?')}{' (dirty)' if info.get('trio_streams_dirty') else ''}; "
          f"{info.get('reference_server', '')} on node {info.get('node', '?')}.", "",
          "Medians over rounds (min–max in parentheses); ratio = median(ours) / median(node).", "",
          table(summary, servers, markdown=True, spread=True), "", "Durability promised at the 204:", ""]
    md += [f"- **{s.label}**: {DURABILITY[s.fsync or 'node']}" for s in servers]
    if problems:
        md += ["", "Problems seen:", ""] + [f"- {p}" for p in problems[:50]]
    if notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes[:50]]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    print()
    print(text_table)
    print()
    if problems:
        print(f"{len(problems)} problem(s):")
        for pr in problems[:20]:
            print(f"  - {pr}")
    if notes:
        print(f"{len(notes)} note(s):")
        for n in notes[:20]:
            print(f"  - {n}")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({elapsed:.0f} s)")
    return 1 if any(p.startswith("run aborted") for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
