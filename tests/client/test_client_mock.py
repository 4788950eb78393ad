"""Client behaviour against an in-memory server (httpx.MockTransport): reads, retries, SSE, batching.

Trio tests use ``autojump_clock`` where the client sleeps (backoff,
Retry-After): virtual time makes a 7 s wait take no real time and lets the
test measure it exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

import anyio
import httpx
import pytest
import sniffio
import trio
import trio.testing

from client_harness import BASE, FakeServer, offset_of
from trio_streams.client import (
    Backoff, DurableStream, DurableStreamError, FetchError, StreamClosedError, stream,
)

URL = BASE + "s"
FAST = Backoff(initial_delay_s=0.01, max_delay_s=0.05, max_retries=5)


def params_of(requests: list[httpx.Request]) -> list[dict[str, str]]:
    return [dict(r.url.params) for r in requests]


# -- catch-up and resumption ----------------------------------------------------


async def test_catch_up_reads_in_pieces_until_up_to_date() -> None:
    fake = FakeServer(read_limit=3)
    fake.add(*range(10))
    res = await stream(URL, client=fake.client())
    assert await res.json() == list(range(10))
    assert (res.offset, res.up_to_date, res.closed) == (offset_of(10), True, False)
    # Each request starts where the previous answer said; catch-up never asks for live data.
    assert params_of(fake.reads()) == [{"offset": o} for o in ("-1", offset_of(3), offset_of(6), offset_of(9))]


async def test_transient_failures_mid_read_resume_from_the_last_offset(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer(read_limit=4)
    fake.add(*range(10))
    fake.faults.extend([
        None,
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.Response(500, content=b"oops"),
        httpx.ReadError("reset"),
    ])
    res = await stream(URL, client=fake.client())
    assert await res.json() == list(range(10))  # nothing lost, nothing twice
    offsets = [p["offset"] for p in params_of(fake.reads())]
    assert offsets == ["-1", *[offset_of(4)] * 5, offset_of(8)]


async def test_retry_after_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.add("a")
    fake.faults.append(httpx.Response(429, headers={"retry-after": "7"}))
    start = trio.current_time()
    res = await stream(URL, client=fake.client())
    assert trio.current_time() - start >= 7.0
    assert await res.json() == ["a"]


async def test_backoff_grows_and_retries_are_capped(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.faults.extend(httpx.Response(503) for _ in range(10))
    backoff = Backoff(initial_delay_s=1.0, multiplier=2.0, max_delay_s=3.0, max_retries=4)
    times: list[float] = []
    fake.faults = deque(lambda r, times=times: (times.append(trio.current_time()), httpx.Response(503))[1] for _ in range(10))
    with pytest.raises(FetchError) as info:
        await stream(URL, client=fake.client(), backoff=backoff)
    assert (info.value.status, info.value.code) == (503, "BUSY")
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 5  # one try and four retries
    for gap, step in zip(gaps, [1.0, 2.0, 3.0, 3.0]):
        assert step / 2 <= gap <= step + 1e-6  # jittered, capped at max_delay_s


async def test_network_failure_after_retries_is_a_fetch_error(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.faults.extend(httpx.ConnectError("refused") for _ in range(4))
    with pytest.raises(FetchError) as info:
        await stream(URL, client=fake.client(), backoff=Backoff(max_retries=3))
    assert (info.value.status, info.value.code) == (None, "NETWORK")
    assert len(fake.requests) == 4


@pytest.mark.parametrize(("status", "code"), [(404, "NOT_FOUND"), (401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (410, "GONE")])
async def test_refusals_are_typed_and_not_retried(status: int, code: str) -> None:
    fake = FakeServer()
    fake.faults.append(httpx.Response(status, json={"error": {"code": code, "message": "nope"}}))
    with pytest.raises(DurableStreamError) as info:
        await stream(URL, client=fake.client())
    assert (info.value.code, info.value.status) == (code, status)
    assert not isinstance(info.value, FetchError)
    assert len(fake.requests) == 1


# -- consumption ----------------------------------------------------------------


async def test_offset_advances_only_as_messages_are_handed_out() -> None:
    fake = FakeServer()
    fake.add("a", "b", "c")
    res = await stream(URL, client=fake.client())
    seen = []
    async for item in res.json_stream():
        seen.append(item)
        # Until the batch's last message is out, resuming from res.offset repeats rather than loses.
        assert res.offset == ("-1" if len(seen) < 3 else offset_of(3))
    assert seen == ["a", "b", "c"]


async def test_stopping_early_keeps_a_safe_resume_offset() -> None:
    fake = FakeServer(read_limit=2)
    fake.add(*range(6))
    res = await stream(URL, client=fake.client())
    async for item in res.json_stream():
        if item == 2:
            break
    assert res.offset == offset_of(2)  # 2 was handed out, but its batch (2, 3) was not finished
    rest = await (await stream(URL, res.offset, client=fake.client())).json()
    assert rest == [2, 3, 4, 5]


async def test_a_response_is_consumed_once() -> None:
    fake = FakeServer()
    fake.add(1)
    res = await stream(URL, client=fake.client())
    assert await res.json() == [1]
    with pytest.raises(DurableStreamError) as info:
        await res.json()
    assert info.value.code == "ALREADY_CONSUMED"


async def test_json_helpers_refuse_byte_streams() -> None:
    fake = FakeServer(content_type="application/octet-stream")
    fake.add(b"xy")
    res = await stream(URL, client=fake.client())
    with pytest.raises(TypeError):
        await res.json()


async def test_text_survives_characters_split_across_answers() -> None:
    fake = FakeServer(content_type="text/plain", read_limit=1)  # one byte per answer
    fake.add("é✓𝄞".encode())
    fake.closed = True
    res = await stream(URL, client=fake.client())
    assert [t async for t in res.text_stream()] == ["é", "✓", "𝄞"]
    assert res.closed
    res2 = await stream(URL, client=fake.client())
    assert await res2.text() == "é✓𝄞"


async def test_headers_and_params_may_be_callables_evaluated_per_request() -> None:
    fake = FakeServer(read_limit=1)
    fake.add(1, 2, 3)
    tokens = iter(f"t{i}" for i in range(100))

    async def tenant() -> str:
        await trio.sleep(0)
        return "acme"

    res = await stream(URL, headers={"authorization": lambda: f"Bearer {next(tokens)}", "x-static": "s"},
                       params={"tenant": tenant, "skip": None}, client=fake.client())
    assert await res.json() == [1, 2, 3]
    reads = fake.reads()
    assert [r.headers["authorization"] for r in reads] == ["Bearer t0", "Bearer t1", "Bearer t2"]
    assert all(r.headers["x-static"] == "s" for r in reads)
    assert [list(r.url.params.keys()) for r in reads] == [["offset", "tenant"]] * 3  # sorted; None dropped
    with pytest.raises(ValueError):
        await stream(URL, params={"offset": "5"}, client=fake.client())


# -- live: long-poll --------------------------------------------------------------


async def test_long_poll_follows_offsets_echoes_cursors_and_stops_at_eof() -> None:
    fake = FakeServer()
    fake.add("a")
    res = await stream(URL, live="long-poll", client=fake.client())
    seen: list = []

    async def writer() -> None:
        await trio.sleep(0.3)  # long enough for one empty long-poll (204) first
        fake.add("b", "c")
        await trio.sleep(0.05)
        fake.closed = True
        fake.add("d")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async for item in res.json_stream():
            seen.append(item)
    assert seen == ["a", "b", "c", "d"] and res.closed
    reads = fake.reads()
    polls = [r for r in reads if r.url.params.get("live") == "long-poll"]
    assert len(polls) >= 3
    # Each poll echoes the cursor the previous poll was answered with (the fake hands out a new one each time).
    cursors = [r.url.params.get("cursor") for r in polls]
    assert cursors[0] is None and all(cursors[1:]) and len(set(cursors)) == len(cursors)
    offsets = [r.url.params["offset"] for r in polls]
    assert offsets == sorted(offsets) and offsets[-1] == offset_of(3)


async def test_subscribe_json_delivers_batches_with_positions() -> None:
    fake = FakeServer()
    fake.add(1, 2)
    res = await stream(URL, live="long-poll", client=fake.client())
    batches = []

    async def callback(batch: object) -> None:
        batches.append(batch)
        if len(batches) == 1:
            fake.closed = True
            fake.add(3)

    await res.subscribe_json(callback)  # returns at EOF
    assert [(b.items, b.offset, b.up_to_date, b.closed) for b in batches] == [
        ([1, 2], offset_of(2), True, False), ([3], offset_of(3), True, True)]


async def test_subscribe_bytes_with_a_plain_callback() -> None:
    fake = FakeServer(content_type="application/octet-stream", read_limit=3)
    fake.add(b"abcdefg")
    fake.closed = True
    res = await stream(URL, live="long-poll", client=fake.client())
    seen: list = []
    await res.subscribe_bytes(lambda batch: seen.append((batch.data, batch.items, batch.offset, batch.closed)))
    assert seen == [(b"abc", [b"abc"], offset_of(3), False), (b"def", [b"def"], offset_of(6), False),
                    (b"g", [b"g"], offset_of(7), True)]


async def test_catch_up_only_session_does_not_wait_for_more() -> None:
    fake = FakeServer()
    fake.add(1)
    res = await stream(URL, live=False, client=fake.client())
    assert [m async for m in res.json_stream()] == [1]
    assert len(fake.reads()) == 1


# -- live: SSE --------------------------------------------------------------------


async def test_sse_byte_at_a_time_reconnects_from_the_last_offset_without_loss_or_repeat() -> None:
    fake = FakeServer(sse_byte_at_a_time=True)
    fake.add("a", "b")
    fake.sse_breaks.extend([True])  # the first SSE connection breaks inside its first data event
    res = await stream(URL, live="sse", backoff=FAST, client=fake.client())
    seen: list = []

    async def writer() -> None:
        await trio.sleep(0.05)
        fake.add("c", {"d": "é"})
        await trio.sleep(0.3)  # past the fake's idle close: the client must reconnect at once
        fake.closed = True
        fake.add("e")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async for item in res.json_stream():
            seen.append(item)
    assert seen == ["a", "b", "c", {"d": "é"}, "e"]
    sse = [r for r in fake.reads() if r.url.params.get("live") == "sse"]
    assert len(sse) >= 3
    # The broken connection's half event was dropped; the next one restarted at the last control offset.
    assert sse[0].url.params["offset"] == offset_of(2) and sse[1].url.params["offset"] == offset_of(2)
    # Every reconnect echoes the cursor of the last control event (the first had none to echo).
    assert all(r.url.params.get("cursor") for r in sse[1:])


async def test_sse_decodes_base64_for_binary_streams() -> None:
    fake = FakeServer(content_type="application/octet-stream")
    res = await stream(URL, live="sse", client=fake.client())
    payload = bytes(range(256))

    async def writer() -> None:
        await trio.sleep(0.05)
        fake.add(payload)
        await trio.sleep(0.05)
        fake.closed = True
        fake.add(b"\x00\r\n")

    got = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async for data in res.byte_stream():
            got += data
    assert got == payload + b"\x00\r\n"
    assert any(r.url.params.get("live") == "sse" for r in fake.reads())


@pytest.mark.parametrize(("content_type", "mode"), [("application/json", "sse"), ("text/plain", "sse"),
                                                   ("application/octet-stream", "long-poll")])
async def test_live_true_picks_the_mode_by_content_type(content_type: str, mode: str) -> None:
    fake = FakeServer(content_type=content_type)
    fake.closed = False
    res = await stream(URL, live=True, client=fake.client())

    async def closer() -> None:
        await trio.sleep(0.05)
        fake.closed = True
        fake.add(b"x" if content_type != "application/json" else "x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closer)
        async for _ in res.byte_stream():
            pass
    assert [r.url.params.get("live") for r in fake.reads()][1:] == [mode] * (len(fake.reads()) - 1)


async def test_auto_mode_polls_when_the_answer_is_not_an_event_stream() -> None:
    fake = FakeServer()
    fake.add(1)

    def not_sse(request: httpx.Request) -> httpx.Response | None:
        if request.url.params.get("live") == "sse":
            return httpx.Response(200, content=b"[]", headers={"content-type": "application/json"})
        return None

    fake.faults.extend(not_sse for _ in range(10))
    res = await stream(URL, live=True, client=fake.client())
    fake.closed = True
    fake.add(2)
    assert [m async for m in res.json_stream()] == [1, 2]
    assert [r.url.params.get("live") for r in fake.reads()] == [None, "sse", "long-poll"]


async def test_auto_mode_falls_back_to_long_poll_when_sse_connections_keep_dying(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.add(1)

    def empty_sse(request: httpx.Request) -> httpx.Response | None:
        if request.url.params.get("live") == "sse":  # a buffering proxy: the connection ends with nothing
            return httpx.Response(200, content=b"", headers={"content-type": "text/event-stream"})
        return None

    fake.faults.extend(empty_sse for _ in range(10))
    res = await stream(URL, live=True, client=fake.client())
    fake.closed = True
    fake.add(2)
    assert [m async for m in res.json_stream()] == [1, 2]
    modes = [r.url.params.get("live") for r in fake.reads()]
    assert modes == [None, "sse", "sse", "sse", "long-poll"]


async def test_explicit_sse_reconnects_with_backoff_and_gives_up_eventually(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.add(1)
    fake.faults.extend([None] + [httpx.ReadError("reset")] * 20)
    res = await stream(URL, live="sse", client=fake.client(), backoff=Backoff(max_retries=2))
    with pytest.raises(FetchError):
        async for _ in res.json_stream():
            pass
    assert res.offset == offset_of(1)  # what was delivered stays delivered; resume from here


async def test_explicit_sse_on_a_server_without_sse_is_an_error(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    fake.add(1)
    fake.faults.extend([None] + [httpx.Response(200, content=b"x", headers={"content-type": "text/plain"})] * 5)
    res = await stream(URL, live="sse", client=fake.client())
    with pytest.raises(DurableStreamError) as info:
        async for _ in res.json_stream():
            pass
    assert info.value.code == "SSE_NOT_SUPPORTED"


# -- writes: batching -------------------------------------------------------------


class Gate:
    """Holds POSTs until opened, so a test can pile appends up behind one in flight."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake, self.open, self.posts = fake, trio.Event(), []
        self._handle = fake.handle

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts.append(await request.aread())
            await self.open.wait()
        return await self._handle(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


async def start_in_order(nursery: trio.Nursery, fn: object, *args: object) -> None:
    nursery.start_soon(fn, *args)
    await trio.testing.wait_all_tasks_blocked()


async def test_concurrent_json_appends_coalesce_into_one_post_in_call_order() -> None:
    fake = FakeServer()
    gate = Gate(fake)
    ds = DurableStream(URL, content_type="application/json", client=gate.client())
    results: dict = {}

    async def append(value: object) -> None:
        results[json.dumps(value)] = await ds.append(value)

    async with trio.open_nursery() as nursery:
        for value in ("first", {"n": 1}, [1, 2], None, "last"):
            await start_in_order(nursery, append, value)
        gate.open.set()
    assert gate.posts == [b'["first"]', b'[{"n":1},[1,2],null,"last"]']
    assert fake.body(0, 5) == b'["first",{"n":1},[1,2],null,"last"]'  # a list value stays one message
    assert results['"first"'] == offset_of(1) and results['"last"'] == offset_of(5) == results["null"]


async def test_byte_appends_concatenate_and_respect_the_batch_limit() -> None:
    fake = FakeServer(content_type="application/octet-stream")
    gate = Gate(fake)
    ds = DurableStream(URL, content_type="application/octet-stream", client=gate.client(), batch_bytes_max=4)
    async with trio.open_nursery() as nursery:
        for piece in (b"0", b"ab", b"cd", b"e", b"fgh"):
            await start_in_order(nursery, ds.append, piece)
        gate.open.set()
    assert gate.posts == [b"0", b"abcd", b"efgh"]


async def test_appends_with_their_own_seq_travel_alone() -> None:
    fake = FakeServer(content_type="text/plain")
    gate = Gate(fake)
    ds = DurableStream(URL, content_type="text/plain", client=gate.client())
    async with trio.open_nursery() as nursery:
        await start_in_order(nursery, ds.append, "a")
        await start_in_order(nursery, ds.append, "b")
        nursery.start_soon(lambda: ds.append("c", seq="0001"))
        await trio.testing.wait_all_tasks_blocked()
        await start_in_order(nursery, ds.append, "d")
        gate.open.set()
    assert gate.posts == [b"a", b"b", b"c", b"d"]
    seqs = [r.headers.get("stream-seq") for r in fake.requests if r.method == "POST"]
    assert seqs == [None, None, "0001", None]


async def test_a_failed_batch_fails_every_append_in_it() -> None:
    fake = FakeServer()
    gate = Gate(fake)
    fake.faults.extend([None, httpx.Response(400, json={"error": {"code": "BAD_REQUEST", "message": "bad"}})])
    ds = DurableStream(URL, content_type="application/json", client=gate.client())
    outcomes: list = []

    async def append(value: object) -> None:
        try:
            outcomes.append(await ds.append(value))
        except DurableStreamError as exc:
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for value in range(4):
            await start_in_order(nursery, append, value)
        gate.open.set()
    assert outcomes == [offset_of(1), "BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST"]
    assert await ds.append("after") == offset_of(2)  # the queue keeps working


async def test_a_cancelled_waiting_append_is_not_sent() -> None:
    fake = FakeServer()
    gate = Gate(fake)
    ds = DurableStream(URL, content_type="application/json", client=gate.client())
    async with trio.open_nursery() as nursery:
        await start_in_order(nursery, ds.append, 1)
        with trio.CancelScope() as scope:
            nursery.start_soon(ds.append, 2)
        scope.cancel()
        cancel_scope = trio.CancelScope()

        async def doomed() -> None:
            with cancel_scope:
                await ds.append("doomed")

        await start_in_order(nursery, doomed)
        await start_in_order(nursery, ds.append, 3)
        cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.open.set()
    assert b"doomed" not in b"".join(gate.posts)
    assert json.loads(fake.body(0, len(fake.records)))[0] == 1
    assert "doomed" not in json.loads(fake.body(0, len(fake.records)))


async def test_a_cancelled_sender_hands_over_and_tells_its_passengers() -> None:
    fake = FakeServer()
    gate = Gate(fake)
    ds = DurableStream(URL, content_type="application/json", client=gate.client())
    errors: list = []

    async def passenger(value: object) -> None:
        try:
            await ds.append(value)
        except FetchError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        sender_scope = trio.CancelScope()

        async def sender() -> None:
            with sender_scope:
                await ds.append("a")

        await start_in_order(nursery, sender)
        await start_in_order(nursery, passenger, "b")
        sender_scope.cancel()  # the POST carrying "a" is abandoned mid-flight
        await trio.testing.wait_all_tasks_blocked()
        gate.open.set()
    assert errors == []  # "b" was only queued, never in the cancelled POST: it went in the next one
    assert gate.posts[-1] == b'["b"]'


async def test_plain_appends_are_resent_only_when_that_cannot_duplicate(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeServer()
    ds = DurableStream(URL, content_type="application/json", client=fake.client())
    fake.faults.extend([httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(429)])
    assert await ds.append("retried") == offset_of(1)  # never reached the server, or refused undone
    fake.faults.append(httpx.ReadError("reset after sending"))
    with pytest.raises(FetchError):
        await ds.append("maybe")  # may have been applied: the caller decides
    fake.faults.append(httpx.Response(500))
    with pytest.raises(FetchError) as info:
        await ds.append("maybe again")
    assert info.value.status == 500
    assert sum(r.method == "POST" for r in fake.requests) == 6


async def test_append_to_a_closed_stream_and_close_results() -> None:
    fake = FakeServer()
    ds = DurableStream(URL, content_type="application/json", client=fake.client())
    await ds.append(1)
    result = await ds.close({"bye": True})
    assert result.final_offset == offset_of(2) and fake.closed
    last = fake.requests[-1]
    assert (last.headers["stream-closed"], last.content) == ("true", b'[{"bye":true}]')
    fake.faults.append(httpx.Response(409, headers={"stream-closed": "true", "stream-next-offset": offset_of(2)}))
    with pytest.raises(StreamClosedError) as info:
        await ds.append(2)
    assert info.value.final_offset == offset_of(2)


async def test_content_type_is_learnt_with_head_before_the_first_append() -> None:
    fake = FakeServer(content_type="application/json")
    ds = DurableStream(URL, client=fake.client())
    await ds.append({"a": 1})
    assert [r.method for r in fake.requests] == ["HEAD", "POST"]
    assert fake.requests[1].headers["content-type"] == "application/json"


async def test_append_stream_is_one_chunked_post() -> None:
    fake = FakeServer(content_type="text/plain")
    ds = DurableStream(URL, content_type="text/plain", client=fake.client())

    async def source():
        for part in ("alpha ", b"beta ", "", "gamma"):
            yield part

    assert await ds.append_stream(source()) == offset_of(16)
    (post,) = [r for r in fake.requests if r.method == "POST"]
    assert post.headers.get("transfer-encoding") == "chunked" and post.content == b"alpha beta gamma"


async def test_create_sends_its_configuration() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, headers={"content-type": "application/json", "stream-next-offset": offset_of(2)})

    ds = await DurableStream.create(URL, content_type="application/json", ttl=60, body=[{"a": 1}, 2], closed=True,
                                    client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    (put,) = seen
    assert put.method == "PUT" and put.content == b'[{"a":1},2]'
    assert (put.headers["stream-ttl"], put.headers["stream-closed"], put.headers["content-type"]) == ("60", "true", "application/json")
    assert ds.content_type == "application/json"
    with pytest.raises(DurableStreamError) as info:
        await DurableStream.create(URL, client=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(409))))
    assert info.value.code == "CONFLICT_EXISTS"


# -- the same client under asyncio ----------------------------------------------


def test_reading_and_batched_writing_under_asyncio() -> None:
    async def scenario() -> tuple[str, list, list[bytes]]:
        library = sniffio.current_async_library()
        fake = FakeServer(read_limit=2)
        posts: list[bytes] = []

        async def handle(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                posts.append(await request.aread())
                await asyncio.sleep(0.01)  # keep the first POST in flight while the others queue
            return await fake.handle(request)

        client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        ds = DurableStream(URL, content_type="application/json", client=client)
        await asyncio.gather(*(ds.append(i) for i in range(5)))
        fake.faults.append(httpx.Response(503))  # a retry sleeps through anyio on asyncio too
        res = await ds.stream(live="long-poll")
        items = []
        async for item in res.json_stream():
            items.append(item)
            if len(items) == 5:
                fake.closed = True
                fake.add("end")
        return library, items, posts

    library, items, posts = asyncio.run(scenario())
    assert library == "asyncio"
    assert items == [0, 1, 2, 3, 4, "end"]
    assert len(posts) == 2 and json.loads(posts[1]) == [1, 2, 3, 4]


def test_sse_under_asyncio() -> None:
    async def scenario() -> list:
        fake = FakeServer()
        fake.add("x")
        res = await stream(URL, live="sse", client=fake.client())

        async def writer() -> None:
            await anyio.sleep(0.05)
            fake.closed = True
            fake.add("y")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            return [m async for m in res.json_stream()]

    assert asyncio.run(scenario()) == ["x", "y"]
