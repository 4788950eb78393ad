"""`trio-streams verify` on WAL segments: a torn tail is not damage; damage before valid records is."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx

from conftest import EXE, Server, unique


def verify(data_dir: Path) -> tuple[int, str]:
    done = subprocess.run([str(EXE), "verify", str(data_dir)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


def killed_with_wal_records(fresh_server: Server) -> Path:
    with httpx.Client(base_url=fresh_server.url, timeout=10) as c:
        url = f"/v1/stream/{unique('w')}"
        assert c.put(url, headers={"content-type": "text/plain"}).status_code == 201
        for i in range(20):
            assert c.post(url, content=f"record {i};".encode() * 50, headers={"content-type": "text/plain"}).status_code == 204
    fresh_server.stop(signal.SIGKILL)  # no checkpoint: the records stay in the WAL
    (segment,) = sorted((fresh_server.data_dir / "wal").iterdir())
    return segment


def test_a_torn_tail_is_reported_but_is_not_damage(fresh_server: Server) -> None:
    segment = killed_with_wal_records(fresh_server)
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02\x03\x04\x02partial")  # a header promising 64 bytes, then 7
    status, report = verify(fresh_server.data_dir)
    assert status == 0, report
    assert "torn tail" in report and "OK:" in report


def test_damage_followed_by_valid_records_is_damage(fresh_server: Server) -> None:
    segment = killed_with_wal_records(fresh_server)
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    segment.write_bytes(bytes(raw))
    status, report = verify(fresh_server.data_dir)
    assert status == 1, report
    assert "a valid record follows" in report and "DAMAGED" in report
