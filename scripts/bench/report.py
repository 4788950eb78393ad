"""Medians over rounds, ratios, the table, bench.json.

A metric's value for a server is the median of its runs (one per round);
``min``–``max`` is their spread. Ratios divide medians: by the Node
file-backed server's (the durability-equivalent peer) and by the floor's
(what the HTTP stack allows at most). The paired ratio is the median of
per-round ratios to node-file: runs of the same round share the machine's
noise, so it is often steadier than the ratio of medians. A ratio of values
that are not both positive means nothing and is left out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

REFERENCE = "node-file"
FLOOR = "floor"


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"

    @property
    def id(self) -> str:
        return f"{self.scenario}:{self.key}"


METRICS = (
    Metric("append-seq", "req_per_s", "append, 1 conn sequential", "req/s", "higher"),
    Metric("append-seq", "p50_ms", "append, 1 conn sequential: p50", "ms", "lower"),
    Metric("append-seq", "p99_ms", "append, 1 conn sequential: p99", "ms", "lower"),
    Metric("append-1", "req_per_s", "append, 64 conns, 1 stream", "req/s", "higher"),
    Metric("append-1", "p99_ms", "append, 64 conns, 1 stream: p99", "ms", "lower"),
    Metric("append-64", "req_per_s", "append, 64 conns, 64 streams", "req/s", "higher"),
    Metric("append-64", "p99_ms", "append, 64 conns, 64 streams: p99", "ms", "lower"),
    Metric("json-batch", "msg_per_s", "JSON 100 msgs/POST, 16 conns", "msg/s", "higher"),
    Metric("small-get", "req_per_s", "small GET, 64 conns", "req/s", "higher"),
    Metric("catch-up", "mb_per_s", "catch-up read 16 MiB", "MB/s", "higher"),
    Metric("catch-up", "server_cpu_ms_per_mb", "catch-up read: server CPU", "ms/MB", "lower"),
    Metric("sse-fanout", "all_ms", "SSE fan-out: all readers have it", "ms", "lower"),
    Metric("sse-fanout", "p99_ms", "SSE fan-out: per reader p99", "ms", "lower"),
    Metric("lp-fanout", "all_ms", "long-poll fan-out: all readers have it", "ms", "lower"),
    Metric("lp-fanout", "p99_ms", "long-poll fan-out: per reader p99", "ms", "lower"),
    Metric("append-under-sse", "p50_ms", "append beside SSE readers, same stream: p50", "ms", "lower"),
    Metric("append-under-sse", "p99_ms", "append beside SSE readers, same stream: p99", "ms", "lower"),
    Metric("append-under-lp", "p50_ms", "append beside long-polls, same stream: p50", "ms", "lower"),
    Metric("append-under-lp", "p99_ms", "append beside long-polls, same stream: p99", "ms", "lower"),
    Metric("append-other-sse", "p50_ms", "append to B, SSE readers woken on A: p50", "ms", "lower"),
    Metric("append-other-sse", "p99_ms", "append to B, SSE readers woken on A: p99", "ms", "lower"),
    Metric("append-other-lp", "p50_ms", "append to B, long-polls woken on A: p50", "ms", "lower"),
    Metric("append-other-lp", "p99_ms", "append to B, long-polls woken on A: p99", "ms", "lower"),
    Metric("sse-idle-memory", "kib_per_conn", "memory per idle SSE connection", "KiB", "lower"),
)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and a > 0 and b > 0 else None


def values(runs: list[dict[str, Any]], metric: Metric, server: str) -> list[float]:
    return [r[metric.key] for r in runs
            if r["scenario"] == metric.scenario and r["server"] == server and "error" not in r
            and isinstance(r.get(metric.key), (int, float)) and not isinstance(r.get(metric.key), bool)]


def paired(runs: list[dict[str, Any]], metric: Metric, server: str) -> float | None:
    """Median over rounds of server/node-file within the round."""
    by_round = {r["round"]: r.get(metric.key) for r in runs
                if r["scenario"] == metric.scenario and r["server"] == REFERENCE and "error" not in r}
    ratios = [ratio(r.get(metric.key), by_round.get(r["round"])) for r in runs
              if r["scenario"] == metric.scenario and r["server"] == server and "error" not in r]
    present = [x for x in ratios if x is not None]
    return statistics.median(present) if present else None


def summarise(runs: list[dict[str, Any]], servers: list[str]) -> list[dict[str, Any]]:
    """One row per metric and server that has values."""
    rows = []
    for metric in METRICS:
        medians = {s: statistics.median(v) for s in servers if (v := values(runs, metric, s))}
        for s in servers:
            vals = values(runs, metric, s)
            if not vals:
                continue
            rows.append({"metric": metric.id, "label": metric.label, "unit": metric.unit, "better": metric.better,
                         "server": s, "median": medians[s], "min": min(vals), "max": max(vals), "n": len(vals),
                         "vs_node_file": None if s == REFERENCE else ratio(medians[s], medians.get(REFERENCE)),
                         "paired_vs_node_file": None if s == REFERENCE else paired(runs, metric, s),
                         "vs_floor": None if s == FLOOR else ratio(medians[s], medians.get(FLOOR))})
    return rows


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


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


COLUMNS = ("metric", "unit", "server", "median", "min–max", "n", "÷ node-file", "÷ floor")


def cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    out, last = [], None
    for row in rows:
        first = row["metric"] != last
        last = row["metric"]
        out.append([row["label"] if first else "", row["unit"] if first else "", row["server"], fmt(row["median"]),
                    f"{fmt(row['min'])}–{fmt(row['max'])}", str(row["n"]), fmt_ratio(row["vs_node_file"]),
                    fmt_ratio(row["vs_floor"])])
    return out


def text_table(rows: list[dict[str, Any]]) -> str:
    body = cells(rows)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]

    def line(cs: list[str] | tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in body)])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|"]
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in cells(rows)])
