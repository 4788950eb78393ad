#!/usr/bin/env python3
"""What observing a request costs: the per-request work of http/access_log.py and
http/metrics.py (request id, byte counting, counters and histogram), with and
without the access-log line, and the time to render /metrics.

In process, no sockets: it drives the same objects App._http uses, on a
scope shaped like Hypercorn's. Reports microseconds per request (median of
--rounds) and milliseconds per scrape.

  .venv/bin/python scripts/observe_overhead.py [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import trio

from trio_streams.config import Settings
from trio_streams.http.access_log import Observed
from trio_streams.http.app import App

SCOPE = {
    "type": "http", "method": "GET", "path": "/v1/stream/a", "raw_path": b"/v1/stream/a",
    "query_string": b"offset=-1&access_token=x", "headers": [(b"host", b"x"), (b"x-request-id", b"abc")],
    "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 4437),
}


async def _receive() -> dict:
    return {"type": "http.request", "body": b"x" * 100, "more_body": False}


async def _send(message: object) -> None:
    pass


async def _observe(app: App, requests: int, log_line: bool) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        observed = Observed(SCOPE, _receive, _send, app.settings.request_id_bytes_max)
        observed.kind = "catch_up"
        await observed.receive()
        await observed.send({"type": "http.response.start", "status": 200, "headers": []})
        await observed.send({"type": "http.response.body", "body": b"y" * 100})
        seconds = observed.seconds()
        app.metrics.request_done(observed, seconds)
        if log_line:
            observed.log_line(seconds)
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # The access line is formatted and handed to a handler that discards it: the cost of
    # building the record, not of a terminal.
    logging.getLogger("trio_streams.access").addHandler(logging.NullHandler())
    logging.getLogger("trio_streams.access").propagate = False
    logging.getLogger("trio_streams.access").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as directory:
        app = App(Settings(data_dir=directory))
        for log_line in (False, True):
            rounds = [trio.run(_observe, app, args.requests, log_line) for _ in range(args.rounds)]
            print(f"observe one request{' + access line' if log_line else ''}: "
                  f"{statistics.median(rounds):.1f} µs (median of {args.rounds} x {args.requests})")
        renders = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            body = app.metrics.render()
            renders.append((time.perf_counter() - started) * 1e3)
        print(f"render /metrics: {statistics.median(renders):.2f} ms, {len(body)} bytes")


if __name__ == "__main__":
    main()
