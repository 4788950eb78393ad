"""The benchmark end to end with a tiny profile: real servers (ours, the floor app), real load generators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("append-seq", "small-get", "lp-fanout")
SERVERS = ("ours", "floor")


def test_tiny_run_writes_a_complete_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick", "--rounds", "1", "--scale", "0.1", "--no-charts",
         "--scenarios", ",".join(SCENARIOS), "--servers", ",".join(SERVERS), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())

    assert set(doc["servers"]) == set(SERVERS)
    assert all(s["exit_code"] == 0 for s in doc["servers"].values()), doc["servers"]
    assert doc["problems"] == [], doc["problems"]  # every request succeeded, every server stopped cleanly
    assert doc["machine"]["nproc"] >= 1 and doc["rounds"] == 1
    runs = {(r["scenario"], r["server"]): r for r in doc["runs"]}
    assert set(runs) == {(s, v) for s in SCENARIOS for v in SERVERS}
    for (scenario, _), r in runs.items():
        assert "error" not in r, r
        assert 0 < r["loadgen_cpu_frac"] and r["loadgen_bound"] in (True, False)
        if scenario == "lp-fanout":
            assert r["all_delivered"] is True and r["missed"] == 0 and r["all_ms"] > 0
            assert len(r["percentiles_ms"]) == 101
        else:
            assert r["requests"] == doc["params"][scenario]["requests"]
            assert r["req_per_s"] > 0 and r["p50_ms"] > 0

    summary = {(row["metric"], row["server"]): row for row in doc["summary"]}
    ours = summary[("append-seq:req_per_s", "ours")]
    assert ours["median"] == runs[("append-seq", "ours")]["req_per_s"]
    assert ours["vs_floor"] == ours["median"] / summary[("append-seq:req_per_s", "floor")]["median"]
    assert "append, 1 conn sequential" in done.stdout  # the table was printed
