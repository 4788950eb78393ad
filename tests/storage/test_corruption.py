"""Seeded damage to WAL segments, checkpoints and stream files, after SIGTERM and kill -9.

Real servers write the data directories; each case copies one, damages one
file (a bit flip, 512 zeroed bytes or a truncation, at a seeded position) and
recovers it in-process in the default (refuse) or the fence mode. Invariants:
no stream is served with bytes other than exactly what was acknowledged
(served-corrupt), none is served short without being fenced (silently-lost),
a refusal names the damaged file, and every fenced stream is logged at ERROR.
A failing case prints its seed; ``CORRUPTION_SEED=<n>`` reruns just that one.
A few cases also go end to end through HTTP (503 STREAM_DAMAGED, /healthz).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import shutil
import signal
from pathlib import Path

import httpx
import pytest
import trio

from conftest import Server, deadline_poll
from trio_streams.config import Settings
from trio_streams.storage.recovery import RecoveryRefused, recover
from trio_streams.storage.store import Store

STREAMS = 5
APPENDS = 50
ENV = {
    # Many small segments and checkpoints, so damage lands in every kind of place.
    "TRIO_STREAMS_WAL_SEGMENT_BYTES_MAX": "2048",
    "TRIO_STREAMS_CHECKPOINT_WAL_BYTES": "6000",
}
QUICK_CASES = 60
SLOW_CASES = 1500


@dataclasses.dataclass
class Written:
    data: Path  # the data directory as the server left it
    content: dict[str, bytes]  # path → every acknowledged byte
    ids: dict[str, int]


def _workload(tmp: Path, name: str, stop_signal: int) -> Written:
    server = Server(tmp / name, env=ENV)
    server.data_dir.mkdir(parents=True)
    rng = random.Random(name)
    content: dict[str, bytes] = {}
    try:
        server.start()
        with httpx.Client(timeout=10) as client:
            paths = [f"c{i}" for i in range(STREAMS)]
            for path in paths:
                assert client.put(server.stream_url(path), headers={"content-type": "application/octet-stream"}).status_code == 201
                content[path] = b""
            for n in range(STREAMS * APPENDS):
                path = rng.choice(paths)
                body = f"[{path}:{n}:".encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"]"
                resp = client.post(server.stream_url(path), content=body, headers={"content-type": "application/octet-stream"})
                assert resp.status_code in (200, 204), resp.text
                content[path] += body
        server.stop(stop_signal)
    finally:
        server.kill_quietly()
    return Written(server.data_dir, content, _stream_ids(server.data_dir, content))


def _stream_ids(data: Path, content: dict[str, bytes]) -> dict[str, int]:
    result = _recover_copy(data, data.parent / "probe", "tolerate_corrupted_tail")
    assert not isinstance(result, str), result
    table, _ = result
    ids = {path: table.by_path[path].stream_id for path in content}
    shutil.rmtree(data.parent / "probe")
    return ids


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    tmp = tmp_path_factory.mktemp("corruption")
    return {"sigterm": _workload(tmp, "sigterm", signal.SIGTERM), "kill9": _workload(tmp, "kill9", signal.SIGKILL)}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _recover_copy(source: Path, target: Path, mode: str):  # type: ignore[no-untyped-def]
    """(table, {path: bytes served}, errors logged) or the refusal message."""
    if target != source:
        shutil.copytree(source, target)
    handler = _Errors()
    logging.getLogger("trio_streams").addHandler(handler)
    store = Store(target / "streams", open_files_max=64, hot_tail_bytes_max=0, corrupt_ranges_logged_max=100)
    try:
        recovered = recover(target, store, Settings(data_dir=str(target), wal_segment_bytes_max=2048, wal_recovery_mode=mode))
    except RecoveryRefused as exc:
        return str(exc)
    finally:
        logging.getLogger("trio_streams").removeHandler(handler)
    table = recovered.table
    served = {}
    for path, state in table.by_path.items():
        if state.damaged is None and not state.soft_deleted:
            served[path] = trio.run(store.read, table, state, 0, state.tail)
    store.close_sync()
    recovered.wal.close()
    return table, (served, handler.lines)


def _damage(rng: random.Random, data: Path) -> tuple[str, str]:
    """Damages one file in place; returns its name and what was done."""
    files = sorted([*data.glob("wal/*.wal"), *data.glob("checkpoints/*.snap")]) or []
    dat = sorted(data.glob("streams/*.dat"))
    kind = rng.choice(["flip", "zero", "truncate", "truncate_dat"])
    target = rng.choice(dat if kind == "truncate_dat" else files)
    raw = bytearray(target.read_bytes())
    if not raw:
        return target.name, "empty file left alone"
    at = rng.randrange(len(raw))
    if kind == "flip":
        raw[at] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        raw[at : at + 512] = bytes(len(raw[at : at + 512]))
    else:
        del raw[at:]
    target.write_bytes(bytes(raw))
    return target.name, f"{kind} at byte {at}"


def _run_case(seed: int, written: dict[str, Written], tmp: Path, counts: collections.Counter[str]) -> None:
    rng = random.Random(seed)
    scenario = rng.choice(sorted(written))
    mode = rng.choice(["tolerate_corrupted_tail", "fence_damaged_streams"])
    source = written[scenario]
    work = tmp / f"case-{seed}"
    shutil.copytree(source.data, work)
    damaged_file, what = _damage(rng, work)
    context = f"seed {seed} ({scenario}, {mode}, {damaged_file}: {what})"
    try:
        result = _recover_copy(work, work, mode)
    except Exception as exc:
        raise AssertionError(f"{context}: recovery failed instead of refusing or starting") from exc
    counts["cases"] += 1
    if isinstance(result, str):
        counts["refused"] += 1
        counts[f"refused: {damaged_file.rsplit('.', 1)[1]}"] += 1
        assert damaged_file in result, f"{context}: the refusal does not name the damaged file: {result}"
        assert mode == "tolerate_corrupted_tail" or "no checkpoint" in result, f"{context}: fence mode refused: {result}"
        return
    table, (served, errors) = result
    for path, acknowledged in source.content.items():
        state = table.by_path.get(path)
        fenced = (state is not None and state.damaged is not None) or source.ids[path] in table.fenced_ids
        if fenced:
            counts["fenced"] += 1
            assert any(path in line or str(source.ids[path]) in line for line in errors), f"{context}: {path} fenced silently"
            continue
        got = served.get(path)
        if got is not None and got != acknowledged and acknowledged.startswith(got) and _tail_cut(work, damaged_file, errors):
            # The records of these appends were destroyed at the end of the
            # log, where damage looks exactly like a torn last write; reported.
            counts["lost with their records at the log's end (reported)"] += 1
            continue
        if got != acknowledged:
            lost = got is not None and acknowledged.startswith(got)
            counts["silently-lost" if lost else "served-corrupt"] += 1
            raise AssertionError(f"{context}: {path} served {len(got or b'')} bytes, acknowledged {len(acknowledged)}")
        counts["exact"] += 1
    shutil.rmtree(work)


def _tail_cut(data: Path, damaged_file: str, logged: list[str]) -> bool:
    newest = max(path.name for path in data.glob("wal/*.wal"))
    return damaged_file <= newest and any("torn tail" in line and damaged_file in line for line in logged)


def _seeds(count: int) -> list[int]:
    chosen = os.environ.get("CORRUPTION_SEED")
    return [int(chosen)] if chosen else list(range(count))


def _run(count: int, written: dict[str, Written], tmp: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()
    for seed in _seeds(count):
        _run_case(seed, written, tmp, counts)
    print("\ncorruption cases:", dict(sorted(counts.items())))
    assert counts["served-corrupt"] == counts["silently-lost"] == 0
    assert counts["cases"] == len(_seeds(count))


def test_seeded_damage_quick(written: dict[str, Written], tmp_path: Path) -> None:
    _run(QUICK_CASES, written, tmp_path)


@pytest.mark.slow
def test_seeded_damage_long(written: dict[str, Written], tmp_path: Path) -> None:
    _run(SLOW_CASES, written, tmp_path)


def test_wal_shorter_than_the_checkpoint_after_sigterm_starts_exact(written: dict[str, Written], tmp_path: Path) -> None:
    """The checkpoint written at shutdown and the stream files hold everything:
    a truncated last segment must not keep the server (or any stream) offline."""
    source = written["sigterm"]
    shutil.copytree(source.data, tmp_path / "data")
    newest = max((tmp_path / "data").glob("wal/*.wal"))
    newest.write_bytes(newest.read_bytes()[:9])
    result = _recover_copy(tmp_path / "data", tmp_path / "data", "tolerate_corrupted_tail")
    assert not isinstance(result, str), result
    _, (served, errors) = result
    assert served == source.content
    assert any("nothing lost" in line and newest.name in line for line in errors)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(written: dict[str, Written], tmp_path: Path) -> None:
    source = written["kill9"]
    shutil.copytree(source.data, tmp_path / "data")
    checkpoints = sorted((tmp_path / "data").glob("checkpoints/*.snap"))
    assert len(checkpoints) == 2 and len(list((tmp_path / "data").glob("wal/*.wal"))) > 1
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:-1])
    result = _recover_copy(tmp_path / "data", tmp_path / "data", "tolerate_corrupted_tail")
    assert not isinstance(result, str), result
    _, (served, errors) = result
    assert served == source.content
    assert any(checkpoints[-1].name in line and "damaged" in line for line in errors)


# ------------------------------------------------------------------ end to end


def _damage_mid_wal(data: Path, content: dict[str, bytes]) -> str:
    """Flips a bit inside the payload of an append record in the newest
    segment holding one that is not its last record; returns its stream path."""
    from trio_streams.protocol.state import Appended
    from trio_streams.storage.events import decode_event
    from trio_streams.storage.wal import HEADER_BYTES, scan

    for segment in sorted(data.glob("wal/*.wal"), reverse=True):
        raw = segment.read_bytes()
        records, _ = scan(raw, 0)
        for record in records[:-1]:
            event = decode_event(record.rtype, record.payload)
            if isinstance(event, Appended) and event.position is not None:
                damaged = bytearray(raw)
                damaged[record.position + HEADER_BYTES + len(record.payload) - 1] ^= 0x01
                segment.write_bytes(bytes(damaged))
                return next(p for p, body in content.items() if event.data in body)
    raise AssertionError("no append record followed by another")


def test_refuse_and_fence_end_to_end(written: dict[str, Written], tmp_path: Path) -> None:
    source = written["kill9"]
    shutil.copytree(source.data, tmp_path / "data")
    victim = _damage_mid_wal(tmp_path / "data", source.content)
    server = Server(tmp_path / "data", env=ENV)
    try:
        server.start(wait=False)
        assert server.proc is not None and server.proc.wait(30) == 1
        log = server.log_tail(200)
        assert "refusing to start" in log and ".wal byte" in log and "log position" in log, log
        server.env = {**ENV, "TRIO_STREAMS_WAL_RECOVERY_MODE": "fence_damaged_streams"}
        server.start()
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "degraded" and [f["path"] for f in health["fenced"]] == [victim], health
        for path, acknowledged in source.content.items():
            resp = httpx.get(server.stream_url(path), params={"offset": "-1"})
            if path == victim:
                assert resp.status_code == 503 and resp.json()["error"]["code"] == "STREAM_DAMAGED"
                post = httpx.post(server.stream_url(path), content=b"x", headers={"content-type": "application/octet-stream"})
                assert post.status_code == 503
            else:
                assert resp.status_code == 200 and resp.content == acknowledged, path
        assert f"stream '{victim}'" in server.log_tail(200)
        # The fence survives a restart (and the checkpoint written at shutdown).
        server.restart()
        deadline_poll(lambda: httpx.get(server.stream_url(victim)).status_code == 503, what="fenced after restart")
    finally:
        server.kill_quietly()
