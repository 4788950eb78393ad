"""PNG charts of a run (matplotlib, installed by ``ensure_matplotlib`` when missing).

throughput.png      every throughput metric, one panel each: bars per server, median with min–max
fanout-latency.png  per-reader delivery latency distribution of the SSE and long-poll fan-outs
writer-latency.png  the writer's append p50/p99 with 1,000 readers parked (target 1)
memory.png          memory per idle SSE connection per server
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from .report import METRICS

MATPLOTLIB_PIN = "matplotlib==3.10.8"  # the `bench` extra of pyproject.toml
COLORS = {"ours": "#1f77b4", "node-file": "#d62728", "node-mem": "#ff9896", "floor": "#7f7f7f",
          "rakaia": "#2ca02c"}


def ensure_matplotlib() -> str | None:
    """Imports matplotlib, pip-installing the pinned version first if needed; None, or why not."""
    try:
        import matplotlib  # noqa: F401
        return None
    except ImportError:
        pass
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           MATPLOTLIB_PIN], capture_output=True, text=True)
    if done.returncode != 0:
        return f"pip install {MATPLOTLIB_PIN} failed: {done.stderr.strip()[-300:]}"
    return None


def color(server: str) -> str:
    return COLORS.get(server, "#9467bd")


def bars(ax: Any, rows: list[dict[str, Any]], title: str, unit: str) -> None:
    names = [r["server"] for r in rows]
    medians = [r["median"] for r in rows]
    spread = [[r["median"] - r["min"] for r in rows], [r["max"] - r["median"] for r in rows]]
    ax.bar(names, medians, yerr=spread, capsize=3, color=[color(n) for n in names])
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.tick_params(axis="y", labelsize=7)


def by_metric(summary: list[dict[str, Any]], metric_id: str) -> list[dict[str, Any]]:
    return [r for r in summary if r["metric"] == metric_id]


def panels(summary: list[dict[str, Any]], ids: list[str], path: Path, columns: int = 3) -> Path | None:
    import matplotlib.pyplot as plt

    present = [i for i in ids if by_metric(summary, i)]
    if not present:
        return None
    rows = (len(present) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, metric_id in zip(axes.flat, present):
        data = by_metric(summary, metric_id)
        bars(ax, data, data[0]["label"], data[0]["unit"])
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def median_run(runs: list[dict[str, Any]], scenario: str, server: str) -> dict[str, Any] | None:
    """The run whose time-until-all-delivered is the median of its server's runs."""
    candidates = sorted((r for r in runs if r["scenario"] == scenario and r["server"] == server
                         and r.get("percentiles_ms") and r.get("all_ms") is not None), key=lambda r: r["all_ms"])
    return candidates[len(candidates) // 2] if candidates else None


def fanout_latency(runs: list[dict[str, Any]], servers: list[str], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for ax, scenario, title in zip(axes, ("sse-fanout", "lp-fanout"), ("SSE", "long-poll")):
        chosen = [(s, r) for s in servers if (r := median_run(runs, scenario, s)) is not None]
        for server, run in chosen:
            ax.plot(range(101), run["percentiles_ms"], label=f"{server} ({run['readers']} readers)",
                    color=color(server))
        ax.set_title(f"{title} fan-out: append sent → reader has it (median run)", fontsize=9)
        ax.set_xlabel("percentile of readers", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_yscale("log")
        if chosen:
            ax.legend(fontsize=7)
            drawn = True
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return path if drawn else None


def write_all(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draws every chart the run has data for; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, servers = doc["summary"], list(doc["servers"])
    throughput = [m.id for m in METRICS if m.better == "higher"]
    writer = [m.id for m in METRICS if m.scenario.startswith(("append-under", "append-other"))]
    made = [panels(summary, throughput, out_dir / "throughput.png"),
            fanout_latency(doc["runs"], servers, out_dir / "fanout-latency.png"),
            panels(summary, writer, out_dir / "writer-latency.png", columns=4),
            panels(summary, ["sse-idle-memory:kib_per_conn"], out_dir / "memory.png", columns=1)]
    return [p for p in made if p is not None]
