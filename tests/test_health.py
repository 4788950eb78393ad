"""/healthz/live and /healthz/ready (and /healthz as before) through recovery, storage
faults and shutdown, in process: the app's lifespan runs, requests go through its ASGI door.

Live is 200 whenever the event loop answers. Ready is 200 only when the server
takes traffic: not while recovering, not after a storage failure (writes refused
until a restart), not once shutdown has begun; a full disk or fenced streams
are "degraded" and stay ready (README, "Monitoring").
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import parse_metrics
from inproc import InprocClient, _Lifespan
from trio_streams import service as service_module
from trio_streams.config import Settings
from trio_streams.http.app import App
from trio_streams.service import Service
from trio_streams.storage.fileops import Fault, FaultyFileOps

CT = {"content-type": "application/octet-stream"}
WAIT_S = 30


@contextlib.asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[InprocClient]:
    """The app's lifespan running (startup complete; recovery may still be going on)."""
    events = _Lifespan()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, events.receive, events.send)
        with trio.fail_after(WAIT_S):
            await events.started.wait()
        yield InprocClient(app, "127.0.0.1:4437")
        events.shutdown_requested.set()
        with trio.fail_after(WAIT_S):
            await events.stopped.wait()


async def health(client: InprocClient) -> dict[str, tuple[int, dict[str, Any]]]:
    return {path: ((r := await client.get(path)).status_code, r.json())
            for path in ("/healthz", "/healthz/live", "/healthz/ready")}


async def ready_gauge(client: InprocClient) -> float:
    return parse_metrics((await client.get("/metrics")).text)["trio_streams_ready"]


async def test_live_but_not_ready_while_recovering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real_recover = service_module.recover

    def slow_recover(*args: Any) -> Any:  # the injected hook: recovery waits for the test
        entered.set()
        release.wait(WAIT_S)
        return real_recover(*args)

    monkeypatch.setattr(service_module, "recover", slow_recover)
    app = App(Settings(data_dir=str(tmp_path)))
    async with lifespan(app) as client:
        assert await trio.to_thread.run_sync(entered.wait, WAIT_S)
        seen = await health(client)
        assert seen["/healthz/live"][0] == 200 and seen["/healthz/live"][1]["recovering"] is True
        status, detail = seen["/healthz/ready"]
        assert status == 503 and detail["error"]["code"] == "RECOVERING"
        assert detail["ready"] is False and detail["recovering"] is True and detail["status"] == "recovering"
        assert seen["/healthz"][0] == 503  # as before
        metrics = parse_metrics((await client.get("/metrics")).text)
        assert metrics["trio_streams_recovering"] == 1 and metrics["trio_streams_ready"] == 0
        assert (await client.put("/v1/stream/s", headers=CT)).status_code == 503
        release.set()
        with trio.fail_after(WAIT_S):
            await app.service.ready.wait()
        seen = await health(client)
        assert {path: status for path, (status, _) in seen.items()} == dict.fromkeys(seen, 200)
        assert seen["/healthz/ready"][1]["ready"] is True and seen["/healthz/ready"][1]["status"] == "ok"
        assert await ready_gauge(client) == 1


def faulty_app(tmp_path: Path, **settings: Any) -> tuple[App, FaultyFileOps]:
    app = App(Settings(data_dir=str(tmp_path), **settings))
    ops = FaultyFileOps()
    app.service = Service(app.settings, ops, observer=app.metrics.observer)
    return app, ops


@pytest.mark.parametrize("mode", ["read-only", "exit"])
async def test_live_but_not_ready_after_a_storage_failure(tmp_path: Path, mode: str) -> None:
    app, ops = faulty_app(tmp_path, storage_failure=mode)
    async with lifespan(app) as client:
        with trio.fail_after(WAIT_S):
            await app.service.ready.wait()
        assert (await client.put("/v1/stream/s", headers=CT, content=b"a")).status_code == 201
        ops.add(Fault("fdatasync", errno=errno.EIO))
        assert (await client.post("/v1/stream/s", headers=CT, content=b"b")).status_code == 503
        if mode == "exit":  # failed but still draining: the supervisor must not kill it early
            with trio.fail_after(WAIT_S):
                await app.service.finished.wait()
        seen = await health(client)
        assert seen["/healthz/live"][0] == 200
        status, detail = seen["/healthz/ready"]
        assert status == 503 and detail["error"]["code"] == "FAILED" and detail["ready"] is False
        assert detail["storage"]["state"] == "failed"
        assert seen["/healthz"][0] == 503
        assert await ready_gauge(client) == 0


async def test_a_full_disk_is_degraded_and_still_ready(tmp_path: Path) -> None:
    app, ops = faulty_app(tmp_path)
    async with lifespan(app) as client:
        with trio.fail_after(WAIT_S):
            await app.service.ready.wait()
        assert (await client.put("/v1/stream/s", headers=CT, content=b"a")).status_code == 201
        ops.disk_full()
        assert (await client.post("/v1/stream/s", headers=CT, content=b"b")).status_code == 507
        seen = await health(client)
        status, detail = seen["/healthz/ready"]
        assert status == 200 and detail["status"] == "degraded" and detail["ready"] is True
        assert detail["storage"]["state"] == "disk_full"
        assert seen["/healthz/live"][0] == 200 and seen["/healthz"][0] == 200
        ops.clear()


async def test_not_ready_once_shutdown_begins(tmp_path: Path) -> None:
    app = App(Settings(data_dir=str(tmp_path)))
    async with lifespan(app) as client:
        with trio.fail_after(WAIT_S):
            await app.service.ready.wait()
        app.drain()
        seen = await health(client)
        status, detail = seen["/healthz/ready"]
        assert status == 503 and detail["error"]["code"] == "DRAINING" and detail["draining"] is True
        assert seen["/healthz/live"][0] == 200 and seen["/healthz"][0] == 200
        assert await ready_gauge(client) == 0


async def test_health_endpoints_answer_head_and_refuse_other_methods(tmp_path: Path) -> None:
    app = App(Settings(data_dir=str(tmp_path)))
    async with lifespan(app) as client:
        with trio.fail_after(WAIT_S):
            await app.service.ready.wait()
        for path in ("/healthz/live", "/healthz/ready"):
            head = await client.head(path)
            assert head.status_code == 200 and head.content == b""
            refused = await client.post(path, content=b"")
            assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        assert (await client.get("/healthz/other")).status_code == 404
