"""Crash test for subscriptions: pull-wake workers claim, read and ack while a
producer appends and the server is killed with kill -9 again and again.

Afterwards: no acked cursor is ever behind an ack the server acknowledged,
every acknowledged append reaches some worker (at-least-once), and a wake
fenced before a crash is still fenced after it. The server is the real
``trio-streams serve``: wake tokens from the webhooks package, whose secret
under the data directory verifies them across restarts. `make test` runs
a short version (two kills); `make test-all` the long one."""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, deadline_poll

JSON = {"content-type": "application/json"}
STREAMS = ("events/a", "events/b")
# A client's pause after a refused connection (the server being restarted).
RETRY_PAUSE_S = 0.05


@dataclass
class Ledger:
    """What the server acknowledged, and what the workers saw."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    appended: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)
    acked: dict[str, int] = field(default_factory=dict)  # path → highest acknowledged ack position
    finished_wakes: list[dict[str, Any]] = field(default_factory=list)  # released: stale from then on


def position(offset: str) -> int:
    return int(offset.rpartition("_")[2])


def produce(srv: Server, ledger: Ledger, stop: threading.Event, rng: random.Random) -> None:
    n = 0
    with httpx.Client(timeout=5.0) as client:
        while not stop.is_set():
            n += 1
            try:
                response = client.post(srv.stream_url(rng.choice(STREAMS)), content=f'{{"n":{n}}}', headers=JSON)
            except httpx.TransportError:  # the server is down: retry, without spinning its start-up off the CPU
                stop.wait(RETRY_PAUSE_S)
                continue
            if response.status_code in (200, 204):
                with ledger.lock:
                    ledger.appended.add(n)


def work(srv: Server, ledger: Ledger, stop: threading.Event, name: str) -> None:
    with httpx.Client(timeout=5.0) as client:
        while not stop.is_set():
            try:
                one_wake(srv, client, ledger, name)
            except httpx.TransportError:
                stop.wait(RETRY_PAUSE_S)


def one_wake(srv: Server, client: httpx.Client, ledger: Ledger, name: str) -> None:
    claim = client.post(srv.stream_url("__ds/subscriptions/crash/claim"), json={"worker": name})
    if claim.status_code != 200:
        return
    claimed = claim.json()
    acks = []
    for stream in claimed["streams"]:
        offset, tail = stream["acked_offset"], position(stream["tail_offset"])
        while position(offset) < tail:
            read = client.get(srv.stream_url(stream["path"]), params={"offset": offset})
            assert read.status_code == 200, read.text
            with ledger.lock:
                ledger.delivered.update(m["n"] for m in read.json())
            offset = read.headers["stream-next-offset"]
        acks.append({"stream": stream["path"], "offset": offset})
    request = {"wake_id": claimed["wake_id"], "generation": claimed["generation"], "acks": acks, "done": True}
    ack = client.post(srv.stream_url("__ds/subscriptions/crash/ack"), json=request,
                      headers={"authorization": f"Bearer {claimed['token']}"})
    if ack.status_code == 200:
        with ledger.lock:
            for item in acks:
                ledger.acked[item["stream"]] = max(ledger.acked.get(item["stream"], 0), position(item["offset"]))
            ledger.finished_wakes.append({**request, "token": claimed["token"]})


def check(srv: Server, ledger: Ledger) -> None:
    described = httpx.get(srv.stream_url("__ds/subscriptions/crash")).json()
    cursors = {s["path"]: position(s["acked_offset"]) for s in described["streams"]}
    with ledger.lock:
        acked, finished = dict(ledger.acked), list(ledger.finished_wakes[-3:])
    for path, at_least in acked.items():
        assert cursors[path] >= at_least, (path, cursors[path], at_least)
    for wake in finished:  # every finished wake stays fenced, across the crash too
        for action, body in (("release", {"wake_id": wake["wake_id"], "generation": wake["generation"]}),
                             ("ack", {key: wake[key] for key in ("wake_id", "generation", "acks", "done")})):
            stale = httpx.post(srv.stream_url(f"__ds/subscriptions/crash/{action}"), json=body,
                               headers={"authorization": f"Bearer {wake['token']}"})
            assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED"), (action, stale.text)


@pytest.mark.parametrize("kills", [2, pytest.param(12, marks=pytest.mark.slow)])
def test_workers_claiming_and_acking_through_repeated_kill_9(tmp_path: Path, kills: int) -> None:
    rng = random.Random()
    srv = Server(tmp_path / "data", ["--fsync", "always"])
    srv.data_dir.mkdir()
    ledger, stop_producer, stop_workers = Ledger(), threading.Event(), threading.Event()
    threads = [threading.Thread(target=produce, args=(srv, ledger, stop_producer, rng))] + \
        [threading.Thread(target=work, args=(srv, ledger, stop_workers, f"worker-{i}")) for i in range(2)]
    try:
        srv.start()
        for path in (*STREAMS, "wake/pool"):
            assert httpx.put(srv.stream_url(path), content=b"[]", headers=JSON).status_code == 201
        config = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool", "lease_ttl_ms": 1000}
        assert httpx.put(srv.stream_url("__ds/subscriptions/crash"), json=config).status_code == 201
        for thread in threads:
            thread.start()
        for _ in range(kills):
            stop_workers.wait(rng.uniform(0.5, 1.5))  # load runs; where the kill lands is random
            srv.restart(signal.SIGKILL)
            check(srv, ledger)
        stop_producer.set()
        threads[0].join()

        def drained() -> bool:
            described = httpx.get(srv.stream_url("__ds/subscriptions/crash")).json()
            tails = {p: int(httpx.head(srv.stream_url(p)).headers["stream-next-offset"].rpartition("_")[2])
                     for p in STREAMS}
            return all(position(s["acked_offset"]) >= tails[s["path"]] for s in described["streams"])

        deadline_poll(drained, timeout=60.0, interval=0.1, what="the workers to ack everything")
        stop_workers.set()
        for thread in threads[1:]:
            thread.join()
        check(srv, ledger)
        print(f"appended {len(ledger.appended)}, delivered {len(ledger.delivered)}, wakes {len(ledger.finished_wakes)}")
        assert ledger.finished_wakes and ledger.appended
        assert ledger.appended <= ledger.delivered, sorted(ledger.appended - ledger.delivered)[:20]
        srv.stop()
    finally:
        stop_producer.set()
        stop_workers.set()
        srv.kill_quietly()
