"""Retention end to end, in process: policies, 410 below the head, forks, age, disk space.

The ASGI app through tests/inproc.py on a fresh data directory per test;
age trims run on ``autojump_clock`` with the app's wall clock following it
(``trio_driven_clock``), so the sweep and a policy's hours pass in no real
time. tests/test_retention_server.py keeps the kill -9 and restart tests of
a real server; tests/test_retention_rules.py the pure rules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from conftest import PREFIX, assert_error, inproc_settings_for, offset_of, parse_metrics
from inproc import AsyncSseReader, InprocClient, running_app
from trio_streams.clock import SYSTEM_CLOCK, trio_driven_clock
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.offsets import format_offset
from trio_streams.protocol.retention import Retention
from trio_streams.protocol.state import StreamState
from trio_streams.storage.fileops import Fault, FaultyFileOps
from trio_streams.storage.verify import verify_directory
from trio_streams.streams.chunks import ChunkReader
from trio_streams.streams.retention import Retainer

OCTET = {"content-type": "application/octet-stream"}
JSON_CT = {"content-type": "application/json"}
EARLIEST = "trio-streams-earliest-offset"
BLOCK = 64 * 1024
# Long enough for a trim started after an append to become durable, in real time.
SETTLE_S = 10.0


def path(name: str) -> str:
    return PREFIX + name


def position(token: str) -> int:
    return int(token.rpartition("_")[2])


def budget(max_bytes: int = 0, max_age_s: int = 0) -> dict[str, str]:
    return {"trio-streams-retention-max-bytes": str(max_bytes), "trio-streams-retention-max-age": str(max_age_s)}


def settings(tmp_path: Path, **overrides: Any) -> Any:
    base: dict[str, Any] = {"retention_trim_step_bytes": 1, "append_bytes_max": 1024 * 1024}
    return inproc_settings_for(tmp_path, **(base | overrides))


def piece(i: int, size: int) -> bytes:
    """Distinct bytes per append: a read shows exactly which appends it holds."""
    return bytes([i % 251]) * size


async def head_of(client: InprocClient, name: str) -> int:
    """The earliest retained position, as a client learns it (a 410 names it; 0 otherwise)."""
    resp = await client.get(path(name), params={"offset": format_offset(0)})
    if resp.status_code == 410:
        return position(resp.headers[EARLIEST])
    assert resp.status_code == 200, resp.text
    return 0


async def until_head(client: InprocClient, name: str, predicate: Any) -> int:
    """Polls (with a deadline) until the stream's head satisfies ``predicate``; returns it."""
    with trio.fail_after(SETTLE_S):
        while not predicate(head := await head_of(client, name)):
            await trio.sleep(0.01)
    return head


async def append_all(client: InprocClient, name: str, parts: list[bytes], headers: dict[str, str] = OCTET) -> int:
    tail = 0
    for part in parts:
        resp = await client.post(path(name), content=part, headers=headers)
        assert resp.status_code == 204, resp.text
        tail = position(offset_of(resp))
    return tail


async def read_from(client: InprocClient, name: str, offset: str) -> tuple[bytes, int]:
    data, token = b"", offset
    while True:
        resp = await client.get(path(name), params={"offset": token})
        assert resp.status_code == 200, resp.text
        data += resp.content
        token = offset_of(resp)
        if resp.headers.get("stream-up-to-date") == "true":
            return data, position(token)


# -- a byte budget -----------------------------------------------------------------


async def test_reads_below_the_head_are_410_naming_the_earliest_offset(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as srv:
        client = srv.client
        assert (await client.put(path("b"), headers=OCTET | budget(max_bytes=1000))).status_code == 201
        parts = [piece(i, 300) for i in range(10)]
        tail = await append_all(client, "b", parts)
        head = await until_head(client, "b", lambda h: tail - h <= 1000)
        assert head == tail - 1000, "a byte stream is cut exactly at its budget"

        gone = await client.get(path("b"), params={"offset": format_offset(head - 1)})
        assert_error(gone, 410, "OFFSET_TRIMMED")
        assert gone.headers[EARLIEST] == format_offset(head)
        assert "Trio-Streams-Earliest-Offset" in gone.headers["access-control-expose-headers"]

        expected = b"".join(parts)[head:]
        assert await read_from(client, "b", gone.headers[EARLIEST]) == (expected, tail), "resuming at the header"
        assert await read_from(client, "b", "-1") == (expected, tail), "offset=-1 starts at the head"
        assert (await client.get(path("b"))).content == expected[: len(expected)], "no offset: from the head"
        head_resp = await client.head(path("b"))
        assert head_resp.status_code == 200 and EARLIEST not in head_resp.headers


async def test_long_poll_and_sse_readers_behind_the_head_get_410(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path, read_chunk_bytes_max=1000)) as srv:
        client = srv.client
        await client.put(path("live"), headers=OCTET | budget(max_bytes=4000))
        await append_all(client, "live", [piece(1, 3000)])
        async with client.stream("GET", path("live"), params={"offset": "-1", "live": "sse"}) as resp:
            reader = AsyncSseReader(resp)
            first = await reader.next_event()
            assert first is not None and first.event == "data" and first.b64() == piece(1, 1000)
            control = await reader.next_event()
            assert control is not None and control.event == "control"
            behind = json.loads(control.data)["streamNextOffset"]
            tail = await append_all(client, "live", [piece(2, 3000)])  # the head passes the reader
            await until_head(client, "live", lambda h: h == tail - 4000)
            rest = await reader.rest()  # the event stream ends: it cannot carry a 410
        assert all(e.event != "data" or len(e.b64()) <= 1000 for e in rest)
        for live in ("long-poll", "sse"):
            resp = await client.get(path("live"), params={"offset": behind, "live": live})
            assert_error(resp, 410, "OFFSET_TRIMMED")
            assert resp.headers[EARLIEST] == format_offset(tail - 4000)


async def test_json_streams_drop_whole_messages_only(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as srv:
        client = srv.client
        await client.put(path("j"), headers=JSON_CT | budget(max_bytes=100))
        messages = [{"n": i, "pad": "x" * (i % 7)} for i in range(40)]
        for batch in range(0, 40, 4):
            resp = await client.post(path("j"), content=json.dumps(messages[batch : batch + 4]).encode(), headers=JSON_CT)
            assert resp.status_code == 204
        tail = position(offset_of(resp))
        await until_head(client, "j", lambda h: 0 < h and tail - h <= 100)
        kept = json.loads((await client.get(path("j"), params={"offset": "-1"})).content)
        assert kept == messages[len(messages) - len(kept):], "the retained part is a whole-message suffix"
        assert 0 < len(kept) < len(messages)


# -- where policies come from ------------------------------------------------------


async def test_prefix_rules_the_default_and_a_stream_of_its_own(tmp_path: Path) -> None:
    config = settings(tmp_path, retention_rules="logs/ max_bytes=1000; logs/audit/ max_bytes=0",
                      retention_max_bytes=3000)
    async with running_app(config) as srv:
        client = srv.client
        names = ["logs/app", "logs/audit/x", "other", "logs/own"]
        for name in names:
            headers = OCTET | (budget(max_bytes=2000) if name == "logs/own" else {})
            assert (await client.put(path(name), headers=headers)).status_code == 201
        tails = {name: await append_all(client, name, [piece(i, 500) for i in range(10)]) for name in names}
        assert await until_head(client, "logs/app", lambda h: h == tails["logs/app"] - 1000)
        assert await until_head(client, "other", lambda h: h == tails["other"] - 3000)
        assert await until_head(client, "logs/own", lambda h: h == tails["logs/own"] - 2000)
        assert await head_of(client, "logs/audit/x") == 0, "the longest prefix keeps everything"


async def test_a_re_put_with_another_policy_is_409(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as srv:
        client = srv.client
        policy = budget(max_bytes=1000, max_age_s=60)
        assert (await client.put(path("p"), headers=OCTET | policy)).status_code == 201
        assert (await client.put(path("p"), headers=OCTET | policy)).status_code == 200
        assert_error(await client.put(path("p"), headers=OCTET | budget(max_bytes=999, max_age_s=60)), 409)
        assert_error(await client.put(path("p"), headers=OCTET), 409)


@pytest.mark.parametrize("header, value", [
    ("trio-streams-retention-max-bytes", "-1"), ("trio-streams-retention-max-bytes", "1e6"),
    ("trio-streams-retention-max-age", "01"), ("trio-streams-retention-max-age", "9" * 17),
    ("trio-streams-retention-max-age", ""),
])
async def test_malformed_policy_headers_are_400(tmp_path: Path, header: str, value: str) -> None:
    async with running_app(settings(tmp_path)) as srv:
        assert_error(await srv.client.put(path("bad"), headers=OCTET | {header: value}), 400, "INVALID_HEADER")
        assert (await srv.client.head(path("bad"))).status_code == 404


# -- forks -----------------------------------------------------------------------------


async def test_a_fork_pins_the_source_data_it_reads(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as srv:
        client = srv.client
        await client.put(path("src"), headers=OCTET | budget(max_bytes=1000))
        first = [piece(i, 300) for i in range(3)]
        fork_at = await append_all(client, "src", first)
        fork = {"stream-forked-from": path("src"), "stream-fork-offset": format_offset(fork_at)}
        assert (await client.put(path("fork"), headers=fork)).status_code == 201
        later = [piece(i, 300) for i in range(3, 13)]
        tail = await append_all(client, "src", later)
        await client.post(path("fork"), content=b"own", headers=OCTET)
        # The source's trims wait for the fork (every append asked for one).
        assert await head_of(client, "src") == 0
        assert await read_from(client, "fork", "-1") == (b"".join(first) + b"own", fork_at + 3)

        assert (await client.delete(path("fork"))).status_code == 204
        await append_all(client, "src", [piece(99, 1)])
        assert await until_head(client, "src", lambda h: h == tail + 1 - 1000), "unpinned: trimmed at last"


async def test_a_fork_below_the_source_head_reads_from_its_own_base(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as srv:
        client = srv.client
        await client.put(path("src"), headers=OCTET | budget(max_bytes=1000))
        tail = await append_all(client, "src", [piece(i, 500) for i in range(6)])
        head = await until_head(client, "src", lambda h: h > 0)
        fork = {"stream-forked-from": path("src"), "stream-fork-offset": format_offset(head - 1)}
        assert (await client.put(path("fork"), headers=fork)).status_code == 201
        assert await head_of(client, "fork") == head - 1
        assert await read_from(client, "fork", "-1") == (b"", head - 1)
        assert tail > head


# -- age ---------------------------------------------------------------------------------


async def test_data_older_than_the_max_age_is_trimmed_by_the_sweep(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    clock = trio_driven_clock(1_800_000_000.0)
    async with running_app(settings(tmp_path, retention_sweep_interval_s=10.0), clock) as srv:
        client = srv.client
        await client.put(path("aged"), headers=OCTET | budget(max_age_s=60))
        first = await append_all(client, "aged", [b"old" * 10])
        await trio.sleep(30)
        second = await append_all(client, "aged", [b"new" * 10])
        await trio.sleep(25)  # 55 s after the first append: nothing is old enough yet
        assert await head_of(client, "aged") == 0
        await trio.sleep(20)  # 75 s after the first, 45 s after the second
        assert await head_of(client, "aged") == first
        assert await read_from(client, "aged", "-1") == (b"new" * 10, second)
        await trio.sleep(30)
        assert await head_of(client, "aged") == second
        assert await read_from(client, "aged", "-1") == (b"", second)
        assert (await client.post(path("aged"), content=b"more", headers=OCTET)).status_code == 204


# -- disk space, verify, metrics, restart ---------------------------------------------


def data_file(data_dir: str, stream_id: int = 1) -> Path:
    return Path(data_dir) / "streams" / f"{stream_id:016x}.dat"


async def test_disk_space_is_freed_and_verify_stays_clean(tmp_path: Path) -> None:
    config = settings(tmp_path, retention_trim_step_bytes=BLOCK)
    async with running_app(config) as srv:
        client = srv.client
        await client.put(path("big"), headers=OCTET | budget(max_bytes=2 * BLOCK))
        tail = await append_all(client, "big", [os.urandom(BLOCK // 2) for _ in range(32)])  # 1 MiB
        await until_head(client, "big", lambda h: h > 0)
        with trio.fail_after(SETTLE_S):  # the punch follows the durable trim
            while data_file(config.data_dir).stat().st_blocks * 512 > 4 * BLOCK:
                await trio.sleep(0.01)
        stat = data_file(config.data_dir).stat()
        assert stat.st_size == tail, "positions stay file offsets"
        metrics = parse_metrics((await client.get("/metrics")).text)
        assert metrics["trio_streams_retention_trims_total"] >= 1
        assert metrics["trio_streams_retention_reclaimed_bytes_total"] >= tail - 4 * BLOCK
    report = verify_directory(Path(config.data_dir))
    assert [f.damage for f in report.streams] == [[]]
    assert not report.unapplied


async def test_policy_and_head_survive_a_restart(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with running_app(config) as srv:
        await srv.client.put(path("r"), headers=OCTET | budget(max_bytes=1000))
        tail = await append_all(srv.client, "r", [piece(i, 400) for i in range(5)])
        head = await until_head(srv.client, "r", lambda h: h == tail - 1000)
    async with running_app(config) as srv:
        assert await head_of(srv.client, "r") == head
        assert (await srv.client.put(path("r"), headers=OCTET | budget(max_bytes=1000))).status_code == 200
        tail = await append_all(srv.client, "r", [piece(9, 400)])
        assert await until_head(srv.client, "r", lambda h: h == tail - 1000), "the policy still applies"


class Crash(BaseException):
    """The process dies at this file call (nothing after it runs)."""


async def test_a_crash_between_the_trim_record_and_the_punch_recovers_trimmed(tmp_path: Path) -> None:
    parts = [os.urandom(BLOCK // 2) for _ in range(16)]
    tail = len(parts) * BLOCK // 2
    # One trim, due with the last append only: the crash comes after every append is durable.
    config = settings(tmp_path, retention_trim_step_bytes=tail - 2 * BLOCK)
    ops = FaultyFileOps([Fault("punch_hole", raises=Crash())])
    appended = False
    with pytest.raises(BaseException) as crashed:
        async with running_app(config, ops=ops) as srv:
            await srv.client.put(path("c"), headers=OCTET | budget(max_bytes=2 * BLOCK))
            await append_all(srv.client, "c", parts)
            appended = True
            with trio.fail_after(SETTLE_S):
                await trio.sleep_forever()  # the crash ends it
    assert appended and ops.fired() == 1
    assert isinstance(crashed.value, BaseExceptionGroup) and crashed.value.subgroup(Crash) is not None
    assert data_file(config.data_dir).stat().st_blocks * 512 >= tail, "nothing was punched"
    async with running_app(config) as srv:
        head = await head_of(srv.client, "c")
        assert head == tail - 2 * BLOCK, "the durable trim record was recovered"
        assert await read_from(srv.client, "c", "-1") == (b"".join(parts)[head:], tail)
        with trio.fail_after(SETTLE_S):  # and its hole punched after all
            while data_file(config.data_dir).stat().st_blocks * 512 > 4 * BLOCK:
                await trio.sleep(0.01)
    assert [f.damage for f in verify_directory(Path(config.data_dir)).streams] == [[]]


# -- the sweep's bounded work -------------------------------------------------------------


class _Streams:
    """The part of DurableView the sweep reads."""

    def __init__(self, states: list[Any]) -> None:
        self._states = states

    def streams(self) -> list[Any]:
        return list(self._states)


async def test_one_sweep_starts_at_most_its_share_of_trims(tmp_path: Path) -> None:
    over = [StreamState(i, f"s{i}", "text/plain", Expiry(), 0.0, tail=100, retention=Retention(0, 10))
            for i in range(1, 26)]
    within = [StreamState(100 + i, f"w{i}", "text/plain", Expiry(), 0.0, tail=5, retention=Retention(0, 10))
              for i in range(10)]
    config = Settings(data_dir=str(tmp_path), retention_sweep_trims_max=10, retention_sweep_slice_streams=3,
                      retention_trim_step_bytes=1)
    retainer = Retainer(config, _Streams(within + over), SYSTEM_CLOCK)  # type: ignore[arg-type]
    started: list[int] = []
    await retainer.sweep(lambda state: started.append(state.stream_id))
    assert started == [s.stream_id for s in over[:10]], "the first ten due, none within budget"


async def test_each_trim_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trio_streams.storage")
    async with running_app(settings(tmp_path)) as srv:
        await srv.client.put(path("logged"), headers=OCTET | budget(max_bytes=100))
        tail = await append_all(srv.client, "logged", [piece(1, 150)])
        await until_head(srv.client, "logged", lambda h: h == tail - 100)
        tail = await append_all(srv.client, "logged", [piece(2, 150)])
        await until_head(srv.client, "logged", lambda h: h == tail - 100)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention:")]
    assert lines == ["retention: stream 'logged' (id 1) trimmed to offset 50, 100 bytes retained",
                     "retention: stream 'logged' (id 1) trimmed to offset 200, 100 bytes retained"]


async def test_a_live_reader_woken_below_the_head_is_refused_before_any_read() -> None:
    """A long-poll that waited at a position the head passed meanwhile reads through
    ``read_chunk``: 410 there, never the (punched) bytes."""
    class NoReads:
        async def read(self, *args: object) -> bytes:
            raise AssertionError("read below the head")

    state = StreamState(1, "s", "text/plain", Expiry(), 0.0, tail=500, head=300)
    reader = ChunkReader(NoReads(), 1000, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as info:
        await reader.read_chunk(state, 299)
    assert info.value.status == 410 and dict(info.value.headers)[EARLIEST] == format_offset(300)


async def test_a_read_that_raced_a_punch_is_410_not_data_corrupt(tmp_path: Path) -> None:
    """A reader checks its offset, then the trim is applied and the hole punched before
    its pread: the zeros fail their checksum below the head, which is gone, not damage."""
    config = settings(tmp_path, retention_trim_step_bytes=BLOCK)
    async with running_app(config) as srv:
        await srv.client.put(path("raced"), headers=OCTET | budget(max_bytes=2 * BLOCK))
        await append_all(srv.client, "raced", [os.urandom(BLOCK // 2) for _ in range(32)])
        await until_head(srv.client, "raced", lambda h: h > BLOCK)
        with trio.fail_after(SETTLE_S):
            while data_file(config.data_dir).stat().st_blocks * 512 > 4 * BLOCK:
                await trio.sleep(0.01)
        view = srv.app.service.view
        with pytest.raises(ProtocolError) as info:
            await view.read(view.at("raced"), 0, BLOCK)  # below the head, past every check
        assert info.value.status == 410
        metrics = parse_metrics((await srv.client.get("/metrics")).text)
        assert metrics["trio_streams_data_corrupt_reads_total"] == 0
