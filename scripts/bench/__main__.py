"""Side-by-side benchmark of trio_streams, the Node reference server, rakaia-streams and the HTTP floor.

    .venv/bin/python -m scripts.bench [--quick] [--rounds N] [--scenarios LIST] [--servers LIST]
                                      [--fsync MODES] [--out DIR] [--publish]

Prints one table (per metric and server: median over rounds, min–max,
ratio to Node file-backed, ratio to the floor), writes DIR/bench.json and
PNG charts (to docs/benchmarks/ with --publish, else DIR). docs/benchmarks.md
explains the method and how to read the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.serverproc import raise_nofile_limit

from . import charts, profiles, report, servers
from .runner import Outcome, run_rounds
from .servers import BUILD, ROOT

PUBLISH_DIR = ROOT / "docs" / "benchmarks"
FSYNC_MODES = ("always", "interval", "never")


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes: fewer rounds and readers")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 2)")
    p.add_argument("--scenarios", type=csv, default=list(profiles.SCENARIOS),
                   help="comma-separated scenarios, or append-under-fanout for its four variants (default: all)")
    p.add_argument("--servers", type=csv, default=list(servers.SERVER_KINDS),
                   help=f"comma-separated subset of {','.join(servers.SERVER_KINDS)} (default: all)")
    p.add_argument("--fsync", type=csv, default=["always"], help="--fsync modes of ours, each its own server")
    p.add_argument("--out", type=Path, default=BUILD, help="directory for bench.json (and charts) (default build/)")
    p.add_argument("--publish", action="store_true", help="charts go to docs/benchmarks/ for docs/benchmarks.md")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--scale", type=float, default=1.0, help="multiply request, reader and connection counts")
    p.add_argument("--keep-data", action="store_true", help="keep the servers' data directories and logs")
    p.add_argument("--redraw", type=Path, metavar="BENCH_JSON", help="only draw the charts of an earlier run")
    a = p.parse_args(argv)
    try:
        a.scenarios = profiles.expand(a.scenarios)
    except ValueError as exc:
        p.error(str(exc))
    unknown = [s for s in a.servers if s not in servers.SERVER_KINDS] + [m for m in a.fsync if m not in FSYNC_MODES]
    if unknown:
        p.error(f"unknown server or fsync mode: {', '.join(unknown)}")
    if a.rounds is not None and a.rounds < 1:
        p.error("--rounds must be at least 1")
    return a


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                            "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()
        info["trio_streams_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "trio_streams"], cwd=ROOT,
                                                         capture_output=True, text=True).stdout.strip())
    except (OSError, StopIteration):
        pass
    return info


def run(args: argparse.Namespace, params: dict[str, Any], rounds: int) -> tuple[list[servers.Server], Outcome,
                                                                                  dict[str, int | None]]:
    workdir = Path(tempfile.mkdtemp(prefix="trio-streams-bench-"))
    chosen, skipped = servers.build(args.servers, args.fsync, workdir)
    outcome, exit_codes = Outcome(notes=list(skipped)), {}
    running: list[servers.Server] = []
    for note in skipped:
        print(f"bench: {note}", flush=True)
    try:
        running, failed = servers.start_all(chosen, workdir)
        outcome.notes += failed
        for note in failed:
            print(f"bench: {note}", flush=True)
        run_rounds(running, args.scenarios, params, rounds, outcome)
    except (RuntimeError, KeyboardInterrupt) as exc:
        outcome.problems.append(f"run aborted: {exc!r}")
        print(f"bench: aborted: {exc}", file=sys.stderr)
    finally:
        for s in chosen:
            exit_codes[s.label] = s.process.stop() if s.process is not None else None
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    for s in chosen:
        if not stopped_cleanly(s, exit_codes[s.label]):
            outcome.problems.append(f"{s.label} exited with status {exit_codes[s.label]} on SIGTERM")
    return running or chosen, outcome, exit_codes


def stopped_cleanly(server: servers.Server, code: int | None) -> bool:
    """Exit 0 on SIGTERM; uvicorn (rakaia) re-raises the signal once it has shut down, which is clean too."""
    return code in (0, None) or (server.kind == "rakaia" and code == -signal.SIGTERM)


def document(args: argparse.Namespace, params: dict[str, Any], rounds: int, started: float, info: dict[str, Any],
             ran: list[servers.Server], outcome: Outcome, exit_codes: dict[str, int | None]) -> dict[str, Any]:
    labels = [s.label for s in ran]
    info["loadavg_end"] = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.time() - started, "quick": args.quick, "rounds": rounds, "scenarios": args.scenarios,
        "machine": info, "params": {k: v for k, v in params.items() if k in args.scenarios},
        "servers": {s.label: {"kind": s.kind, "command": s.command, "durability": s.durability,
                              "rss_samples": s.rss_samples, "exit_code": exit_codes.get(s.label)} for s in ran},
        "summary": report.summarise(outcome.runs, labels), "problems": outcome.problems, "notes": outcome.notes,
        "loadgen_bound_runs": sum(1 for r in outcome.runs if r.get("loadgen_bound")), "runs": outcome.runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The table and what went wrong, for pasting into docs/benchmarks.md."""
    load = " ".join(f"{x:.1f}" for x in doc["machine"]["loadavg_start"])
    lines = [f"{'Quick' if doc['quick'] else 'Full'} run, {doc['rounds']} rounds, {doc['elapsed_s'] / 60:.0f} min, "
             f"{doc['date']}, commit {doc['machine'].get('git_commit', '?')}, load average at start {load}.", "",
             report.markdown_table(doc["summary"]), ""]
    for title, items in (("Problems", doc["problems"]), ("Notes", doc["notes"])):
        if items:
            lines += [f"{title}:", ""] + [f"- {item}" for item in items] + [""]
    return "\n".join(lines)


def print_report(doc: dict[str, Any], out: Path) -> None:
    print()
    print(report.text_table(doc["summary"]))
    print()
    for title, items in (("problem", doc["problems"]), ("note", doc["notes"])):
        if items:
            print(f"{len(items)} {title}(s):")
            for item in items[:25]:
                print(f"  - {item}")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({doc['elapsed_s']:.0f} s)")


def draw(doc: dict[str, Any], args: argparse.Namespace) -> None:
    why = charts.ensure_matplotlib()
    if why is not None:
        print(f"bench: no charts: {why}")
        return
    for path in charts.write_all(doc, PUBLISH_DIR if args.publish else args.out):
        print(f"wrote {path}")


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    # SIGTERM, and SIGINT even where a non-interactive shell started the run
    # with it ignored, stop the run the same way: servers stopped, results kept.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupt)
    args = parse_args(argv)
    if args.redraw is not None:
        draw(json.loads(args.redraw.read_text()), args)
        return 0
    params = profiles.profile(args.quick, args.scale)
    rounds = args.rounds or params["rounds"]
    raise_nofile_limit()
    info = machine_info()
    started = time.time()
    print(f"bench: {'quick' if args.quick else 'full'} run, {rounds} rounds, {len(args.scenarios)} scenarios; "
          f"{info.get('nproc')} CPUs, load {' '.join(f'{x:.1f}' for x in info['loadavg_start'])}", flush=True)
    ran, outcome, exit_codes = run(args, params, rounds)
    doc = document(args, params, rounds, started, info, ran, outcome, exit_codes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(doc, indent=1))
    (args.out / "bench.md").write_text(markdown(doc))
    print_report(doc, args.out)
    if not args.no_charts:
        draw(doc, args)
    return 1 if any(p.startswith("run aborted") for p in outcome.problems) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
