"""Seeded damage to stream files (.dat, .idx, .sum) after SIGTERM and after kill -9.

Each case writes streams (one a fork), stops the server, flips a bit in or
truncates one file of each damaged stream at a seeded random position,
then checks that `trio-streams verify` reports exactly the damaged streams
(and reports a clean directory as ok), and that the restarted server never
serves a byte that differs from what was acknowledged: every read is the
acknowledged bytes or a 500 DATA_CORRUPT, and any refusal is logged and
counted. A failing case names its seed; rerun it with
`pytest -m '' tests/test_corruption_streams.py -k 'seed-N-'`.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import EXE, Server, assert_error, unique
from trio_streams.protocol.offsets import format_offset

CT = {"content-type": "application/octet-stream"}
READ_CHUNK = 16 * 1024
STREAMS = 5  # plus one fork of the first


def verify(data_dir: Path) -> tuple[int, str]:
    done = subprocess.run([str(EXE), "verify", str(data_dir)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


def damaged_ids(report: str) -> set[int]:
    return {int(m.group(1), 16) for m in re.finditer(r"^  ([0-9a-f]{16}) .*: damaged", report, re.M)}


def write_streams(srv: Server, rng: random.Random, acked: dict[str, bytes]) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for url in list(acked):
            for _ in range(rng.randint(1, 4)):
                data = rng.randbytes(rng.choice([1, 100, 5000, 70_000, 150_000]))
                assert c.post(url, content=data, headers=CT).status_code == 204
                acked[url] += data


def ids_of(srv: Server, urls: list[str]) -> dict[str, int]:
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        return {u: int(c.get(u, params={"offset": format_offset(0)}).headers["etag"].strip('"').split(":")[0])
                for u in urls}


def inject(streams_dir: Path, sid: int, rng: random.Random) -> str:
    candidates = [p for p in (streams_dir / f"{sid:016x}{k}" for k in (".dat", ".idx", ".sum")) if p.stat().st_size]
    path = rng.choice(candidates)
    raw = bytearray(path.read_bytes())
    at = rng.randrange(len(raw))
    if rng.random() < 0.6:
        raw[at] ^= 1 << rng.randrange(8)
        what = f"bit flip in {path.name} at {at}"
    else:
        del raw[at:]
        what = f"truncation of {path.name} to {at}"
    path.write_bytes(bytes(raw))
    return what


def read_back(srv: Server, url: str, expected: bytes) -> tuple[int, int]:
    """Reads every chunk; returns (chunks served, chunks refused). Fails on any wrong byte."""
    served = refused = 0
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for start in range(0, len(expected), READ_CHUNK):
            r = c.get(url, params={"offset": format_offset(start)})
            if r.status_code == 500:
                assert_error(r, 500, "DATA_CORRUPT")
                refused += 1
                continue
            assert r.status_code == 200, (url, start, r.status_code, r.text[:200])
            assert r.content == expected[start : start + len(r.content)], f"{url}: corrupted bytes served at {start}"
            assert len(r.content) == min(READ_CHUNK, len(expected) - start)
            served += 1
    return served, refused


def run_case(tmp_path: Path, seed: int, sig: int) -> dict[str, object]:
    rng = random.Random(seed)
    srv = Server(tmp_path / "data", ["--read-chunk-bytes-max", str(READ_CHUNK)])
    srv.data_dir.mkdir()
    try:
        srv.start()
        acked = {f"/v1/stream/{unique('c')}": b"" for _ in range(STREAMS)}
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            for url in acked:
                assert c.put(url, headers=CT).status_code == 201
        write_streams(srv, rng, acked)
        first = next(iter(acked))
        fork = f"/v1/stream/{unique('f')}"
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.put(fork, headers={"stream-forked-from": first}).status_code == 201
        acked[fork] = acked[first]
        srv.restart()  # a checkpoint: for what is written so far, the stream files are the only copy
        write_streams(srv, rng, acked)
        ids = ids_of(srv, list(acked))
        srv.stop(sig)
        status, report = verify(srv.data_dir)
        assert status == 0 and "OK:" in report, f"seed {seed}: verify on a clean directory:\n{report}"
        victims = rng.sample(list(acked), rng.randint(1, len(acked) - 1))
        injected = {ids[u]: inject(srv.data_dir / "streams", ids[u], rng) for u in victims}
        status, report = verify(srv.data_dir)
        assert status == 1, f"seed {seed}: verify missed {injected}:\n{report}"
        assert damaged_ids(report) == set(injected), f"seed {seed}: injected {injected}:\n{report}"
        try:
            srv.start()
        except AssertionError as exc:
            # Refusing to start over a file shorter than its checkpoint is recovery's policy
            # (issue 8, finding 3), not this test's; it is counted, never silent.
            assert "shorter than its checkpointed length" in str(exc), f"seed {seed}: {injected}: {exc}"
            return {"refused_to_start": 1, "cases": len(injected)}
        refused = 0
        for url, expected in acked.items():
            served, bad = read_back(srv, url, expected)
            refused += bad
            if ids[url] not in injected and ids[first] not in injected:
                assert bad == 0, f"seed {seed}: {url} was not damaged but {bad} reads were refused"
        metrics = srv.metrics()
        assert metrics["trio_streams_data_corrupt_reads_total"] == refused, f"seed {seed}"
        if refused:
            assert "stream data damaged" in srv.log_tail(500), f"seed {seed}: refused reads were not logged"
        srv.stop()
        return {"refused_to_start": 0, "cases": len(injected), "refused_reads": refused}
    finally:
        srv.kill_quietly()


SIGNALS = {"sigterm": signal.SIGTERM, "kill9": signal.SIGKILL}
# `make test` runs one seed per way of stopping (each case costs three server
# start-ups and two verify runs); the other 78 are marked slow, for `make test-all`.
QUICK_CASES = {(0, "sigterm"), (1, "kill9")}
CASES = [
    pytest.param(seed, how, id=f"seed-{seed}-{how}", marks=() if (seed, how) in QUICK_CASES else pytest.mark.slow)
    for seed in range(40) for how in SIGNALS
]


@pytest.mark.parametrize("seed, how", CASES)
def test_damaged_stream_files_are_found_and_never_served(tmp_path: Path, seed: int, how: str) -> None:
    print(f"seed {seed} {how}: {run_case(tmp_path, seed, SIGNALS[how])}")  # counts, with -s
