#!/usr/bin/env python3
"""How long the subscription decisions that scale with the data take on the event loop.

Pure functions (protocol/subscriptions.py), timed in process: the eager
backfill of a pattern subscription over N existing streams (``decide_put``),
linking one newly created stream against M pattern subscriptions
(``decide_streams_created``), and encoding the subscriptions table for a
checkpoint. Run:

    .venv/bin/python scripts/subscription_decision_cost.py [--streams N] [--subscriptions M]
"""

from __future__ import annotations

import argparse
import time

import orjson

from trio_streams.protocol import subscriptions as S


def timed(label: str, fn, repeat: int = 1) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    per = (time.perf_counter() - started) / repeat
    print(f"{label}: {per * 1000:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--subscriptions", type=int, default=1000)
    args = parser.parse_args()
    existing = [(f"tenant-{i % 100}/events/{i}", i) for i in range(args.streams)]
    tails = dict(existing).get
    limits = S.Limits()
    config = S.parse_config(orjson.dumps({"type": "pull-wake", "pattern": "tenant-7/events/*",
                                          "wake_stream": "wake/pool"}), limits)
    table = S.SubscriptionTable()
    timed(f"backfill of one pattern subscription over {args.streams} streams",
          lambda: S.decide_put(table, "s", config, 0.0, 0, existing, tails, 1_000_000))
    for n in range(args.subscriptions):
        sub_config = S.parse_config(orjson.dumps({"type": "pull-wake", "pattern": f"tenant-{n}/events/*",
                                                  "wake_stream": "wake/pool"}), limits)
        _, events = S.decide_put(table, f"s{n}", sub_config, 0.0, 0, existing[:50], tails, 1_000_000)
        for event in events:
            table.apply(event)
    timed(f"linking one new stream against {args.subscriptions} pattern subscriptions",
          lambda: S.decide_streams_created(table, [("tenant-3/events/new", 10**9, 0)], 1_000_000), repeat=100)
    timed(f"encoding the subscriptions table ({args.subscriptions} subscriptions) for a checkpoint",
          lambda: orjson.dumps(S.table_to_json(table)), repeat=10)


if __name__ == "__main__":
    main()
