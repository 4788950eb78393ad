"""``trio-streams stats``: the figures of a directory whose contents the test wrote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import EXE, PREFIX, Server

TEXT = {"content-type": "text/plain"}


@pytest.fixture(scope="module")
def known_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """big: 3000 bytes; small: 10, closed; src: 100, soft-deleted (fork keeps it);
    fork: 5 of its own; prod: 2 producer appends of 4 bytes; ttl: 0 bytes, a TTL;
    gone: deleted (not counted)."""
    srv = Server(tmp_path_factory.mktemp("stats") / "data")
    srv.data_dir.mkdir()
    try:
        srv.start()
        put = lambda name, body=b"", **h: httpx.put(srv.stream_url(name), headers={**TEXT, **h}, content=body)  # noqa: E731
        assert put("big", b"b" * 1000).status_code == 201
        assert httpx.post(srv.stream_url("big"), headers=TEXT, content=b"b" * 2000).status_code in (200, 204)
        assert put("small", b"s" * 10, **{"stream-closed": "true"}).status_code == 201
        assert put("src", b"r" * 100).status_code == 201
        assert put("fork", **{"stream-forked-from": f"{PREFIX}src"}).status_code == 201
        assert httpx.post(srv.stream_url("fork"), headers=TEXT, content=b"fffff").status_code in (200, 204)
        assert httpx.delete(srv.stream_url("src")).status_code == 204
        assert put("prod").status_code == 201
        for seq in range(2):
            headers = {**TEXT, "producer-id": "p1", "producer-epoch": "0", "producer-seq": str(seq)}
            assert httpx.post(srv.stream_url("prod"), headers=headers, content=b"pppp").status_code == 200
        assert put("ttl", **{"stream-ttl": "600"}).status_code == 201
        assert put("gone", b"g").status_code == 201
        assert httpx.delete(srv.stream_url("gone")).status_code == 204
        # Running beside the server: read-only, like verify.
        beside = subprocess.run([str(EXE), "stats", "--json", str(srv.data_dir)], capture_output=True, text=True, timeout=60)
        assert beside.returncode == 0, beside.stderr
        assert json.loads(beside.stdout)["streams"]["total"] == 6
        assert srv.stop() == 0
    finally:
        srv.kill_quietly()
    return srv.data_dir


def test_stats_json_counts_a_known_directory(known_dir: Path) -> None:
    done = subprocess.run([str(EXE), "stats", "--json", "--largest", "3", str(known_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["streams"] == {"total": 6, "live": 5, "open": 4, "closed": 1, "soft_deleted": 1, "forks": 1,
                                "fenced": 0, "with_ttl_or_expiry": 1}
    assert stats["stream_bytes"] == 3000 + 10 + 100 + 5 + 8
    assert [(row["path"], row["bytes"]) for row in stats["largest"]] == [("big", 3000), ("src", 100), ("small", 10)]
    assert stats["producers"] == {"total": 1, "streams_with_producers": 1}
    # A clean stop writes a final checkpoint at the WAL's end.
    assert stats["checkpoint"]["position"] == stats["wal"]["end_position"] > 0
    assert stats["checkpoint"]["age_s"] >= 0
    wal_files = list((known_dir / "wal").glob("*.wal"))
    assert stats["wal"]["segments"] == len(wal_files)
    assert stats["wal"]["bytes"] == sum(f.stat().st_size for f in wal_files)
    assert stats["stream_files_bytes"] == sum(f.stat().st_size for f in (known_dir / "streams").iterdir())
    assert stats["problems"] == []


def test_stats_text_names_the_figures(known_dir: Path) -> None:
    done = subprocess.run([str(EXE), "stats", str(known_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "streams: 6 (4 open, 1 closed, 1 soft-deleted; 1 forks, 0 fenced, 1 with a TTL or expiry)" in out
    assert "stream bytes: 3123" in out
    assert "producers: 1 on 1 streams" in out
    assert out.index(" big (text/plain)") < out.index(" src (text/plain)")


def test_stats_refuses_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run([str(EXE), "stats", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a directory" in done.stderr
