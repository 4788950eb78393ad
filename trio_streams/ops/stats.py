"""``trio-streams stats DATA``: what a data directory holds, read-only.

Owns: the figures (streams by kind, their bytes, the WAL, the checkpoint,
the largest streams, producers) and their text and JSON forms. The state
is the newest valid checkpoint with the WAL after it replayed, read the
way ``verify`` reads it, so it may run beside the server.
"""

from __future__ import annotations

import heapq
import os
import time
from pathlib import Path
from typing import Any, TextIO

from ..storage.snapshot import list_snapshots, snapshot_name
from ..storage.verify import Report, load_state
from ..storage.wal import list_segments


def collect(directory: Path, largest: int, now: float | None = None) -> dict[str, Any]:
    report = Report()
    position, table, wal_end = load_state(directory, report)
    states = list(table.by_id.values())
    own = {s.stream_id: s.tail - s.base for s in states}
    return {
        "data_dir": str(directory),
        "streams": {
            "total": len(states),
            "live": sum(1 for s in states if not s.soft_deleted),
            "open": sum(1 for s in states if not s.soft_deleted and not s.closed),
            "closed": sum(1 for s in states if s.closed and not s.soft_deleted),
            "soft_deleted": sum(1 for s in states if s.soft_deleted),
            "forks": sum(1 for s in states if s.fork is not None),
            "fenced": sum(1 for s in states if s.damaged is not None),
            "with_ttl_or_expiry": sum(1 for s in states if s.expiry.ttl_s is not None or s.expiry.expires_at_s is not None),
        },
        "stream_bytes": sum(own.values()),
        "stream_files_bytes": _folder_bytes(directory / "streams"),
        "wal": _wal(directory / "wal", wal_end),
        "checkpoint": _checkpoint(directory / "checkpoints", position, time.time() if now is None else now),
        "largest": [
            {"path": s.path, "id": s.stream_id, "bytes": own[s.stream_id], "content_type": s.content_type,
             "closed": s.closed, "fork": s.fork is not None}
            for s in heapq.nlargest(largest, states, key=lambda s: (own[s.stream_id], -s.stream_id))
        ],
        "producers": {
            "total": sum(len(s.producers) for s in states),
            "streams_with_producers": sum(1 for s in states if s.producers),
        },
        "problems": [f"{f.file}: {f.status}" for f in (*report.wal, *report.checkpoints) if f.damaged]
                    + [f"{len(report.unapplied)} WAL records not applied"] * bool(report.unapplied),
    }


def _folder_bytes(folder: Path) -> int:
    total = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:  # removed meanwhile by the running server
                pass
    return total


def _wal(folder: Path, end: int) -> dict[str, Any]:
    starts = list_segments(folder) if folder.is_dir() else []
    return {"segments": len(starts), "bytes": _folder_bytes(folder), "end_position": end}


def _checkpoint(folder: Path, position: int, now: float) -> dict[str, Any] | None:
    if not folder.is_dir() or position not in list_snapshots(folder):
        return None
    try:
        mtime = (folder / snapshot_name(position)).stat().st_mtime
    except FileNotFoundError:
        return {"position": position, "age_s": None}
    return {"position": position, "age_s": round(max(0.0, now - mtime), 3)}


def print_text(stats: dict[str, Any], out: TextIO) -> None:
    s = stats["streams"]
    print(f"data directory: {stats['data_dir']}", file=out)
    print(f"streams: {s['total']} ({s['open']} open, {s['closed']} closed, {s['soft_deleted']} soft-deleted; "
          f"{s['forks']} forks, {s['fenced']} fenced, {s['with_ttl_or_expiry']} with a TTL or expiry)", file=out)
    print(f"stream bytes: {stats['stream_bytes']} (files on disk: {stats['stream_files_bytes']})", file=out)
    w = stats["wal"]
    print(f"WAL: {w['segments']} segments, {w['bytes']} bytes, ends at log position {w['end_position']}", file=out)
    c = stats["checkpoint"]
    print("checkpoint: none" if c is None else f"checkpoint: log position {c['position']}, {c['age_s']} s old", file=out)
    p = stats["producers"]
    print(f"producers: {p['total']} on {p['streams_with_producers']} streams", file=out)
    print(f"largest {len(stats['largest'])} streams:", file=out)
    for row in stats["largest"]:
        flags = "".join((" closed" if row["closed"] else "", " fork" if row["fork"] else ""))
        print(f"  {row['bytes']:>14} {row['path']} ({row['content_type']}{flags})", file=out)
    for problem in stats["problems"]:
        print(f"problem: {problem} (run trio-streams verify)", file=out)
