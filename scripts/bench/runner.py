"""Runs the rounds: every scenario on every server, servers in rotating order.

Inside a round each scenario runs on every server back to back before the
next scenario starts, and the order of servers rotates from round to round,
so runs of one scenario on different servers are seconds apart and share
the machine's background load. Each run is one load-generator process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from .servers import ROOT, Server

LOADGEN_BUSY_FRAC = 0.90  # a run whose generator used this share of a core or more may be generator-bound
LOADGEN_SLACK_S = 60.0  # beyond a scenario's own time limits, before its generator is killed


@dataclass
class Outcome:
    runs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_loadgen(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, "-m", "scripts.bench.loadgen"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": "load generator timed out", "problems": [f"load generator exceeded {timeout_s:.0f} s"]}
    if done.returncode != 0 or not done.stdout.strip():
        return {"error": f"load generator exit {done.returncode}", "problems": [done.stderr.strip()[-800:]]}
    result: dict[str, Any] = json.loads(done.stdout)
    if "error" in result:
        result["problems"].append(done.stderr.strip()[-800:])
    return result


def timeout_for(params: dict[str, Any]) -> float:
    own = params.get("time_limit_s", 0) + params.get("events", 0) * params.get("deliver_timeout_s", 0)
    return float(own) * 2 + LOADGEN_SLACK_S


def run_one(server: Server, scenario: str, params: dict[str, Any], rnd: int) -> dict[str, Any]:
    spec = {"scenario": scenario, "host": "127.0.0.1", "port": server.port, "server_pid": server.pid,
            "verify": server.stores, "params": params, "tag": f"r{rnd}-{scenario}-{uuid.uuid4().hex[:8]}"}
    result = run_loadgen(spec, timeout_for(params))
    busy = result.get("loadgen_cpu_frac")
    result.update(server=server.label, scenario=scenario, round=rnd,
                  loadgen_bound=busy is not None and busy >= LOADGEN_BUSY_FRAC)
    return result


def record(outcome: Outcome, result: dict[str, Any]) -> None:
    where = f"round {result['round'] + 1} {result['scenario']} {result['server']}"
    outcome.runs.append(result)
    outcome.problems += [f"{where}: {p}" for p in result.get("problems", [])]
    outcome.notes += [f"{where}: {n}" for n in result.get("notes", [])]
    if result["loadgen_bound"]:
        outcome.problems.append(f"{where}: the load generator used {result['loadgen_cpu_frac']:.0%} of a core "
                                "(it, not the server, may be the bottleneck)")


def progress(result: dict[str, Any], rounds: int) -> str:
    keys = ("req_per_s", "msg_per_s", "mb_per_s", "p50_ms", "p99_ms", "all_ms", "kib_per_conn")
    shown = "  ".join(f"{k}={result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float)))
    busy = result.get("loadgen_cpu_frac")
    return (f"  round {result['round'] + 1}/{rounds} {result['scenario']:17s} {result['server']:10s} {shown}"
            + (f"  gen-cpu={busy:.0%}" if busy is not None else "")
            + (f"  ERROR {result['error']}" if "error" in result else ""))


def run_rounds(servers: list[Server], scenarios: list[str], params: dict[str, Any], rounds: int,
               outcome: Outcome) -> None:
    """Records every run into ``outcome`` as it ends, so an aborted run keeps what it measured."""
    for rnd in range(rounds):
        order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
        for scenario in scenarios:
            if rnd >= params[scenario].get("rounds_max", rounds):
                continue
            for server in order:
                if server.process is None or not server.process.alive():
                    raise RuntimeError(f"{server.label} died:\n{server.process.log_tail() if server.process else ''}")
                result = run_one(server, scenario, params[scenario], rnd)
                record(outcome, result)
                print(progress(result, rounds), flush=True)
        for server in servers:
            server.rss_samples.append({"after": f"round {rnd + 1}", **server.memory()})
