"""Live-reader scenarios: fan-out, the writer's view under fan-out, idle SSE memory.

Readers park on one stream, each on its own connection, as SSE streams or
long-polls that re-poll at once after each response. An event is one
append of a record that starts with a unique marker (``event-000042-``);
a reader has it when the marker shows up in its response bytes, timed when
those bytes are parsed.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time

from scripts.serverproc import proc_memory

from .client import Client, open_many
from .loadgen import PREFIX, Meter, Result, Spec, create, latency_summary, quiesce
from .scenarios import TEXT, Runner, Tally, closed_loop, time_limit_note, timed

NEXT_OFFSET_RE = re.compile(rb'"streamNextOffset"\s*:\s*"([^"]+)"')
CONNECT_TIMEOUT_S = 60.0
READER_ERROR_PAUSE_S = 0.05  # a reader whose request failed waits this long before it asks again


def marker(k: int) -> bytes:
    return f"event-{k:06d}-".encode()


class Readers:
    """``n`` live readers of one stream and the deliveries of the current event."""

    def __init__(self, clients: list[Client], name: str, offset: str, mode: str) -> None:
        self.clients, self.name, self.mode = clients, name, mode
        self.offsets = [offset] * len(clients)
        self.parked = 0  # SSE: heads received; long-poll: requests in flight
        self.current = b"\x00"  # no event yet
        self.received: list[float] = []
        self.have = [False] * len(clients)
        self.everyone = asyncio.Event()
        self.responses = self.timeouts = self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        run = self._sse if self.mode == "sse" else self._long_poll
        self.tasks = [asyncio.ensure_future(run(i)) for i in range(len(self.clients))]

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            c.abort()

    def expect(self, k: int) -> None:
        self.current, self.received, self.everyone = marker(k), [], asyncio.Event()
        self.have = [False] * len(self.clients)

    def _error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def _got(self, i: int, data: bytes, t: float) -> None:
        if not self.have[i] and self.current in data:
            self.have[i] = True
            self.received.append(t)
            if len(self.received) == len(self.clients):
                self.everyone.set()

    async def _sse(self, i: int) -> None:
        tail, headed = b"", False

        def on_data(chunk: bytes, t: float) -> None:
            nonlocal tail, headed
            if not chunk:
                headed = True
                self.parked += 1
                return
            window = tail + chunk
            self._got(i, window, t)
            found = NEXT_OFFSET_RE.findall(window)
            if found:
                self.offsets[i] = found[-1].decode()
            tail = window[-256:]

        while not self.stopping:
            failed = False
            try:
                r = await self.clients[i].request("GET", f"{PREFIX}{self.name}?offset={self.offsets[i]}&live=sse",
                                                  on_data=on_data)
                self.responses += 1  # the server ended the SSE response (a recycle): reconnect
                failed = r.status != 200
                if failed:
                    self._error(f"HTTP {r.status}")
            except ConnectionError as exc:
                failed = True
                self._error(str(exc)[:60])
            if headed:
                headed = False
                self.parked -= 1
            await asyncio.sleep(READER_ERROR_PAUSE_S if failed else 0)

    async def _long_poll(self, i: int) -> None:
        cursor = ""
        while not self.stopping:
            target = f"{PREFIX}{self.name}?offset={self.offsets[i]}&live=long-poll" + (f"&cursor={cursor}" if cursor else "")
            self.parked += 1
            try:
                r = await self.clients[i].request("GET", target, keep_body=True)
            except ConnectionError as exc:
                self._error(str(exc)[:60])
                await asyncio.sleep(READER_ERROR_PAUSE_S)
                continue
            finally:
                self.parked -= 1
            cursor = r.header("stream-cursor", cursor)
            self.offsets[i] = r.header("stream-next-offset", self.offsets[i])
            if r.status == 200:
                self.responses += 1
                self._got(i, r.body or b"", r.t)
            elif r.status == 204:
                self.timeouts += 1
            else:
                self._error(f"HTTP {r.status}")
                await asyncio.sleep(READER_ERROR_PAUSE_S)

    async def all_parked(self, timeout_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        while self.parked < len(self.clients) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        return self.parked >= len(self.clients)

    def problems(self) -> list[str]:
        if not self.errors:
            return []
        kinds = ", ".join(f"{n}× {kind}" for kind, n in sorted(self.error_kinds.items(), key=lambda kv: -kv[1]))
        return [f"{self.errors} live reads failed or answered an error status ({kinds})"]

    def notes(self) -> list[str]:
        out = [f"{self.timeouts} long-polls timed out and were re-issued"] if self.timeouts else []
        if self.mode == "sse" and self.responses:
            out.append(f"{self.responses} SSE responses ended by the server and were reopened")
        return out


async def park_readers(spec: Spec, name_suffix: str = "fan") -> tuple[Client, Readers]:
    """A writer connection and the stream's readers, started and parked."""
    host, port, p = spec["host"], spec["port"], spec["params"]
    writer = await Client.open(host, port)
    name = f"{spec['tag']}-{name_suffix}"
    offset = await create(writer, name, TEXT)
    readers = Readers(await open_many(host, port, p["readers"]), name, offset, p["mode"])
    readers.start()
    if not await readers.all_parked(CONNECT_TIMEOUT_S):
        raise RuntimeError(f"only {readers.parked} of {p['readers']} readers connected")
    return writer, readers


# -- fan-out: time until every reader has the append ---------------------------

async def run_fanout(spec: Spec) -> Result:
    p = spec["params"]
    writer, readers = await park_readers(spec)
    per_reader: list[float] = []
    everyone: list[float] = []
    acks: list[float] = []
    missed = 0
    busy = Busy()
    meter = Meter(spec.get("server_pid"))
    for k in range(p["events"] + 1):  # event 0 warms up, not measured
        if k == 1:
            meter.__enter__()
        sent, got, ack = await one_event(spec, writer, readers, k, busy if k else Busy())
        if k == 0:
            continue
        missed += len(readers.clients) - len(got)
        per_reader += [t - sent for t in got]
        acks.append(ack)
        if len(got) == len(readers.clients):
            everyone.append(max(got) - sent)
    meter.__exit__()
    await readers.stop()
    writer.close()
    problems = readers.problems() + ([f"{missed} deliveries missing after {p['deliver_timeout_s']} s"] if missed else [])
    return {**meter.report(), "loadgen_cpu_frac": busy.share(), **latency_summary(per_reader),
            "events": p["events"], "readers": p["readers"],
            "all_delivered": missed == 0, "missed": missed,
            "all_ms": statistics.median(everyone) * 1e3 if everyone else None,
            **latency_summary(acks, "append_"), "problems": problems, "notes": readers.notes()}


class Busy:
    """The generator's CPU share of one core over the delivery windows only.

    Over a whole fan-out run the waits for quiet dilute it; while 1,000
    responses arrive is when the generator could be the bottleneck.
    """

    def __init__(self) -> None:
        self.cpu_s = self.wall_s = 0.0

    def __enter__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.wall_s += time.perf_counter() - self.t0
        self.cpu_s += time.process_time() - self.c0

    def share(self) -> float | None:
        return self.cpu_s / self.wall_s if self.wall_s else None


async def one_event(spec: Spec, writer: Client, readers: Readers, k: int,
                    busy: Busy) -> tuple[float, list[float], float]:
    """Waits until the readers are parked and the server idle, appends event k: (sent, receipt times, ack)."""
    p = spec["params"]
    await readers.all_parked(p["deliver_timeout_s"])
    await quiet_server(spec.get("server_pid"))
    await writer.refresh()
    readers.expect(k)
    payload = (marker(k) + b"x" * p["record_bytes"])[: max(p["record_bytes"], len(marker(k)))]
    with busy:
        sent = time.perf_counter()
        r = await writer.request("POST", PREFIX + readers.name, payload, [("Content-Type", TEXT)])
        if r.status not in (200, 204):
            raise RuntimeError(f"fan-out append: HTTP {r.status}")
        try:
            await asyncio.wait_for(readers.everyone.wait(), p["deliver_timeout_s"])
        except asyncio.TimeoutError:
            pass
    return sent, list(readers.received), r.t - sent


async def quiet_server(pid: int | None) -> float:
    """Waits until the server has parked the last readers' requests.

    On a loaded machine a server that is merely not scheduled also uses no
    CPU for a while, so the quiet window here is 100 ms, not 30; the cap
    (3 s) stays well below the long-poll timeout, so parked polls do not
    expire while we wait.
    """
    return await quiesce(pid, quiet_s=0.1, max_s=3.0)


# -- the writer's view: append latency with readers parked ----------------------

async def run_append_under_fanout(spec: Spec) -> Result:
    """A writer appends back to back to the readers' stream (``same``) or to another one (``other``).

    With ``other``, a second writer keeps waking the readers by appending to
    their stream every ``wake_interval_ms``: the isolation case.
    """
    p = spec["params"]
    writer, readers = await park_readers(spec)
    await quiet_server(spec.get("server_pid"))
    target = readers.name
    if p["target"] == "other":
        target = f"{spec['tag']}-other"
        await create(writer, target, TEXT)
    wakes = [0]
    waker = asyncio.ensure_future(wake(spec, readers.name, wakes)) if p["target"] == "other" else None
    tally = Tally()
    payload = b"w" * p["record_bytes"]

    async def one(_: int) -> bool:
        return await timed(writer, tally, "POST", PREFIX + target, payload, [("Content-Type", TEXT)])

    with Meter(spec.get("server_pid")) as meter:
        await closed_loop([writer], one, p["appends"], p["time_limit_s"])
    if waker is not None:
        waker.cancel()
        await asyncio.gather(waker, return_exceptions=True)
    await readers.stop()
    writer.close()
    return {**meter.report(tally.ok), **latency_summary(tally.latencies), "requests": tally.ok,
            "req_per_s": tally.ok / meter.elapsed if meter.elapsed else None, "wakes": wakes[0] if waker is not None else tally.ok,
            "reader_responses": readers.responses, "problems": tally.problems("appends") + readers.problems(),
            "notes": readers.notes() + time_limit_note(tally.ok, p["appends"])}


async def wake(spec: Spec, name: str, count: list[int]) -> None:
    """Appends to the readers' stream every ``wake_interval_ms`` until cancelled; counts into ``count[0]``."""
    client = await Client.open(spec["host"], spec["port"])
    interval_s = spec["params"]["wake_interval_ms"] / 1e3
    try:
        while True:
            await client.request("POST", PREFIX + name, marker(count[0]), [("Content-Type", TEXT)])
            count[0] += 1
            await asyncio.sleep(interval_s)
    finally:
        client.close()


# -- memory per idle SSE connection ----------------------------------------------

async def run_sse_idle_memory(spec: Spec) -> Result:
    """Server RSS growth per idle SSE connection, ``connections`` of them over ``streams`` streams."""
    host, port, p = spec["host"], spec["port"], spec["params"]
    pid = spec.get("server_pid")
    setup = await Client.open(host, port)
    names = [f"{spec['tag']}-idle{i}" for i in range(p["streams"])]
    offsets = [await create(setup, name, TEXT) for name in names]
    await quiesce(pid, quiet_s=0.2, max_s=2.0)
    before = proc_memory(pid).get("VmRSS")
    clients = await open_many(host, port, p["connections"], batch=100)
    groups = [Readers(clients[i::len(names)], names[i], offsets[i], "sse") for i in range(len(names))]
    for g in groups:
        g.start()
    deadline = time.perf_counter() + p["time_limit_s"]
    while sum(g.parked for g in groups) < len(clients) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    connected = sum(g.parked for g in groups)
    await quiesce(pid, quiet_s=0.2, max_s=2.0)
    after = proc_memory(pid).get("VmRSS")
    for g in groups:
        await g.stop()
    setup.close()
    grown = (after - before) * 1024 if before is not None and after is not None else None
    errors = sum(g.errors for g in groups)
    problems = [f"{errors} SSE requests failed and were reopened while connecting"] if errors else []
    if connected < len(clients):
        problems.append(f"only {connected} of {len(clients)} SSE connections were answered")
    return {"connections": connected, "rss_before_mib": before, "rss_after_mib": after,
            "kib_per_conn": grown / connected if grown is not None and connected else None,
            "problems": problems, "notes": []}


RUNNERS: dict[str, Runner] = {
    "sse-fanout": run_fanout,
    "lp-fanout": run_fanout,
    "append-under-sse": run_append_under_fanout,
    "append-under-lp": run_append_under_fanout,
    "append-other-sse": run_append_under_fanout,
    "append-other-lp": run_append_under_fanout,
    "sse-idle-memory": run_sse_idle_memory,
}
