"""The read side without sockets: long-poll and SSE under trio's autojump clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import trio
import trio.testing

from trio_streams.clock import SYSTEM_CLOCK
from trio_streams.config import Settings
from trio_streams.http.asgi import Request
from trio_streams.http.reads import Reads
from trio_streams.protocol.headers import AppendRequest
from trio_streams.protocol.offsets import format_offset
from trio_streams.service import Service
from trio_streams.streams.facade import Streams
from test_streams import _append, _create, run_service


def _streams(service: Service) -> Streams:
    assert service.streams is not None
    return service.streams


def _reads(service: Service) -> Reads:
    return Reads(_streams(service), service.settings, service.clock, [])


async def read_while(service: Service, live: str, offset: str, change: Callable[[], Awaitable[object]]) -> Recorder:
    """Parks a live read of stream "s" at ``offset``, runs ``change``, and returns what the read sent."""
    reads, sent = _reads(service), Recorder()
    operation = reads.long_poll if live == "long-poll" else reads.server_sent_events
    async with trio.open_nursery() as nursery:
        nursery.start_soon(operation, _request({"offset": offset, "live": live}), _streams(service).open("s"), sent)
        await trio.testing.wait_all_tasks_blocked()
        assert sent.messages == [] or live == "sse", "the long-poll should be parked"
        await change()
    return sent


def _request(query: dict[str, str]) -> Request:
    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    return Request("GET", "/v1/stream/s", {}, list(query.items()), {}, receive)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def test_thirty_second_long_poll_times_out_with_204(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        reads, sent = _reads(service), Recorder()
        started = trio.current_time()
        await reads.long_poll(_request({"offset": format_offset(3), "live": "long-poll"}), streams.open("s"), sent)
        assert trio.current_time() - started >= 30
        assert sent.status == 204
        assert sent.headers["stream-next-offset"] == format_offset(3)
        assert sent.headers["stream-up-to-date"] == "true" and "stream-cursor" in sent.headers


# Appends go through a worker thread, and the autojump clock jumps while a
# thread works (every task looks blocked), so tests that append while a
# reader waits use the real clock; their waits end on data, not on time.


async def test_long_poll_wakes_on_append_and_returns_only_new_data(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        sent = await read_while(service, "long-poll", "now", lambda: streams.append("s", _append(b"def")))
        assert (sent.status, sent.body) == (200, b"def")
        assert sent.headers["stream-next-offset"] == format_offset(6)


async def test_drain_answers_parked_long_polls_at_once(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)) as service:
        streams = _streams(service)
        await streams.create("s", _create())
        reads, sent = _reads(service), Recorder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads.long_poll, _request({"offset": "-1", "live": "long-poll"}), streams.open("s"), sent)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            streams.drain()
        assert sent.status == 204 and trio.current_time() - started < 1


def _sse_data(event: str) -> str:
    return "\n".join(line.removeprefix("data:") for line in event.split("\n") if line.startswith("data:"))


async def test_sse_pairs_data_with_control_and_ends_on_close(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path))) as service:
        streams = _streams(service)
        await streams.create("s", _create("application/json", body=b'[{"n":1}]'))
        closing = AppendRequest("application/json", b'{"n":2}', None, None, True)
        sent = await read_while(service, "sse", "-1", lambda: streams.append("s", closing))
        events = [block for block in sent.body.decode().split("\n\n") if block]
        kinds = [block.split("\n", 1)[0] for block in events]
        assert kinds == ["event: data", "event: control", "event: data", "event: control"]
        final = orjson.loads(_sse_data(events[-1]))
        assert final == {"streamNextOffset": format_offset(len(b'{"n":1}\n{"n":2}\n')), "upToDate": True, "streamClosed": True}
        assert orjson.loads(_sse_data(events[2])) == [{"n": 2}]
        assert sent.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_catch_up_cache_control_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), cache_max_age_s=5, cache_stale_while_revalidate_s=7)
    async with run_service(settings) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc", closed=True))  # closed: its last chunk is complete
        sent = Recorder()
        await _reads(service).catch_up(_request({"offset": "-1"}), streams.open("s"), sent)
        assert (sent.status, sent.body) == (200, b"abc")
        assert sent.headers["cache-control"] == "public, max-age=5, stale-while-revalidate=7"


async def test_with_access_control_on_chunks_are_private_and_a_tail_chunk_is_revalidated(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path))) as service:
        streams = _streams(service)
        await streams.create("s", _create(body=b"abc"))
        reads = Reads(streams, service.settings, service.clock, [], authenticated=True)
        sent = Recorder()
        await reads.catch_up(_request({"offset": "-1"}), streams.open("s"), sent)
        assert (sent.status, sent.headers["cache-control"]) == (200, "private, no-cache")
