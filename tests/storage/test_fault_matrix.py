"""The write-path fault matrix: one fault at each point of the write path.

Each case runs the storage engine in-process (``Service``) over a
``FaultyFileOps``, with a stream holding acknowledged data, arms one fault,
makes the request that hits it and asserts: which requests fail with which
status, that nothing acknowledged is lost and nothing refused is visible
(before and after a restart on the same directory), and that the server
recovers — by itself (disk full, checkpoint) or by exiting so that a restart
replays the WAL (failed fsync, dead writer).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_streams.config import Settings
from trio_streams.http.app import App
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, ForkSpec
from trio_streams.service import Service
from trio_streams.storage.fileops import REAL, FileOps, Fault, FaultyFileOps
from trio_streams.streams.registry import Registry

CT = "application/octet-stream"
ACKED = b"acknowledged;"


def _append(body: bytes) -> AppendRequest:
    return AppendRequest(CT, body, None, None, False)


def _create(body: bytes = b"", fork: ForkSpec | None = None) -> CreateRequest:
    if fork is None:
        return CreateRequest(CT, Expiry(), False, body)
    return CreateRequest(CT, Expiry(), False, body, fork, False)


@asynccontextmanager
async def serving(directory: Path, ops: FileOps = REAL, **settings: Any) -> AsyncIterator[Service]:
    service = Service(Settings(data_dir=str(directory), fsync="always", **settings), ops)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        with trio.fail_after(30):
            await service.ready.wait()
        yield service
        service.stop()
        with trio.fail_after(30):
            await service.finished.wait()


async def content(service: Service, path: str) -> bytes | None:
    registry = service.registry
    assert registry is not None
    state = registry.visible(path)
    if state is None:
        return None
    return await registry.view.read(state, 0, state.tail)


async def refused(request: Awaitable[Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        await request
    return caught.value


async def restarted(directory: Path, path: str = "s") -> bytes | None:
    """The stream's content as a fresh server on the same directory recovers it."""
    async with serving(directory) as service:
        return await content(service, path)


async def until(condition: Callable[[], bool]) -> None:
    """Polls (with a deadline) for what the log writer does after it has answered."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.001)


@asynccontextmanager
async def acked_stream(directory: Path, **settings: Any) -> AsyncIterator[tuple[Service, Registry, FaultyFileOps]]:
    """A server over a FaultyFileOps (no faults armed yet) with stream "s" holding ACKED."""
    ops = FaultyFileOps()
    async with serving(directory, ops, **settings) as service:
        assert service.registry is not None
        await service.registry.create("s", _create(ACKED))
        yield service, service.registry, ops


def wal_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in (directory / "wal").iterdir())


# ---------------------------------------------------------------- disk full: 507, undone, resumes by itself

DISK_FULL_POINTS = {
    "before the WAL write": [Fault("writev", "*.wal")],
    "mid-write (short write, then ENOSPC)": [Fault("writev", "*.wal", short_bytes=5), Fault("writev", "*.wal", nth=2)],
    "stream-file pwrite": [Fault("pwrite", "*.dat")],
    "stream-file index write": [Fault("write", "*.idx")],
}


@pytest.mark.parametrize("point", DISK_FULL_POINTS)
async def test_disk_full_fails_the_batch_with_507_and_writes_resume(tmp_path: Path, point: str) -> None:
    async with acked_stream(tmp_path, disk_full_retry_after_s=3) as (service, registry, ops):
        wal_before = wal_bytes(tmp_path)
        for fault in DISK_FULL_POINTS[point]:
            ops.add(fault)
        error = await refused(registry.append("s", _append(b"REFUSED")))
        assert (error.status, error.code) == (507, "INSUFFICIENT_STORAGE")
        assert ("retry-after", "3") in error.headers
        assert ops.fired() == len(DISK_FULL_POINTS[point])
        # Undone on disk, not only hidden: no partial record, no bytes past the tail.
        assert wal_bytes(tmp_path) == wal_before
        assert service.store.path(registry.addressed("s").stream_id).stat().st_size == len(ACKED)
        assert await content(service, "s") == ACKED
        health = service.health()
        assert health["status"] == "degraded" and health["storage"]["state"] == "disk_full"  # type: ignore[index]
        ops.clear()  # space is available again: the next write simply succeeds
        await registry.append("s", _append(b"after;"))
        assert service.health()["status"] == "ok"
        assert await content(service, "s") == ACKED + b"after;"
        # The index stayed sorted: the boundary of the retried append is found.
        assert await registry.view.next_boundary(registry.addressed("s"), len(ACKED)) == len(ACKED) + 6
    assert service.failure is None
    assert await restarted(tmp_path) == ACKED + b"after;"


async def test_disk_full_is_logged_once_per_episode_and_its_recovery_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_streams")
    async with acked_stream(tmp_path) as (service, registry, ops):
        ops.disk_full()
        for _ in range(3):
            assert (await refused(registry.append("s", _append(b"x")))).status == 507
        # Reads keep working throughout.
        assert await content(service, "s") == ACKED
        ops.clear()
        await registry.append("s", _append(b"y"))
    full = [r for r in caplog.records if "disk full" in r.getMessage()]
    resumed = [r for r in caplog.records if "writes resumed" in r.getMessage()]
    assert [r.levelname for r in full] == ["ERROR"] and [r.levelname for r in resumed] == ["INFO"]
    storage = service.health()["storage"]
    assert storage["disk_full_episodes"] == 1 and storage["refused_batches"] == 3  # type: ignore[index]


async def test_disk_full_during_segment_roll_keeps_the_current_segment(tmp_path: Path) -> None:
    async with acked_stream(tmp_path, wal_segment_bytes_max=4096) as (service, registry, ops):
        segments = sorted(os.listdir(tmp_path / "wal"))
        ops.add(Fault("open", "*.wal"))
        assert (await refused(registry.append("s", _append(b"R" * 5000)))).status == 507
        assert sorted(os.listdir(tmp_path / "wal")) == segments
        ops.clear()
        await registry.append("s", _append(b"big" * 2000))
        assert len(os.listdir(tmp_path / "wal")) == len(segments) + 1
    assert await restarted(tmp_path) == ACKED + b"big" * 2000


async def test_disk_full_during_fork_leaves_no_fork_and_the_source_intact(tmp_path: Path) -> None:
    async with acked_stream(tmp_path) as (service, registry, ops):
        ops.add(Fault("open", "*.dat"))
        error = await refused(registry.create("f", _create(fork=ForkSpec("s", None, 0))))
        assert error.status == 507
        assert registry.visible("f") is None and registry.addressed("s").refcount == 0
        ops.clear()
        await registry.create("f", _create(fork=ForkSpec("s", None, 0)))
        await registry.append("f", _append(b"fork;"))
        assert await content(service, "f") == ACKED + b"fork;"
    assert await restarted(tmp_path, "f") == ACKED + b"fork;"


async def test_a_failed_unlink_during_delete_leaves_the_delete_durable(tmp_path: Path) -> None:
    async with acked_stream(tmp_path) as (service, registry, ops):
        stream_file = service.store.path(registry.addressed("s").stream_id)
        ops.add(Fault("unlink", "*.dat", errno=errno.EIO))
        assert (await registry.delete("s")).status == 204
        assert registry.visible("s") is None and stream_file.exists()
        await registry.create("t", _create(b"still writing"))  # the writer lives on
    assert service.failure is None
    assert await restarted(tmp_path) is None
    assert not stream_file.exists()  # recovery removed the orphan


# ---------------------------------------------------------------- checkpoints: retried, never fatal


@pytest.mark.parametrize("point", ["checkpoint write", "checkpoint rename"])
async def test_a_failed_checkpoint_is_retried_and_the_writer_lives_on(tmp_path: Path, point: str) -> None:
    ops = FaultyFileOps()
    settings = dict(checkpoint_wal_bytes=1, checkpoint_retry_interval_s=0.0)
    async with serving(tmp_path, ops, **settings) as service:
        registry = service.registry
        assert registry is not None
        await registry.create("s", _create(ACKED))  # checkpointed at once (1 byte of WAL is enough)
        await until(lambda: service.log.statistics().checkpoints == 1)
        checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
        ops.add(Fault("write", "*.snap.tmp") if point == "checkpoint write" else Fault("replace", "*.snap"))
        await registry.append("s", _append(b"one;"))  # acknowledged; its checkpoint fails
        await until(lambda: service.log.statistics().checkpoint_failures == 1)
        assert ops.fired() == 1 and service.log.statistics().checkpoints == 1
        assert sorted(os.listdir(tmp_path / "checkpoints"))[: len(checkpoints)] == checkpoints
        await registry.append("s", _append(b"two;"))  # the retry succeeds
        await until(lambda: service.log.statistics().checkpoints == 2)
        assert service.log.statistics().checkpoint_failures == 1
        assert [n for n in os.listdir(tmp_path / "checkpoints") if n.endswith(".tmp")] == []
    assert service.failure is None
    assert await restarted(tmp_path) == ACKED + b"one;two;"


async def test_a_checkpoint_that_cannot_be_written_at_shutdown_leaves_the_wal(tmp_path: Path) -> None:
    async with acked_stream(tmp_path) as (service, registry, ops):
        ops.add(Fault("write", "*.snap.tmp", times=99))
    assert service.failure is None and ops.fired() == 1
    assert await restarted(tmp_path) == ACKED


# ---------------------------------------------------------------- fatal: stop writing, exit, replay


async def _fails_and_stops(service: Service, ops: FaultyFileOps, fault: Fault) -> None:
    registry = service.registry
    assert registry is not None
    ops.add(fault)
    error = await refused(registry.append("s", _append(b"IN-DOUBT")))
    assert (error.status, error.code) == (503, "STORAGE_FAILED")
    # The writer is gone: further writes are refused at once, never queued (with
    # storage_failure="exit" the HTTP layer refuses every request once failure is set).
    if service.failure is None:
        with trio.fail_after(5):
            assert (await refused(registry.append("s", _append(b"later")))).status == 503
    assert service.health()["status"] == "failed"


@pytest.mark.parametrize("point, fault", [
    ("fsync failure", Fault("fdatasync", "*.wal", errno=errno.EIO)),
    ("after write, before fsync (the writer dies)", Fault("fdatasync", "*.wal", raises=RuntimeError("injected"))),
])
async def test_a_fatal_fault_stops_writes_and_the_service_for_a_restart(tmp_path: Path, point: str, fault: Fault) -> None:
    ops = FaultyFileOps()
    async with trio.open_nursery() as nursery:
        service = Service(Settings(data_dir=str(tmp_path)), ops)
        nursery.start_soon(service.run)
        await service.ready.wait()
        assert service.registry is not None
        await service.registry.create("s", _create(ACKED))
        await _fails_and_stops(service, ops, fault)
        with trio.fail_after(30):  # exits by itself (storage_failure="exit"), no SIGTERM needed
            await service.finished.wait()
    assert service.failure is not None
    syncs = [c for c in ops.calls if c[0] in ("fsync", "fdatasync")]
    assert syncs[-1] == ("fdatasync", fault_path(ops)), "a failed sync is never retried, nor followed by another"
    # Written but never acknowledged: in doubt, so present or absent, but whole.
    assert await restarted(tmp_path) in (ACKED, ACKED + b"IN-DOUBT")


def fault_path(ops: FaultyFileOps) -> str:
    return next(path for operation, path in reversed(ops.calls) if operation == "fdatasync")


async def test_read_only_mode_keeps_serving_reads_after_a_failed_fsync(tmp_path: Path) -> None:
    async with acked_stream(tmp_path, storage_failure="read-only") as (service, registry, ops):
        await _fails_and_stops(service, ops, Fault("fdatasync", errno=errno.EIO))
        assert not service.finished.is_set()
        assert await content(service, "s") == ACKED
        assert "EIO" in str(service.health()["reason"]) or "Input/output" in str(service.health()["reason"])
    assert service.failure is not None  # exits non-zero when stopped
    assert await restarted(tmp_path) in (ACKED, ACKED + b"IN-DOUBT")


async def test_a_failure_after_fsync_before_the_answer_keeps_the_append(tmp_path: Path) -> None:
    """Durable before anything can fail: the append is acknowledged, and survives the restart."""
    async with trio.open_nursery() as nursery:
        service = Service(Settings(data_dir=str(tmp_path)), FaultyFileOps())
        nursery.start_soon(service.run)
        await service.ready.wait()
        registry = service.registry
        assert registry is not None
        await registry.create("s", _create(ACKED))
        on_applied = service.log.on_applied

        def crash_once(state: Any, event: Any) -> None:
            service.log.on_applied = on_applied
            raise RuntimeError("injected after fsync")

        service.log.on_applied = crash_once
        assert (await registry.append("s", _append(b"durable;"))).status == 204
        with trio.fail_after(30):
            await service.finished.wait()
    assert service.failure is not None
    assert await restarted(tmp_path) == ACKED + b"durable;"




# ---------------------------------------------------------------- what HTTP says


async def _get(app: App, path: str) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http"}
    await app(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def test_healthz_and_metrics_show_the_storage_state(tmp_path: Path) -> None:
    app = App(Settings(data_dir=str(tmp_path)))
    async with acked_stream(tmp_path) as (service, registry, ops):
        app.service = service
        status, _, body = await _get(app, "/healthz")
        assert status == 200 and json.loads(body)["storage"]["state"] == "ok"
        ops.disk_full()
        await refused(registry.append("s", _append(b"x")))
        status, _, body = await _get(app, "/healthz")
        detail = json.loads(body)
        assert status == 200 and detail["status"] == "degraded"
        assert detail["storage"]["state"] == "disk_full" and "No space left" in detail["storage"]["last_error"]
        _, _, metrics = await _get(app, "/metrics")
        assert b'trio_streams_storage_state{state="disk_full"} 1' in metrics
        assert b"trio_streams_storage_refused_batches_total 1" in metrics
        status, _, body = await _get(app, "/v1/stream/s")
        assert status == 200 and body == ACKED  # reads keep working
        ops.clear()
        ops.add(Fault("fdatasync", errno=errno.EIO))
        await refused(registry.append("s", _append(b"y")))
        status, _, body = await _get(app, "/healthz")
        detail = json.loads(body)
        assert status == 503 and detail["error"]["code"] == "FAILED" and "fdatasync" in detail["reason"]
        _, _, metrics = await _get(app, "/metrics")
        assert b"trio_streams_ready 0" in metrics and b'trio_streams_storage_state{state="failed"} 1' in metrics
        status, _, body = await _get(app, "/v1/stream/s")
        assert status == 503 and json.loads(body)["error"]["code"] == "STORAGE_FAILED"


def test_an_append_limit_over_the_record_limit_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_streams", "serve", "--data-dir", str(tmp_path), "--port", "0",
         "--append-bytes-max", str(256 * 1024 * 1024)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "append_bytes_max must be at most" in result.stderr
