"""Scenario parameters: the full run and the --quick one.

Every scenario is bounded twice: by a request (or event) count and by a
time limit. ``rounds_max`` caps how many rounds a costly scenario takes part
in (the idle-SSE memory run opens 10,000 connections per server).
"""

from __future__ import annotations

import copy
from typing import Any

SCENARIOS = ("append-seq", "append-1", "append-64", "json-batch", "small-get", "catch-up", "sse-fanout",
             "lp-fanout", "append-under-sse", "append-under-lp", "append-other-sse", "append-other-lp",
             "sse-idle-memory")
# Names that stand for several scenarios on the command line.
GROUPS = {"append-under-fanout": ("append-under-sse", "append-under-lp", "append-other-sse", "append-other-lp")}

_APPEND = {"record_bytes": 100, "warmup_per_conn": 3}
_FANOUT = {"readers": 1000, "record_bytes": 100, "deliver_timeout_s": 5.0}
_UNDER = {"readers": 1000, "record_bytes": 100, "appends": 100, "wake_interval_ms": 20, "time_limit_s": 10.0}

FULL: dict[str, Any] = {
    "rounds": 3,
    "append-seq": {**_APPEND, "writers": 1, "streams": 1, "requests": 1000, "time_limit_s": 8.0},
    "append-1": {**_APPEND, "writers": 64, "streams": 1, "requests": 3000, "time_limit_s": 8.0},
    "append-64": {**_APPEND, "writers": 64, "streams": 64, "requests": 3000, "time_limit_s": 8.0},
    "json-batch": {"writers": 16, "messages": 100, "message_bytes": 100, "requests": 300, "time_limit_s": 8.0},
    "small-get": {"readers": 64, "appends": 3, "record_bytes": 100, "requests": 4000, "time_limit_s": 8.0},
    "catch-up": {"stream_bytes": 16 * 1024 * 1024, "append_bytes": 256 * 1024, "reads": 3, "time_limit_s": 30.0},
    "sse-fanout": {**_FANOUT, "mode": "sse", "events": 4},
    "lp-fanout": {**_FANOUT, "mode": "long-poll", "events": 4},
    "append-under-sse": {**_UNDER, "mode": "sse", "target": "same"},
    "append-under-lp": {**_UNDER, "mode": "long-poll", "target": "same"},
    "append-other-sse": {**_UNDER, "mode": "sse", "target": "other"},
    "append-other-lp": {**_UNDER, "mode": "long-poll", "target": "other"},
    "sse-idle-memory": {"connections": 10_000, "streams": 100, "time_limit_s": 90.0, "rounds_max": 1},
}


def quick() -> dict[str, Any]:
    """About two minutes for all servers: fewer rounds, requests and readers."""
    q = copy.deepcopy(FULL)
    q["rounds"] = 1
    for name in ("append-seq", "append-1", "append-64", "small-get"):
        q[name].update(requests=300, time_limit_s=5.0)
    q["json-batch"].update(requests=60, time_limit_s=5.0)
    q["catch-up"].update(reads=1, time_limit_s=15.0)
    for name in ("sse-fanout", "lp-fanout"):
        q[name].update(readers=200, events=2)
    for name in GROUPS["append-under-fanout"]:
        q[name].update(readers=200, appends=50, time_limit_s=5.0)
    q["sse-idle-memory"].update(connections=1000, streams=10, time_limit_s=30.0)
    return q


def profile(quick_run: bool, scale: float = 1.0) -> dict[str, Any]:
    """The parameters; ``scale`` multiplies request counts and readers (the smoke test uses a small one)."""
    params = quick() if quick_run else copy.deepcopy(FULL)
    if scale != 1.0:
        for name in SCENARIOS:
            for key in ("requests", "readers", "appends", "connections"):
                if key in params[name]:
                    params[name][key] = max(1, int(params[name][key] * scale))
    return params


def expand(names: list[str]) -> list[str]:
    """Scenario names from the command line, groups expanded, in the canonical order; ValueError if unknown."""
    wanted: set[str] = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SCENARIOS:
            wanted.add(name)
        else:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS + tuple(GROUPS))})")
    return [s for s in SCENARIOS if s in wanted]
