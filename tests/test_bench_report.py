"""The benchmark's arithmetic, in process: percentiles, medians over rounds, ratios, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench import profiles, report  # noqa: E402
from scripts.bench.loadgen import latency_summary, percentile  # noqa: E402


def run(server: str, rnd: int, **metrics: object) -> dict[str, object]:
    return {"scenario": "append-seq", "server": server, "round": rnd, **metrics}


def row(rows: list[dict[str, object]], metric: str, server: str) -> dict[str, object]:
    return next(r for r in rows if r["metric"] == metric and r["server"] == server)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 50) is None


def test_latency_summary_in_milliseconds_with_distribution() -> None:
    summary = latency_summary([0.001, 0.002, 0.010], "append_")
    assert summary["append_p50_ms"] == pytest.approx(2.0)
    assert summary["append_max_ms"] == pytest.approx(10.0)
    assert len(summary["append_percentiles_ms"]) == 101
    assert latency_summary([])["p50_ms"] is None


def test_median_spread_and_ratios_to_reference_and_floor() -> None:
    runs = [run("ours", 0, req_per_s=100.0), run("ours", 1, req_per_s=300.0), run("ours", 2, req_per_s=200.0),
            run("node-file", 0, req_per_s=50.0), run("node-file", 1, req_per_s=100.0),
            run("node-file", 2, req_per_s=400.0),
            run("floor", 0, req_per_s=400.0), run("floor", 1, req_per_s=400.0), run("floor", 2, req_per_s=400.0)]
    rows = report.summarise(runs, ["ours", "node-file", "floor"])
    ours = row(rows, "append-seq:req_per_s", "ours")
    assert (ours["median"], ours["min"], ours["max"], ours["n"]) == (200.0, 100.0, 300.0, 3)
    assert ours["vs_node_file"] == pytest.approx(2.0)  # 200 / median(50, 100, 400)
    assert ours["vs_floor"] == pytest.approx(0.5)
    # per round: 100/50, 300/100, 200/400 -> median 2.0
    assert ours["paired_vs_node_file"] == pytest.approx(2.0)
    assert row(rows, "append-seq:req_per_s", "node-file")["vs_node_file"] is None
    assert row(rows, "append-seq:req_per_s", "floor")["vs_floor"] is None


def test_failed_runs_and_non_positive_values_give_no_ratio() -> None:
    runs = [run("ours", 0, p50_ms=5.0), run("ours", 1, p50_ms=1e9, error="load generator timed out"),
            run("node-file", 0, p50_ms=0.0)]
    rows = report.summarise(runs, ["ours", "node-file", "floor"])
    ours = row(rows, "append-seq:p50_ms", "ours")
    assert ours["n"] == 1 and ours["median"] == 5.0  # the failed run is not a sample
    assert ours["vs_node_file"] is None and ours["paired_vs_node_file"] is None and ours["vs_floor"] is None
    assert not [r for r in rows if r["server"] == "floor"]


def test_booleans_are_not_metric_values() -> None:
    runs = [{"scenario": "sse-fanout", "server": "ours", "round": 0, "all_ms": True}]
    assert report.summarise(runs, ["ours"]) == []


def test_table_names_each_metric_once_with_every_server() -> None:
    runs = [run("ours", 0, req_per_s=1500.0, p50_ms=0.5), run("node-file", 0, req_per_s=750.0, p50_ms=1.0)]
    rows = report.summarise(runs, ["ours", "node-file"])
    text = report.text_table(rows)
    assert text.count("append, 1 conn sequential ") == 1
    assert "1,500" in text and "2.00×" in text and "0.50×" in text
    md = report.markdown_table(rows).splitlines()
    assert md[0].startswith("| metric |") and len(md) == 2 + len(rows)


def test_profiles_expand_groups_and_scale() -> None:
    assert profiles.expand(["append-under-fanout", "append-seq"]) == [
        "append-seq", "append-under-sse", "append-under-lp", "append-other-sse", "append-other-lp"]
    with pytest.raises(ValueError):
        profiles.expand(["no-such-scenario"])
    small = profiles.profile(quick_run=True, scale=0.1)
    assert small["append-1"]["requests"] == 30 and small["lp-fanout"]["readers"] == 20
    assert small["append-seq"]["writers"] == 1  # connection counts that define a scenario do not scale
    for name in profiles.SCENARIOS:  # every scenario is bounded in time
        assert small[name].get("time_limit_s") or small[name].get("deliver_timeout_s")
