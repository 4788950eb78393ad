"""`trio-streams verify` on WAL segments: a torn tail is not damage; damage before valid
records is; a valid record the table cannot apply is reported, never dropped."""

from __future__ import annotations

import argparse
import io
import signal
import subprocess
from pathlib import Path

import httpx
import orjson

from conftest import EXE, Server, unique
from datadirs import append_to_wal, build, created, record, stream_file
from trio_streams import verify_cli
from trio_streams.protocol.state import Appended, Deleted
from trio_streams.storage.wal import encode_record, list_segments, segment_name


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


# ---------------------------------------------------------------- records the table cannot apply


def _verify_in_process(data_dir: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    return verify_cli.run(argparse.Namespace(data_dir=str(data_dir)), out, err), out.getvalue()


def test_every_record_the_table_cannot_apply_is_reported_with_where_and_why(tmp_path: Path) -> None:
    build(tmp_path)
    meta = orjson.dumps({"path": "no id"})
    wrong = [
        (record(Appended(1, 7, b"!")), "stream id 1 (0000000000000001): was written at stream position 7, "
                                       "but its history before it ends at 8 (an overlap in the log's positions)"),
        (record(Appended(9, 0, b"!")), "stream id 9 (0000000000000009): appends to stream id 9, which does not exist"),
        (record(Deleted(9)), "stream id 9 (0000000000000009): deletes stream id 9, which does not exist"),
        (record(created(3, "b", b"x")), "stream id 3 (0000000000000003): creates 'b', but 'b' is taken by stream id 2"),
        (encode_record(2, len(meta).to_bytes(4, "little") + meta), "stream id unknown: has a valid checksum but cannot be decoded"),
        (record(Appended(1, 8, b"", close=True)), None),  # a close-only append: applied
        (record(Appended(1, 8, b"?")), "stream id 1 (0000000000000001): appends to the stream after it was closed"),
    ]
    position = append_to_wal(tmp_path, [raw for raw, _ in wrong])
    segment = segment_name(list_segments(tmp_path / "wal")[-1])
    status, report = _verify_in_process(tmp_path)
    assert status == verify_cli.EXIT_UNAPPLIED_RECORDS, report
    lines = report.splitlines()
    listed = lines[lines.index("WAL records not applied:") + 1 : lines.index("streams:")]
    expected = []
    for raw, why in wrong:
        if why is not None:
            start = list_segments(tmp_path / "wal")[-1]
            expected.append((f"  {segment} byte {position - start} (log position {position}), ", why))
        position += len(raw)
    assert len(listed) == len(expected), report
    for line, (where, why) in zip(listed, expected):
        assert line.startswith(where + why), (line, where, why)
    assert lines[-1] == f"INCONSISTENT: 0 of 2 streams damaged, 0 damaged log/checkpoint files, {len(expected)} WAL records not applied"


def test_damage_outranks_records_that_cannot_be_applied_in_the_exit_status(tmp_path: Path) -> None:
    build(tmp_path)
    append_to_wal(tmp_path, [record(Appended(1, 9, b"!"))])  # a gap
    status, report = _verify_in_process(tmp_path)
    assert status == verify_cli.EXIT_UNAPPLIED_RECORDS and "(a gap in the log's positions)" in report, report
    dat = stream_file(tmp_path, 2)
    dat.write_bytes(dat.read_bytes()[:1])
    status, report = _verify_in_process(tmp_path)
    assert status == verify_cli.EXIT_DAMAGED and "(a gap in the log's positions)" in report, report
    assert report.splitlines()[-1].startswith("DAMAGED: 1 of 2 streams damaged")


def test_a_clean_directory_verifies_ok(tmp_path: Path) -> None:
    build(tmp_path)
    status, report = _verify_in_process(tmp_path)
    assert status == verify_cli.EXIT_OK and "WAL records not applied:" not in report, report
    assert report.splitlines()[-1] == "OK: 0 of 2 streams damaged, 0 damaged log/checkpoint files, 0 WAL records not applied"
