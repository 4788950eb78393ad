"""Retention on a real `trio-streams serve`: kill -9 between a trim's record and its
punched hole, a restart, the policy from the environment, and `verify` afterwards.

The crash window is reproduced exactly: after the kill the punched range is
written back with the bytes it held, which is what the disk holds when the
process dies after the Trimmed record is durable but before the punch.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from conftest import EXE, PREFIX, Server, assert_error, deadline_poll

OCTET = {"content-type": "application/octet-stream"}
EARLIEST = "trio-streams-earliest-offset"
BLOCK = 64 * 1024
BUDGET = 2 * BLOCK
ZERO = "0000000000000000_0000000000000000"


def position(token: str) -> int:
    return int(token.rpartition("_")[2])


def head_of(client: httpx.Client, url: str) -> int:
    resp = client.get(url, params={"offset": ZERO})
    return position(resp.headers[EARLIEST]) if resp.status_code == 410 else 0


def disk_bytes(data_file: Path) -> int:
    return data_file.stat().st_blocks * 512


def test_kill_9_between_the_trim_record_and_the_punch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {"TRIO_STREAMS_RETENTION_RULES": f"logs/ max_bytes={BUDGET}",
           "TRIO_STREAMS_RETENTION_TRIM_STEP_BYTES": str(BLOCK)}
    srv = Server(data, ["--append-bytes-max", str(1024 * 1024)], env=env)
    parts = [os.urandom(BLOCK // 2) for _ in range(24)] + [os.urandom(3 * BLOCK)]
    content = b"".join(parts)
    url = f"{srv.url}{PREFIX}logs/app"
    try:
        srv.start()
        with httpx.Client(timeout=10) as client:
            assert client.put(url, headers=OCTET).status_code == 201
            for part in parts:
                assert client.post(url, content=part, headers=OCTET).status_code == 204
            # The last append is over the budget by more than a step: the head ends exactly here.
            head = len(content) - BUDGET
            deadline_poll(lambda: head_of(client, url) == head, what="the trim after the last append")
            [data_file] = (data / "streams").glob("*.dat")
            deadline_poll(lambda: disk_bytes(data_file) <= len(content) - head + 2 * BLOCK, what="the punch")
        srv.stop(signal.SIGKILL)

        with open(data_file, "r+b") as f:  # the punch never happened
            f.write(content[:head])
            os.fsync(f.fileno())
        assert disk_bytes(data_file) >= len(content)

        srv.start()
        with httpx.Client(timeout=10) as client:
            gone = client.get(url, params={"offset": ZERO})
            assert_error(gone, 410, "OFFSET_TRIMMED")
            assert position(gone.headers[EARLIEST]) == head
            assert client.get(url, params={"offset": gone.headers[EARLIEST]}).content == content[head:]
            assert client.get(url, params={"offset": "-1"}).content == content[head:]
            deadline_poll(lambda: disk_bytes(data_file) <= len(content) - head + 2 * BLOCK,
                          what="the hole punched again at start")
            more = os.urandom(3 * BLOCK)
            assert client.post(url, content=more, headers=OCTET).status_code == 204
            tail = len(content) + len(more)
            deadline_poll(lambda: head_of(client, url) == tail - BUDGET, what="the policy (from the environment) after the restart")
        assert srv.stop() == 0
    finally:
        srv.kill_quietly()
    verified = subprocess.run([str(EXE), "verify", str(data)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_online_backup_holds_the_punches_of_trims_made_while_it_runs(tmp_path: Path) -> None:
    """The archive's stream files are cut at the backup's checkpoint; a trim made after
    it must not punch bytes the archive still holds above that checkpoint's head
    (restore verifies them against their checksums)."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"TRIO_STREAMS_RETENTION_TRIM_STEP_BYTES": str(BLOCK), "TRIO_STREAMS_BACKUP_READ_CHUNK_BYTES": "65536"}
    srv = Server(data, ["--append-bytes-max", str(1024 * 1024)], env=env)
    url = f"{srv.url}{PREFIX}held"
    first = [os.urandom(BLOCK) for _ in range(8)]
    try:
        srv.start()
        with httpx.Client(timeout=10) as client:
            assert client.put(url, headers=OCTET | {"trio-streams-retention-max-bytes": str(BUDGET)}).status_code == 201
            for part in first:
                assert client.post(url, content=part, headers=OCTET).status_code == 204
            at_backup = len(first) * BLOCK - BUDGET
            deadline_poll(lambda: head_of(client, url) == at_backup, what="the trims before the backup")
            with client.stream("GET", f"{srv.url}/admin/backup", timeout=60) as resp:
                assert resp.status_code == 200  # its checkpoint is taken: the archive's cut
                for _ in range(4):
                    assert client.post(url, content=os.urandom(BLOCK), headers=OCTET).status_code == 204
                deadline_poll(lambda: head_of(client, url) == at_backup + 4 * BLOCK, what="trims during the backup")
                with open(tmp_path / "backup.tar", "wb") as out:
                    for chunk in resp.iter_raw():
                        out.write(chunk)
            [data_file] = (data / "streams").glob("*.dat")
            deadline_poll(lambda: disk_bytes(data_file) <= BUDGET + 2 * BLOCK, what="the held punch after the backup")
    finally:
        srv.kill_quietly()
    restored = subprocess.run([str(EXE), "restore", str(tmp_path / "backup.tar"), str(tmp_path / "restored")],
                              capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0 and "verify: OK" in restored.stdout, restored.stdout + restored.stderr
    back = Server(tmp_path / "restored")
    try:
        back.start()
        with httpx.Client(timeout=10) as client:
            restored_url = f"{back.url}{PREFIX}held"
            assert head_of(client, restored_url) == at_backup
            assert client.get(restored_url, params={"offset": "-1"}).content == b"".join(first)[at_backup:]
    finally:
        back.kill_quietly()
