#!/usr/bin/env python3
"""What the write path costs the event loop per append, without HTTP.

Runs the service in process (durable, ``fsync=always``, a temporary data
directory) and drives ``Streams.append`` from concurrent writer tasks,
then reports per append: the event loop's own CPU time (the main
thread's ``thread_time``: on a 2-core machine the loop is what saturates),
the whole process's CPU (worker threads too), and task steps (counted by a
trio instrument, so independent of the machine's load). HTTP is left out on
purpose: the Hypercorn floor is measured by the benchmark's trivial app.

Scenarios:
  seq      1 writer, 1 stream, 100-byte appends
  c64s1    64 writers, 1 stream
  c64s64   64 writers, one stream each
  json100  16 writers, 1 JSON stream, 100 messages per append (framing included)

    .venv/bin/python scripts/append_path_cost.py [--rounds 5] [--source DIR]

``--source DIR`` measures another checkout too (``git archive main | tar -x -C DIR``),
alternating with this one round by round; the table gives medians and after/before.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "seq": dict(writers=1, streams=1, appends=1500, json=False),
    "c64s1": dict(writers=64, streams=1, appends=6400, json=False),
    "c64s64": dict(writers=64, streams=64, appends=6400, json=False),
    "json100": dict(writers=16, streams=1, appends=1600, json=True),
}
RECORD = b"0123456789abcdef" * 6 + b"0123"  # 100 bytes


def json_body() -> bytes:
    return json.dumps([{"id": i, "user": "u-17", "kind": "chat.message", "text": "hello world " * 4, "n": 1.5}
                       for i in range(100)], separators=(",", ":")).encode()


async def measure(scenario: str, data_dir: str) -> dict[str, float]:
    import trio

    from trio_streams.config import Settings
    from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry
    from trio_streams.service import Service

    spec = SCENARIOS[scenario]
    content_type = "application/json" if spec["json"] else "application/octet-stream"
    body = json_body() if spec["json"] else RECORD
    service = Service(Settings(data_dir=data_dir, fsync="always", actor_idle_s=60.0))

    class Steps(trio.abc.Instrument):
        count = 0

        def before_task_step(self, task: object) -> None:
            Steps.count += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await service.ready.wait()
        streams = service.streams
        paths = [f"{scenario}-{i}" for i in range(spec["streams"])]
        for path in paths:
            await streams.create(path, CreateRequest(content_type, Expiry(), False, b""))
        per_writer = spec["appends"] // spec["writers"]

        async def writer(i: int, count: int) -> None:
            for _ in range(count):
                await streams.append(paths[i % len(paths)], AppendRequest(content_type, body, None, None, False))

        async def run_all(count: int) -> None:
            async with trio.open_nursery() as writers:
                for i in range(spec["writers"]):
                    writers.start_soon(writer, i, count)

        await run_all(5)  # warm-up
        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        loop0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
        await run_all(per_writer)
        loop, process, wall = time.thread_time() - loop0, time.process_time() - process0, time.perf_counter() - wall0
        trio.lowlevel.remove_instrument(instrument)
        done = per_writer * spec["writers"]
        service.stop()
        await service.finished.wait()
    return dict(loop_us=loop / done * 1e6, process_us=process / done * 1e6, steps=Steps.count / done,
                per_s=done / wall)


def run_once(scenario: str, source: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with tempfile.TemporaryDirectory(prefix="append-path-") as tmp:
        done = subprocess.run([sys.executable, __file__, "_measure", scenario, tmp], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


def main() -> int:
    if sys.argv[1:2] == ["_measure"]:
        import trio

        print(json.dumps(trio.run(measure, sys.argv[2], sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--source", type=Path, help="another checkout, measured as 'before'")
    args = parser.parse_args()
    labels = {"after": None} | ({"before": args.source.resolve()} if args.source else {})
    results: dict = collections.defaultdict(list)
    for rnd in range(args.rounds):
        for scenario in args.scenarios.split(","):
            for label in (list(labels) if rnd % 2 == 0 else list(labels)[::-1]):
                res = run_once(scenario, labels[label])
                results[label, scenario].append(res)
                print(f"round {rnd} {scenario:8} {label:6} loop {res['loop_us']:7.1f} us  process {res['process_us']:7.1f} us"
                      f"  steps {res['steps']:5.2f}  {res['per_s']:8.0f}/s", file=sys.stderr)
    rows = ["| scenario | metric (per append) | " + " | ".join(labels) + (" | after/before |" if len(labels) > 1 else " |")]
    rows.append("|---|---|" + "---|" * (len(labels) + (len(labels) > 1)))
    for scenario in args.scenarios.split(","):
        for metric, unit in (("loop_us", "event-loop CPU, us"), ("process_us", "process CPU, us"), ("steps", "task steps")):
            med = {l: statistics.median(r[metric] for r in results[l, scenario]) for l in labels}
            ratio = f" {med['after'] / med['before']:.2f} |" if len(labels) > 1 else ""
            rows.append(f"| {scenario} | {unit} | " + " | ".join(f"{med[l]:.1f}" for l in labels) + " |" + ratio)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
