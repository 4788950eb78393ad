"""The one live-wait primitive, in-process under MockClock: data, closed, gone, timeout.

One rule for "is the reader's stream still there" (protocol.reads.live_outcome):
deleted, soft-deleted, expired and deleted-then-re-created streams are all
GONE; long-poll answers 404 (410 for soft-deleted), SSE ends.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_streams.clock import Clock
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import CreateRequest, Expiry, ForkSpec
from trio_streams.protocol.offsets import format_offset
from trio_streams.protocol.reads import Outcome
from trio_streams.protocol.state import StreamState
from trio_streams.streams.facade import Streams
from trio_streams.streams.live import Waited
from test_reads import Recorder, _reads, _request, _streams, read_while
from test_streams import _append, _create, mock_time, run_service, threads_on_loop  # noqa: F401 (fixtures)

Mock = trio.testing.MockClock


async def _wait(streams: Streams, state: StreamState, position: int, timeout_s: float = 100.0) -> Waited:
    with streams.watch(state) as watch:
        return await watch.wait_for_data(position, trio.current_time() + timeout_s)


async def _wait_while(streams: Streams, state: StreamState, position: int, change: object) -> Waited:
    """Parks a wait, then runs ``change`` (an async callable) and returns how the wait ended."""
    result: list[Waited] = []

    async def waiter() -> None:
        result.append(await _wait(streams, state, position))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert result == [], "the wait should be parked"
        await change()  # type: ignore[operator]
    return result[0]


async def test_timeout_after_exactly_the_deadline(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        started = trio.current_time()
        waited = await _wait(streams, streams.open("s"), 3, timeout_s=30)
        assert waited.outcome is Outcome.TIMEOUT and trio.current_time() - started == 30
        assert waited.state is not None and waited.state.tail == 3


async def test_data_and_closed(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        state = streams.open("s")
        waited = await _wait_while(streams, state, 3, lambda: streams.append("s", _append(b"d")))
        assert waited.outcome is Outcome.DATA and waited.state is not None and waited.state.tail == 4
        waited = await _wait_while(streams, state, 4, lambda: streams.append("s", _append(b"", close=True)))
        assert waited.outcome is Outcome.CLOSED
        assert (await _wait(streams, state, 0, timeout_s=-math.inf)).outcome is Outcome.DATA  # data outranks closed


async def test_deleted_and_recreated_streams_are_gone(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        waited = await _wait_while(streams, streams.open("s"), 3, lambda: streams.delete("s"))
        assert waited.outcome is Outcome.GONE and waited.state is None

        await streams.create("s", _create(body=b"abc"))
        old = streams.open("s")  # a reader opened the stream, then it was deleted and re-created
        await streams.delete("s")
        await streams.create("s", _create(body=b"abcdef"))
        waited = await _wait(streams, old, 3)
        # The new stream has data past 3, but it is another offset space: never a continuation.
        assert waited.outcome is Outcome.GONE and waited.state is not None and waited.state.stream_id != old.stream_id


async def test_soft_deleted_stream_is_gone_and_long_poll_answers_410(
    tmp_path: Path, autojump_clock: Mock, mock_time: Clock
) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("src", _create(body=b"abc"))
        fork = CreateRequest("text/plain", Expiry(), False, b"", ForkSpec("src", None, 0), content_type_given=False)
        assert (await streams.create("fork", fork)).status == 201
        reads, sent = _reads(service), Recorder()
        refusals: list[int] = []

        async def long_poll() -> None:
            try:
                await reads.long_poll(_request({"offset": "now", "live": "long-poll"}), streams.open("src"), sent)
            except ProtocolError as exc:
                refusals.append(exc.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            await streams.delete("src")
        assert refusals == [410] and sent.messages == []


async def test_expired_stream_is_gone_for_a_parked_reader(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    settings = Settings(data_dir=str(tmp_path), expiry_sweep_interval_s=20.0)
    async with run_service(settings, mock_time) as service:
        streams = _streams(service)
        await streams.create("ttl", _create(expiry=Expiry(ttl_s=10)))
        started = trio.current_time()
        waited = await _wait(streams, streams.open("ttl"), 0, timeout_s=1000)
        # The sweep's delete wakes the reader, long before its deadline.
        assert waited.outcome is Outcome.GONE and waited.state is None
        assert trio.current_time() - started < 1000


async def test_sse_ends_cleanly_when_its_stream_is_deleted(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        sent = await read_while(service, "sse", "-1", lambda: streams.delete("s"))
        assert sent.status == 200
        assert sent.body.count(b"event: data") == 1
        assert sent.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_drain_ends_waits_and_later_waits_at_once(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        state = streams.open("s")

        async def drain() -> None:
            streams.drain()

        started = trio.current_time()
        assert (await _wait_while(streams, state, 3, drain)).outcome is Outcome.TIMEOUT
        assert (await _wait(streams, state, 3, timeout_s=1000)).outcome is Outcome.TIMEOUT
        assert trio.current_time() == started
        assert (await _wait(streams, state, 0, timeout_s=1000)).outcome is Outcome.DATA  # data still goes out


async def test_subscriber_limit_refuses_before_any_response(tmp_path: Path, autojump_clock: Mock, mock_time: Clock) -> None:
    settings = Settings(data_dir=str(tmp_path), subscribers_per_stream_max=1)
    async with run_service(settings, mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        state = streams.open("s")
        with streams.watch(state):
            sent = Recorder()
            with pytest.raises(ProtocolError) as info:
                await _reads(service).server_sent_events(_request({"offset": "now", "live": "sse"}), state, sent)
            assert info.value.status == 503 and sent.messages == []


async def test_back_to_back_long_polls_keep_a_ttl_stream_alive(
    tmp_path: Path, autojump_clock: Mock, mock_time: Clock
) -> None:
    settings = Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)
    async with run_service(settings, mock_time) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"x", expiry=Expiry(ttl_s=100)))
        reads = _reads(service)
        for _ in range(6):  # 180 s of long-polls; each opens the stream, an access
            sent = Recorder()
            await reads.long_poll(_request({"offset": format_offset(1), "live": "long-poll"}), streams.open("s"), sent)
            assert sent.status == 204
        assert streams.open("s").tail == 1

