"""Cost on the event loop of the log writer's continuity check (``check_batch``).

The writer checks every batch before writing it and ``StreamTable.apply``
checks each event again; this prints the time per full log batch of each,
so the check's share of the writer's loop time is visible.

    .venv/bin/python scripts/continuity_check_cost.py [--streams 256] [--events 1024]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Event, StreamTable, check_batch


def _table(streams: int) -> StreamTable:
    table = StreamTable()
    for stream_id in range(1, streams + 1):
        table.apply(Created(stream_id, f"s{stream_id}", "text/plain", Expiry(), 0.0, False, b""))
    return table


def _batch(streams: int, events: int) -> list[Event]:
    tails = dict.fromkeys(range(1, streams + 1), 0)
    batch: list[Event] = []
    for k in range(events):
        stream_id = k % streams + 1
        batch.append(Appended(stream_id, tails[stream_id], b"y" * 100))
        tails[stream_id] += 100
    return batch


def _best_ms(runs: list[Callable[[], object]]) -> float:
    times = []
    for run in runs:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--events", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    batch = _batch(args.streams, args.events)
    table = _table(args.streams)  # check_batch leaves it as it is
    check = _best_ms([partial(check_batch, table, batch)] * args.repeat)
    apply = _best_ms([partial(_apply_all, _table(args.streams), batch) for _ in range(args.repeat)])
    print(f"{args.events} appends over {args.streams} streams, per batch (best of {args.repeat}):")
    print(f"  check_batch        {check:.3f} ms")
    print(f"  StreamTable.apply  {apply:.3f} ms")


def _apply_all(table: StreamTable, batch: list[Event]) -> None:
    for event in batch:
        table.apply(event)


if __name__ == "__main__":
    main()
