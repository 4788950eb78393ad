"""The log writer's intervals run on the injected clock (trio's under a MockClock):
fsync=interval syncs, checkpoint intervals and checkpoint retries are stepped in
virtual time, and the storage state's ``since`` is the clock's wall time."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from conftest import PREFIX, inproc_settings_for
from inproc import InprocServer, running_app
from trio_streams.clock import trio_driven_clock
from trio_streams.storage.log import Log

START = datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp()


def _log(server: InprocServer) -> Log:
    log = server.app.service.log
    assert log is not None
    return log


async def _append(server: InprocServer, body: bytes) -> None:
    resp = await server.client.post(PREFIX + "s", headers={"content-type": "text/plain"}, content=body)
    assert resp.status_code == 204, resp.text


async def test_checkpoint_interval_is_virtual_time(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = inproc_settings_for(tmp_path, checkpoint_interval_s=300.0)
    async with running_app(settings, trio_driven_clock(START)) as server:
        assert (await server.client.put(PREFIX + "s", headers={"content-type": "text/plain"})).status_code == 201
        before = _log(server).statistics().checkpoints
        await trio.sleep(290)
        await _append(server, b"a")  # the writer looks at the interval after each batch
        assert _log(server).statistics().checkpoints == before
        await trio.sleep(20)
        await _append(server, b"b")
        await trio.testing.wait_all_tasks_blocked()
        assert _log(server).statistics().checkpoints == before + 1


async def test_interval_fsync_waits_for_its_interval_in_virtual_time(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = inproc_settings_for(tmp_path, fsync="interval", fsync_interval_ms=60_000)
    async with running_app(settings, trio_driven_clock(START)) as server:
        log = _log(server)

        async def next_sync() -> float:
            """Virtual time of the next sync (polled at 0.25 s)."""
            syncs = log.statistics().syncs
            while log.statistics().syncs == syncs:
                await trio.sleep(0.25)
            return trio.current_time()

        assert (await server.client.put(PREFIX + "s", headers={"content-type": "text/plain"})).status_code == 201
        first = await next_sync()
        assert 59 <= first <= 61  # the interval runs from the log's start, not from the write
        synced = log.statistics().syncs
        await trio.sleep(1)
        await _append(server, b"a")
        await trio.sleep(58)
        assert log.statistics().syncs == synced  # written 58 s ago, not synced yet
        assert await next_sync() - first == pytest.approx(60, abs=0.5)  # one interval after the last sync


async def test_storage_state_since_is_the_clocks_wall_time(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with running_app(inproc_settings_for(tmp_path), trio_driven_clock(START)) as server:
        assert _log(server).health.since == START + trio.current_time()
