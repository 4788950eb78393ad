"""The client against real servers: our `trio-streams serve` and the Node reference server.

Every test runs against both (``target`` is parametrized), proving the
client speaks the protocol, not just our server's dialect. Our server comes
from tests/conftest.py's shared ``server`` fixture; the Node server
(tests/conformance/reference_server.mjs, npm @durable-streams/server,
pinned in tests/conformance/package-lock.json) from client_harness. Both
run with a 500 ms long-poll timeout. A missing Node server fails the tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import httpx
import pytest
import sniffio
import trio

from client_harness import Target, node_server, target  # noqa: F401 (fixtures)
from trio_streams.client import (
    DurableStream, DurableStreamError, IdempotentProducer, StaleEpochError, StreamClosedError, stream,
)


class Counting:
    """An httpx client that counts requests by method (to see batching on a real server)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def _hook(self, request: httpx.Request) -> None:
        self.methods.append(request.method)

    def client(self, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [self._hook]}, transport=transport, timeout=30)


async def collect(res: Any, method: str = "json_stream") -> list:
    return [item async for item in getattr(res, method)()]


# -- writing and catch-up ---------------------------------------------------------


async def test_concurrent_appends_coalesce_and_read_back_once_each(target: Target) -> None:
    counting = Counting()
    async with await DurableStream.create(target.url(), content_type="application/json", client=counting.client()) as ds:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(ds.append, {"n": i})
        posts = counting.methods.count("POST")
        assert posts < 40  # appends made while a POST was in flight rode together
        res = await ds.stream()
        items = await res.json()
    assert sorted(item["n"] for item in items) == list(range(40))
    assert res.up_to_date and not res.closed


async def test_create_head_and_conflicts(target: Target) -> None:
    url = target.url()
    async with await DurableStream.create(url, content_type="text/plain", ttl=3600, body="hello ") as ds:
        head = await ds.head()
        assert (head.content_type or "").startswith("text/plain") and head.ttl == 3600 and not head.closed
        same = await DurableStream.create(url, content_type="text/plain", ttl=3600, body="hello ")
        await same.aclose()  # the same configuration again is fine
        with pytest.raises(DurableStreamError) as info:
            await DurableStream.create(url, content_type="application/json")
        assert info.value.code == "CONFLICT_EXISTS" and info.value.status == 409
        await ds.append("world")
        assert await (await ds.stream()).text() == "hello world"
        assert (await ds.head()).offset == (await ds.stream(offset="now")).offset


async def test_binary_stream_bytes_round_trip_and_chunked_upload(target: Target) -> None:
    payload = bytes(range(256))
    async with await DurableStream.create(target.url(), content_type="application/octet-stream", body=payload[:10]) as ds:
        await ds.append(payload[10:100])

        async def source():
            yield payload[100:200]
            yield payload[200:]

        await ds.append_stream(source())
        assert await (await ds.stream()).body() == payload


async def test_resuming_from_an_offset_neither_repeats_nor_skips(target: Target) -> None:
    async with await DurableStream.create(target.url(), content_type="application/json") as ds:
        for i in range(3):
            await ds.append(i)
        first = await ds.stream()
        assert await first.json() == [0, 1, 2]
        for i in range(3, 6):
            await ds.append(i)
        rest = await ds.stream(offset=first.offset)
        assert await rest.json() == [3, 4, 5]
        tail = await ds.stream(offset="now")
        assert await tail.json() == [] and tail.up_to_date


async def test_close_is_eof_and_appends_after_it_fail(target: Target) -> None:
    async with await DurableStream.create(target.url(), content_type="application/json") as ds:
        await ds.append("a")
        result = await ds.close({"last": True})
        assert (await ds.close()).final_offset == result.final_offset  # a bare close is idempotent
        head = await ds.head()
        assert head.closed and head.offset == result.final_offset
        with pytest.raises(StreamClosedError) as info:
            await ds.append("late")
        assert info.value.final_offset == result.final_offset and info.value.code == "STREAM_CLOSED"
        with pytest.raises(StreamClosedError):
            await ds.close("another final message")
        res = await ds.stream(live="long-poll")
        assert await collect(res) == ["a", {"last": True}] and res.closed


async def test_delete_and_missing_streams(target: Target) -> None:
    ds = await DurableStream.create(target.url(), content_type="text/plain")
    await ds.delete()
    for attempt in (ds.head, ds.stream, lambda: ds.append("x")):
        with pytest.raises(DurableStreamError) as info:
            await attempt()
        assert info.value.code in ("NOT_FOUND", "GONE") and info.value.status in (404, 410)
    with pytest.raises(DurableStreamError) as info:
        await stream(target.url("missing"))
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(DurableStreamError) as info:
        await DurableStream.connect(target.url("missing"))
    assert info.value.code == "NOT_FOUND"
    await ds.aclose()


async def test_connect_learns_the_content_type(target: Target) -> None:
    url = target.url()
    await (await DurableStream.create(url, content_type="application/json")).aclose()
    async with await DurableStream.connect(url) as ds:
        assert ds.content_type is not None and ds.content_type.startswith("application/json")
        await ds.append([1, 2])  # encoded as one JSON message because of it
        assert await (await ds.stream()).json() == [[1, 2]]


async def test_fork_at_an_offset_and_a_sub_offset(target: Target) -> None:
    async with await DurableStream.create(target.url("src"), content_type="application/json") as src:
        start = (await src.head()).offset
        await src.append(1)
        await src.append(2)
        await src.append(3)
        fork = await src.fork(target.url("fork"), offset=start, sub_offset=1)
        await fork.append("own")
        assert await fork.read_json() == [1, "own"]
        assert await src.read_json() == [1, 2, 3]
        with pytest.raises(DurableStreamError) as info:
            await src.fork(target.url("fork"), offset="not-an-offset")
        assert info.value.code == "BAD_REQUEST"


# -- live reads -------------------------------------------------------------------


@pytest.mark.parametrize("live", ["long-poll", "sse", True])
async def test_live_json_follows_appends_until_eof(target: Target, live: Any) -> None:
    async with await DurableStream.create(target.url(), content_type="application/json", body=[0]) as ds:
        res = await stream(ds.url, live=live)
        got: list = []

        async def writer() -> None:
            await trio.sleep(0.1)
            await ds.append(1)
            await trio.sleep(0.6)  # past a long-poll timeout: the reader must keep waiting
            await ds.append([2, "two"])
            await ds.close(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            with trio.fail_after(10):
                got = await collect(res)
    assert got == [0, 1, [2, "two"], 3] and res.closed and res.up_to_date
    if live != "long-poll":
        assert res.headers.get("content-type", "").startswith("text/event-stream")


@pytest.mark.parametrize("live", ["sse", "long-poll", True])
async def test_live_binary_including_base64_sse(target: Target, live: Any) -> None:
    payload = bytes(range(256)) + b"\r\n\r\n\x00"
    async with await DurableStream.create(target.url(), content_type="application/octet-stream") as ds:
        res = await ds.stream(offset="now", live=live)
        got = bytearray()

        async def writer() -> None:
            await trio.sleep(0.1)
            await ds.append(payload[:100])
            await ds.append(payload[100:])
            await ds.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            with trio.fail_after(10):
                async for data in res.byte_stream():
                    got += data
    assert bytes(got) == payload and res.closed
    if live == "sse":
        assert res.headers.get("stream-sse-data-encoding", "").lower() == "base64"


async def test_subscribers_get_batches_with_resumable_offsets(target: Target) -> None:
    async with await DurableStream.create(target.url(), content_type="application/json", body=[1, 2]) as ds:
        res = await ds.stream(live="sse")
        batches: list = []

        async def callback(batch: Any) -> None:
            batches.append(batch)
            if len(batches) == 1:
                await ds.close(3)

        with trio.fail_after(10):
            await res.subscribe_json(callback)
        items = [i for b in batches for i in b.items]
        assert items == [1, 2, 3] and batches[-1].closed and batches[-1].up_to_date
        assert batches[-1].offset == res.offset == (await ds.head()).offset


# -- idempotent producer ------------------------------------------------------------


class LoseResponses(httpx.AsyncBaseTransport):
    """Forwards to the real server, then 'loses' the answer to chosen producer seqs (once each)."""

    def __init__(self, seqs: set[str]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seqs = set(seqs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        seq = request.headers.get("producer-seq")
        if seq in self.seqs:
            self.seqs.discard(seq)
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("response lost on the way back")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_producer_is_exactly_once_when_responses_are_lost(target: Target) -> None:
    client = Counting().client(LoseResponses({"0", "2"}))
    async with await DurableStream.create(target.url(), content_type="application/json", client=client) as ds:
        async with IdempotentProducer(ds, "writer-1", max_batch_bytes=16, linger_ms=1) as producer:
            for i in range(40):
                producer.append({"i": i})
            await producer.flush()
            stats = producer.statistics()
        items = await (await ds.stream()).json()
    assert items == [{"i": i} for i in range(40)]  # every message once, in order, despite resends
    # Seq 0 travels alone, so its lost answer is always for stored data: the resend is a 204.
    # (Seq 2's lost answer may have been a 409 for overtaking seq 1, so it may not be.)
    assert stats.duplicates >= 1


async def test_typescript_style_producer_delivers_every_message_exactly_once(target: Target) -> None:
    """No ``async with``, no ``await`` on append, answers lost on the way back: then flush and close."""
    client = Counting().client(LoseResponses({"0", "3"}))
    async with await DurableStream.create(target.url(), content_type="application/json", client=client) as ds:
        producer = IdempotentProducer(ds, "ts-style", max_batch_bytes=64, linger_ms=1)
        for i in range(200):
            producer.append({"i": i})
        await producer.flush()
        for i in range(200, 210):
            producer.append({"i": i})
        result = await producer.close()  # flushes the last ten first
        items = await (await ds.stream()).json()
        head = await ds.head()
    assert items == [{"i": i} for i in range(210)]
    assert head.closed and result.final_offset == head.offset


async def test_producer_epochs_fence_zombies_and_auto_claim(target: Target) -> None:
    async with await DurableStream.create(target.url(), content_type="application/json") as ds:
        async with IdempotentProducer(ds, "job", epoch=0) as old:
            old.append("old-1")
            await old.flush()
            async with IdempotentProducer(ds, "job", epoch=1) as new:
                new.append("new-1")
            old.append("zombie")
            with pytest.raises(StaleEpochError) as info:
                await old.flush()
            assert info.value.current_epoch == 1
        async with IdempotentProducer(ds, "job", auto_claim=True) as claimer:
            claimer.append("claimed")
            await claimer.flush()
            assert claimer.epoch == 2
            result = await claimer.close("done")
        assert await (await ds.stream()).json() == ["old-1", "new-1", "claimed", "done"]
        assert (await ds.head()).closed and result.final_offset == (await ds.head()).offset


# -- asyncio ----------------------------------------------------------------------


async def _asyncio_scenario(url: str) -> tuple[str, list, bytes]:
    library = sniffio.current_async_library()
    async with await DurableStream.create(url, content_type="application/json") as ds:
        await asyncio.gather(*(ds.append(i) for i in range(10)))
        res = await ds.stream(offset="-1", live="sse")

        async def writer() -> None:
            await asyncio.sleep(0.1)
            async with IdempotentProducer(ds, "asyncio-writer") as producer:
                for i in range(10, 20):
                    producer.append(i)
                await producer.close("end")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            with anyio.fail_after(10):
                items = await collect(res)
    async with await DurableStream.create(url + "-bin", content_type="application/octet-stream") as bds:
        bres = await bds.stream(live="sse")
        await bds.append(b"\x00\xff")
        await bds.close(b"!")
        with anyio.fail_after(10):
            data = b"".join(await collect(bres, "byte_stream"))
    return library, items, data


def test_the_client_under_asyncio(target: Target) -> None:
    library, items, data = asyncio.run(_asyncio_scenario(target.url("asyncio")))
    assert library == "asyncio"
    assert sorted(items[:10]) == list(range(10)) and items[10:] == [*range(10, 20), "end"]
    assert data == b"\x00\xff!"
