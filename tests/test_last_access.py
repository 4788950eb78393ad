"""The sliding-TTL clock across restarts (storage/lastaccess.py).

A clean shutdown saves when each TTL stream was last accessed, so a restart
neither resets the TTL nor forgets time spent down; after a crash (no saved
file, or one that does not match the recovered checkpoint) the restart counts
as an access, so nothing expires early. Driven in process on the autojump
clock with a trio-driven wall clock: no sleeps.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from conftest import PREFIX, assert_error, inproc_settings_for
from inproc import running_app
from trio_streams.clock import trio_driven_clock
from trio_streams.config import Settings
from trio_streams.storage import lastaccess

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
TEXT = "text/plain"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return inproc_settings_for(tmp_path)


async def _create_ttl_stream(settings: Settings, ttl_s: int) -> None:
    async with running_app(settings, trio_driven_clock(START)) as app:
        resp = await app.client.put(PREFIX + "s", headers={"content-type": TEXT, "stream-ttl": str(ttl_s)}, content=b"x")
        assert resp.status_code == 201, resp.text


async def _status_after_restart(settings: Settings) -> int:
    async with running_app(settings, trio_driven_clock(START)) as app:
        return (await app.client.get(PREFIX + "s")).status_code


async def test_a_clean_restart_keeps_the_ttl_clock(autojump_clock: MockClock, settings: Settings) -> None:
    await _create_ttl_stream(settings, ttl_s=10)
    await trio.sleep(8)  # down (or idle) for 8 s of the 10 s TTL
    async with running_app(settings, trio_driven_clock(START)) as app:
        assert (await app.client.head(PREFIX + "s")).status_code == 200  # HEAD is not an access
        await trio.sleep(3)  # 11 s since the last access: a restart did not reset it
        assert_error(await app.client.get(PREFIX + "s"), 404)


async def test_a_ttl_that_ran_out_while_down_expires_at_start(autojump_clock: MockClock, settings: Settings) -> None:
    await _create_ttl_stream(settings, ttl_s=10)
    await trio.sleep(60)
    assert await _status_after_restart(settings) == 404


async def test_reads_after_a_clean_restart_still_slide_the_ttl(autojump_clock: MockClock, settings: Settings) -> None:
    await _create_ttl_stream(settings, ttl_s=10)
    await trio.sleep(5)
    async with running_app(settings, trio_driven_clock(START)) as app:
        for _ in range(4):
            await trio.sleep(4)
            assert (await app.client.get(PREFIX + "s")).status_code == 200
    await trio.sleep(4)
    assert await _status_after_restart(settings) == 200  # 4 s since the last read, saved again


async def test_after_a_crash_the_restart_counts_as_an_access(autojump_clock: MockClock, settings: Settings) -> None:
    await _create_ttl_stream(settings, ttl_s=10)
    (Path(settings.data_dir) / lastaccess.FILE_NAME).unlink()  # a crash never writes it
    await trio.sleep(8)
    async with running_app(settings, trio_driven_clock(START)) as app:
        await trio.sleep(8)  # 16 s since creation, 8 s since the restart
        assert (await app.client.head(PREFIX + "s")).status_code == 200
        await trio.sleep(3)
        assert (await app.client.head(PREFIX + "s")).status_code == 404


def test_take_uses_the_file_only_for_the_checkpoint_it_names(tmp_path: Path) -> None:
    saved = {1: 100.5, 7: 200.25}
    cases = [((5, 0), saved), ((6, 0), {}), ((5, 3), {})]  # (checkpoint position, replayed events) → map
    for (position, replayed), expected in cases:
        lastaccess.save(tmp_path, 5, saved)
        assert lastaccess.take(tmp_path, position, replayed) == expected
        assert not (tmp_path / lastaccess.FILE_NAME).exists()  # removed either way
    assert lastaccess.take(tmp_path, 5, 0) == {}  # no file: a crash


def test_an_unreadable_file_is_ignored_and_removed(tmp_path: Path) -> None:
    for junk in (b"{not json", b'{"version": 99, "position": 5, "last_access": []}', b'{"position": 5}'):
        (tmp_path / lastaccess.FILE_NAME).write_bytes(junk)
        (tmp_path / (lastaccess.FILE_NAME + ".tmp")).write_bytes(b"partial")
        assert lastaccess.take(tmp_path, 5, 0) == {}
        assert sorted(p.name for p in tmp_path.iterdir()) == []
