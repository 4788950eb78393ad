"""The read side without sockets: long-poll and SSE under trio's autojump clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import trio
import trio.testing

from trio_streams.config import Settings
from trio_streams.http.asgi import Request
from trio_streams.http.reads import Reads
from trio_streams.protocol.offsets import format_offset
from test_streams import _append, _create, run_service


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
        registry = service.registry
        await registry.create("s", _create(body=b"abc"))
        reads, sent = Reads(registry, []), Recorder()
        started = trio.current_time()
        await reads.long_poll(_request({"offset": format_offset(3), "live": "long-poll"}), registry.get("s"), sent)
        assert trio.current_time() - started >= 30
        assert sent.status == 204
        assert sent.headers["stream-next-offset"] == format_offset(3)
        assert sent.headers["stream-up-to-date"] == "true" and "stream-cursor" in sent.headers


# Appends go through a worker thread, and the autojump clock jumps while a
# thread works (every task looks blocked), so tests that append while a
# reader waits use the real clock; their waits end on data, not on time.


async def test_long_poll_wakes_on_append_and_returns_only_new_data(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)) as service:
        registry = service.registry
        await registry.create("s", _create(body=b"abc"))
        reads, sent = Reads(registry, []), Recorder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads.long_poll, _request({"offset": "now", "live": "long-poll"}), registry.get("s"), sent)
            await trio.testing.wait_all_tasks_blocked()
            assert sent.messages == []  # parked
            await registry.append("s", _append(b"def"))
        assert (sent.status, sent.body) == (200, b"def")
        assert sent.headers["stream-next-offset"] == format_offset(6)


async def test_drain_answers_parked_long_polls_at_once(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), long_poll_timeout_ms=30_000)) as service:
        registry = service.registry
        await registry.create("s", _create())
        reads, sent = Reads(registry, []), Recorder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads.long_poll, _request({"offset": "-1", "live": "long-poll"}), registry.get("s"), sent)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            reads.drain()
        assert sent.status == 204 and trio.current_time() - started < 1


def _sse_data(event: str) -> str:
    return "\n".join(line.removeprefix("data:") for line in event.split("\n") if line.startswith("data:"))


async def test_sse_pairs_data_with_control_and_ends_on_close(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path))) as service:
        registry = service.registry
        await registry.create("s", _create("application/json", body=b'[{"n":1}]'))
        reads, sent = Reads(registry, []), Recorder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads.server_sent_events, _request({"offset": "-1", "live": "sse"}), registry.get("s"), sent)
            await trio.testing.wait_all_tasks_blocked()
            from trio_streams.protocol.headers import AppendRequest
            await registry.append("s", AppendRequest("application/json", b'{"n":2}', None, None, True))
        events = [block for block in sent.body.decode().split("\n\n") if block]
        kinds = [block.split("\n", 1)[0] for block in events]
        assert kinds == ["event: data", "event: control", "event: data", "event: control"]
        final = orjson.loads(_sse_data(events[-1]))
        assert final == {"streamNextOffset": format_offset(len(b'{"n":1}\n{"n":2}\n')), "upToDate": True, "streamClosed": True}
        assert orjson.loads(_sse_data(events[2])) == [{"n": 2}]
        assert sent.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
