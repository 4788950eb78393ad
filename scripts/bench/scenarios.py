"""The request-reply scenarios, as the load generator runs them (one call per run).

Live readers (SSE, long-poll) are in live.py.

Each takes a spec (host, port, server_pid, tag, verify, params) and returns
a flat result: its metrics, ``problems`` (failed requests, wrong data) and
``notes`` (time limits hit, long-polls that timed out). Every scenario is
bounded in request count and in time. ``verify`` is off for the floor app,
which stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .client import Client, open_many
from .loadgen import PREFIX, Meter, Result, Spec, catch_up, create, latency_summary, quiesce

OCTETS = "application/octet-stream"
TEXT = "text/plain"
JSON = "application/json"
OK = (200, 204)
CONNECTION_LOST = 0  # the status a request gets in a Tally when its connection was reset
CATCHUP_STREAM = "catchup-16mib"  # built once per server, kept across rounds


def record(size: int, tag: str = "") -> bytes:
    return (tag.encode() + b"0123456789abcdef" * (size // 16 + 1))[:size]


@dataclass
class Tally:
    """Request outcomes of one run."""

    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def count(self, status: int, latency_s: float | None) -> bool:
        if status in OK:
            self.ok += 1
            if latency_s is not None:
                self.latencies.append(latency_s)
            return True
        self.errors[str(status)] = self.errors.get(str(status), 0) + 1
        return False

    def problems(self, what: str) -> list[str]:
        return [f"{n} {what} " + ("lost their connection" if status == str(CONNECTION_LOST) else f"answered HTTP {status}")
                for status, n in self.errors.items()]


async def timed(client: Client, tally: Tally, method: str, target: str, body: bytes = b"",
                headers: list[tuple[str, str]] | None = None, *, measure: bool = True) -> bool:
    """One request, counted; a connection the server reset counts as a failed request, not a failed run."""
    t0 = time.perf_counter()
    try:
        r = await client.request(method, target, body, headers)
    except ConnectionError:
        return tally.count(CONNECTION_LOST, None)
    return tally.count(r.status, r.t - t0 if measure else None)


async def closed_loop(clients: list[Client], request: Callable[[int], Awaitable[bool]], total: int,
                      time_limit_s: float) -> int:
    """Each client sends requests back to back until ``total`` were issued or time is up."""
    issued = 0
    deadline = time.perf_counter() + time_limit_s

    async def worker(i: int) -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            await request(i)

    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    return issued


# -- appends -------------------------------------------------------------------

async def run_appends(spec: Spec) -> Result:
    """``writers`` connections append records to ``streams`` streams (writer i to stream i mod S)."""
    host, port, p = spec["host"], spec["port"], spec["params"]
    names = [f"{spec['tag']}-s{i}" for i in range(p["streams"])]
    clients = await open_many(host, port, p["writers"])
    for name in names:
        await create(clients[0], name, OCTETS)
    payload = record(p["record_bytes"])
    tally, warm = Tally(), Tally()
    acked = dict.fromkeys(names, 0)

    async def one(i: int, into: Tally) -> bool:
        name = names[i % len(names)]
        ok = await timed(clients[i], into, "POST", PREFIX + name, payload, [("Content-Type", OCTETS)])
        acked[name] += ok
        return ok

    async def warm_up(i: int) -> None:  # one request at a time per connection
        for _ in range(p["warmup_per_conn"]):
            await one(i, warm)

    await asyncio.gather(*(warm_up(i) for i in range(len(clients))))
    with Meter(spec.get("server_pid")) as meter:
        await closed_loop(clients, lambda i: one(i, tally), p["requests"], p["time_limit_s"])
    problems = tally.problems("appends") + warm.problems("warm-up appends")
    if spec["verify"]:
        problems += await verify_lengths(clients[0], acked, len(payload))
    for c in clients:
        c.close()
    return {**meter.report(tally.ok), **latency_summary(tally.latencies), "requests": tally.ok,
            "req_per_s": tally.ok / meter.elapsed if meter.elapsed else None, "problems": problems,
            "notes": time_limit_note(tally.ok, p["requests"])}


async def verify_lengths(client: Client, acked: dict[str, int], record_bytes: int) -> list[str]:
    """Each stream holds exactly the records acknowledged."""
    problems: list[str] = []
    deadline = time.perf_counter() + 30
    for name, n in acked.items():
        got, _, probs, _ = await catch_up(client, name, deadline)
        problems += probs
        if got != n * record_bytes:
            problems.append(f"stream {name}: read back {got} bytes, {n * record_bytes} acknowledged")
    return problems


def time_limit_note(done: int, wanted: int) -> list[str]:
    return [f"time limit: {done}/{wanted} requests completed"] if done < wanted else []


# -- JSON batches --------------------------------------------------------------

def json_batch(messages: int, message_bytes: int, k: int) -> bytes:
    filler = "x" * max(0, message_bytes - 40)
    return json.dumps([{"seq": k * messages + i, "kind": "bench", "pad": filler} for i in range(messages)]).encode()


async def run_json_batch(spec: Spec) -> Result:
    """``writers`` connections POST JSON arrays of ``messages`` messages each to one JSON stream."""
    host, port, p = spec["host"], spec["port"], spec["params"]
    name = f"{spec['tag']}-json"
    clients = await open_many(host, port, p["writers"])
    await create(clients[0], name, JSON)
    bodies = [json_batch(p["messages"], p["message_bytes"], k) for k in range(8)]
    tally = Tally()
    headers = [("Content-Type", JSON)]

    async def one(i: int) -> bool:
        return await timed(clients[i], tally, "POST", PREFIX + name, bodies[i % len(bodies)], headers)

    with Meter(spec.get("server_pid")) as meter:
        await closed_loop(clients, one, p["requests"], p["time_limit_s"])
    problems = tally.problems("JSON appends")
    if spec["verify"]:
        problems += await verify_json_count(clients[0], name, tally.ok * p["messages"])
    for c in clients:
        c.close()
    messages = tally.ok * p["messages"]
    return {**meter.report(tally.ok), **latency_summary(tally.latencies), "requests": tally.ok,
            "messages": messages, "msg_per_s": messages / meter.elapsed if meter.elapsed else None,
            "problems": problems, "notes": time_limit_note(tally.ok, p["requests"])}


async def verify_json_count(client: Client, name: str, expected: int) -> list[str]:
    _, _, problems, bodies = await catch_up(client, name, time.perf_counter() + 60, keep_bodies=True)
    got = sum(len(json.loads(b)) for b in bodies if b.strip())
    if got != expected:
        problems.append(f"JSON stream {name}: read back {got} messages, {expected} acknowledged")
    return problems


# -- reads ---------------------------------------------------------------------

async def run_small_get(spec: Spec) -> Result:
    """``readers`` connections read a small stream from -1, over and over."""
    host, port, p = spec["host"], spec["port"], spec["params"]
    name = f"{spec['tag']}-small"
    clients = await open_many(host, port, p["readers"])
    await create(clients[0], name, OCTETS)
    for _ in range(p["appends"]):
        await clients[0].request("POST", PREFIX + name, record(p["record_bytes"]), [("Content-Type", OCTETS)])
    size = p["appends"] * p["record_bytes"]
    tally, wrong = Tally(), 0

    async def one(i: int) -> bool:
        nonlocal wrong
        t0 = time.perf_counter()
        r = await clients[i].request("GET", f"{PREFIX}{name}?offset=-1")
        if spec["verify"] and r.status == 200 and r.nbytes != size:
            wrong += 1
        return tally.count(r.status, r.t - t0)

    with Meter(spec.get("server_pid")) as meter:
        await closed_loop(clients, one, p["requests"], p["time_limit_s"])
    for c in clients:
        c.close()
    problems = tally.problems("GETs") + ([f"{wrong} GETs returned a body of the wrong size"] if wrong else [])
    return {**meter.report(tally.ok), **latency_summary(tally.latencies), "requests": tally.ok,
            "req_per_s": tally.ok / meter.elapsed if meter.elapsed else None, "problems": problems,
            "notes": time_limit_note(tally.ok, p["requests"])}


async def build_catchup_stream(client: Client, p: dict[str, Any]) -> None:
    r = await client.request("HEAD", PREFIX + CATCHUP_STREAM)
    if r.status != 404:
        return
    await create(client, CATCHUP_STREAM, OCTETS)
    chunk = bytes(range(256)) * (p["append_bytes"] // 256)
    for _ in range(p["stream_bytes"] // len(chunk)):
        r = await client.request("POST", PREFIX + CATCHUP_STREAM, chunk, [("Content-Type", OCTETS)])
        if r.status not in OK:
            raise RuntimeError(f"building the catch-up stream: HTTP {r.status}")


async def run_catch_up(spec: Spec) -> Result:
    """Reads a 16 MiB stream from -1 to its end, ``reads`` times, on one connection."""
    p = spec["params"]
    client = await Client.open(spec["host"], spec["port"])
    await build_catchup_stream(client, p)
    _, _, problems, _ = await catch_up(client, CATCHUP_STREAM, time.perf_counter() + p["time_limit_s"])  # warm-up
    total = requests = reads = 0
    deadline = time.perf_counter() + p["time_limit_s"]
    with Meter(spec.get("server_pid")) as meter:
        while reads < p["reads"] and time.perf_counter() < deadline:
            got, n, probs, _ = await catch_up(client, CATCHUP_STREAM, deadline)
            problems += probs + ([f"catch-up read returned {got} bytes, expected {p['stream_bytes']}"]
                                 if spec["verify"] and got != p["stream_bytes"] else [])
            total, requests, reads = total + got, requests + n, reads + 1
    client.close()
    mb = total / 1e6
    return {**meter.report(requests), "reads": reads, "requests_per_read": requests / max(1, reads),
            "mb_per_s": mb / meter.elapsed if meter.elapsed else None,
            "server_cpu_ms_per_mb": meter.srv_cpu / mb * 1e3 if meter.srv_cpu is not None and mb else None,
            "problems": problems}


Runner = Callable[[Spec], Coroutine[Any, Any, Result]]
RUNNERS: dict[str, Runner] = {
    "append-seq": run_appends,
    "append-1": run_appends,
    "append-64": run_appends,
    "json-batch": run_json_batch,
    "small-get": run_small_get,
    "catch-up": run_catch_up,
}
