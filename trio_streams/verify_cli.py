"""``trio-streams verify DATA_DIR``: the command-line face of storage/verify.py.

Owns: the progress display (a tqdm bar on a terminal, plain lines
otherwise), the report's text and the exit status: 0 when nothing is
damaged, 1 when anything is, 2 when the directory cannot be read, 3 when
nothing is damaged but the WAL holds valid records the table cannot apply
(a log written wrong: recovery refuses it, or fences in the fence mode).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .storage.verify import Report, total_bytes, verify_directory

PLAIN_PROGRESS_INTERVAL_S = 5.0
EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_UNREADABLE = 2
EXIT_UNAPPLIED_RECORDS = 3


def add_command(commands: Any) -> None:
    v = commands.add_parser("verify", help="check a data directory against its checksums (read-only)")
    v.add_argument("data_dir", metavar="DATA_DIR", help="the server's --data-dir (may be in use)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    directory = Path(args.data_dir)
    if not directory.is_dir():
        print(f"trio-streams verify: {directory} is not a directory", file=err)
        return EXIT_UNREADABLE
    total = total_bytes(directory)
    with _progress(total, err) as progress:
        report = verify_directory(directory, progress)
    print_report(report, out)
    return exit_status(report)


def exit_status(report: Report) -> int:
    # Damage usually explains the records after it that cannot be applied: it is named first.
    if report.damaged:
        return EXIT_DAMAGED
    return EXIT_UNAPPLIED_RECORDS if report.unapplied else EXIT_OK


class _PlainProgress:
    """A line every few seconds, for logs and pipes (a bar would be a mess of carriage returns)."""

    def __init__(self, total: int, err: TextIO) -> None:
        self.total, self.done, self.err = total, 0, err
        self.last = time.monotonic()
        print(f"verify: {total} bytes to check", file=err, flush=True)

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= PLAIN_PROGRESS_INTERVAL_S:
            self.last = time.monotonic()
            print(f"verify: {self.done}/{self.total} bytes checked", file=self.err, flush=True)

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"verify: {self.done} bytes checked", file=self.err, flush=True)


class _BarProgress:
    def __init__(self, total: int, err: TextIO) -> None:
        from tqdm import tqdm  # the server extra; only this command needs it

        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=err, desc="verify")

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def __enter__(self) -> _BarProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _progress(total: int, err: TextIO) -> _PlainProgress | _BarProgress:
    return _BarProgress(total, err) if err.isatty() else _PlainProgress(total, err)


def print_report(report: Report, out: TextIO) -> None:
    for title, findings in (("WAL segments", report.wal), ("checkpoints", report.checkpoints)):
        print(f"{title}:", file=out)
        if not findings:
            print("  (none)", file=out)
        for f in findings:
            print(f"  {f.file}: {f.status}{': ' + f.detail if f.detail else ''}", file=out)
    _print_unapplied(report, out)
    print("streams:", file=out)
    if not report.streams:
        print("  (none)", file=out)
    for s in report.streams:
        label = f"  {s.stream_id:016x} {s.path!r}" if s.path is not None else f"  {s.stream_id:016x}"
        note = f" ({s.note})" if s.note else ""
        if not s.damage:
            print(f"{label}: ok, {s.length} bytes{note}", file=out)
        for start, end, reason in s.damage:
            print(f"{label}: damaged [{start}, {end}): {reason}{note}", file=out)
    damaged = sum(1 for s in report.streams if s.damaged)
    files = sum(1 for f in (*report.wal, *report.checkpoints) if f.damaged)
    verdict = {EXIT_OK: "OK", EXIT_DAMAGED: "DAMAGED", EXIT_UNAPPLIED_RECORDS: "INCONSISTENT"}[exit_status(report)]
    print(f"{verdict}: {damaged} of {len(report.streams)} streams damaged, {files} damaged log/checkpoint files, "
          f"{len(report.unapplied)} WAL records not applied", file=out)


def _print_unapplied(report: Report, out: TextIO) -> None:
    """Every valid record replay left out, where it is and why: never dropped silently."""
    if not report.unapplied:
        return
    print("WAL records not applied:", file=out)
    for u in report.unapplied:
        stream = "stream id unknown" if u.stream_id is None else f"stream id {u.stream_id} ({u.stream_id:016x})"
        print(f"  {u.where}, {stream}: {u.why}", file=out)
