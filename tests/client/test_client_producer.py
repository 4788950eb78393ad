"""IdempotentProducer against a fake that validates producer headers as PROTOCOL.md 5.2.1 says.

The fake can lose a response after storing the data (the retry must come
back as a 204 duplicate), hold requests so later ones overtake them (409
gaps the producer must heal), and start with another session's state
(stale or reused epochs).
"""

from __future__ import annotations

import asyncio
import gc
import json
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import sniffio
import trio
import trio.testing

from client_harness import BASE
from trio_streams.client import (
    Backoff, DurableStream, DurableStreamError, IdempotentProducer, ProducerBufferFullError, SequenceGapError,
    StaleEpochError, StreamClosedError,
)

URL = BASE + "p"


@dataclass
class ProducerFake:
    messages: list = field(default_factory=list)
    epoch: int = -1  # no state yet
    last_seq: int = -1
    closed: bool = False
    closed_by: tuple | None = None
    posts: list[tuple[int, int, list]] = field(default_factory=list)  # (epoch, seq, messages) as received
    lose_response_once: set = field(default_factory=set)  # seqs whose first answer is lost after storing
    hold: dict = field(default_factory=dict)  # seq -> trio.Event to wait for before processing
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.0  # per request, so concurrent requests really overlap

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"content-type": "application/json", "stream-next-offset": self.offset()})
        body = await request.aread()
        epoch, seq = int(request.headers["producer-epoch"]), int(request.headers["producer-seq"])
        values = json.loads(body) if body else []
        self.posts.append((epoch, seq, values))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.delay_s)
            if seq in self.hold:
                await self.hold.pop(seq).wait()
            response = self.decide(epoch, seq, values, request.headers.get("stream-closed") == "true")
        finally:
            self.in_flight -= 1
        if (epoch, seq) in self.lose_response_once:
            self.lose_response_once.discard((epoch, seq))
            raise httpx.ReadError("response lost after the data was stored")
        return response

    def offset(self) -> str:
        return f"{len(self.messages):016d}"

    def decide(self, epoch: int, seq: int, values: list, close: bool) -> httpx.Response:
        if epoch < self.epoch:
            return httpx.Response(403, headers={"producer-epoch": str(self.epoch)})
        if epoch > self.epoch:
            if seq != 0:
                return httpx.Response(400)
            self.epoch, self.last_seq = epoch, -1
        if seq <= self.last_seq:
            return httpx.Response(204, headers={"producer-epoch": str(epoch), "producer-seq": str(self.last_seq),
                                                "stream-next-offset": self.offset()})
        if seq > self.last_seq + 1:
            return httpx.Response(409, headers={"producer-expected-seq": str(self.last_seq + 1), "producer-received-seq": str(seq)})
        if self.closed:
            return httpx.Response(409, headers={"stream-closed": "true", "stream-next-offset": self.offset()})
        self.last_seq = seq
        self.messages.extend(values)
        headers = {"producer-epoch": str(epoch), "producer-seq": str(seq), "stream-next-offset": self.offset()}
        if close:
            self.closed = True
            headers["stream-closed"] = "true"
        return httpx.Response(200, headers=headers)


def handle_for(fake: ProducerFake) -> DurableStream:
    return DurableStream(URL, content_type="application/json", client=fake.client(),
                         backoff=Backoff(initial_delay_s=0.001, max_delay_s=0.01))


async def test_batches_are_stored_exactly_once_in_order() -> None:
    fake = ProducerFake()
    async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=20, max_in_flight=3) as producer:
        for i in range(50):
            producer.append({"i": i})
        await producer.flush()
        stats = producer.statistics()
    assert fake.messages == [{"i": i} for i in range(50)]
    by_seq: dict[int, list] = {}
    for _, seq, values in fake.posts:  # resends after overtaking repeat a seq, always with the same batch
        assert by_seq.setdefault(seq, values) == values
        assert len(json.dumps(values, separators=(",", ":"))) <= 20
    assert sorted(by_seq) == list(range(len(by_seq)))
    assert fake.max_in_flight > 1  # pipelined, once the epoch was established
    assert stats.batches_acked == len(by_seq) and stats.in_flight_batches == 0 and stats.pending_messages == 0


async def test_the_first_batch_of_an_epoch_travels_alone() -> None:
    fake = ProducerFake()
    gate = trio.Event()
    fake.hold[0] = gate
    async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=4, max_in_flight=5) as producer:
        for i in range(5):
            producer.append(i)
        await trio.testing.wait_all_tasks_blocked()
        assert producer.in_flight_count == 1 and len(fake.posts) == 1
        gate.set()
        await producer.flush()
    assert fake.messages == [0, 1, 2, 3, 4]


async def test_a_lost_response_is_retried_and_deduplicated() -> None:
    fake = ProducerFake(lose_response_once={(0, 0), (0, 1)})
    async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=2) as producer:
        for i in range(6):
            producer.append(i)
        await producer.flush()
        stats = producer.statistics()
    assert fake.messages == list(range(6))  # retried, yet each message once
    assert stats.duplicates == 2


async def test_overtaken_requests_are_resent_after_the_earlier_ones_land() -> None:
    fake = ProducerFake()
    async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=4, max_in_flight=4, linger_ms=0) as producer:
        producer.append(0)
        await producer.flush()  # epoch established: pipelining from here
        gate = trio.Event()
        fake.hold[1] = gate  # seq 1 is slow; seqs 2, 3 arrive first and see a gap
        for i in range(1, 4):
            producer.append(i)
            await trio.testing.wait_all_tasks_blocked()
        assert producer.in_flight_count == 3
        gate.set()
        await producer.flush()
        stats = producer.statistics()
    assert fake.messages == [0, 1, 2, 3]
    assert stats.gap_resends >= 2
    statuses = [(seq, values) for _, seq, values in fake.posts]
    assert statuses.count((2, [2])) == 2 and statuses.count((3, [3])) == 2


async def test_a_real_gap_is_an_error() -> None:
    fake = ProducerFake(epoch=0, last_seq=-1)
    fake_decide = fake.decide

    def forget(epoch: int, seq: int, values: list, close: bool) -> httpx.Response:
        if seq == 1:  # the server lost its producer state: it expects 0 again
            fake.last_seq = -1
        return fake_decide(epoch, seq, values, close)

    fake.decide = forget  # type: ignore[method-assign]
    errors: list = []
    with pytest.raises(SequenceGapError) as info:
        async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=2, on_error=errors.append) as producer:
            for i in range(3):
                producer.append(i)
                await producer.flush()
    assert (info.value.expected_seq, info.value.received_seq) == (0, 1)
    assert errors == [info.value]
    assert fake.messages == [0]


async def test_stale_epoch_fences_the_producer() -> None:
    fake = ProducerFake(epoch=3, last_seq=10)
    async with IdempotentProducer(handle_for(fake), "p", epoch=1) as producer:
        producer.append("zombie")
        with pytest.raises(StaleEpochError) as info:
            await producer.flush()
        assert info.value.current_epoch == 3
        with pytest.raises(StaleEpochError):
            producer.append("more")
    assert fake.messages == []


async def test_auto_claim_takes_the_next_epoch_and_renumbers() -> None:
    fake = ProducerFake(epoch=3, last_seq=10)
    async with IdempotentProducer(handle_for(fake), "p", auto_claim=True, max_batch_bytes=4, max_in_flight=3) as producer:
        for i in range(6):
            producer.append(i)
        await producer.flush()
        assert producer.epoch == 4
    assert fake.messages == list(range(6))
    accepted = [(e, s) for e, s, _ in fake.posts if e == 4]
    assert accepted[0] == (4, 0) and sorted(set(accepted)) == [(4, s) for s in range(len(set(accepted)))]


async def test_a_session_reusing_an_epoch_is_detected_instead_of_losing_data() -> None:
    fake = ProducerFake(epoch=0, last_seq=5)  # a previous run already wrote seqs 0..5 in epoch 0
    with pytest.raises(StaleEpochError):
        async with IdempotentProducer(handle_for(fake), "p") as producer:
            producer.append("new")
    assert fake.messages == []
    async with IdempotentProducer(handle_for(fake), "p", auto_claim=True) as producer:
        producer.append("new")
    assert fake.messages == ["new"] and fake.epoch == 1


async def test_close_flushes_then_closes_idempotently() -> None:
    fake = ProducerFake()
    async with IdempotentProducer(handle_for(fake), "p") as producer:
        producer.append(1)
        fake.lose_response_once.add((0, 1))  # the close's answer is lost: the retry must still succeed
        result = await producer.close({"final": True})
    assert fake.messages == [1, {"final": True}] and fake.closed
    assert result.final_offset == fake.offset()
    closes = [p for p in fake.posts if p[1] == 1]
    assert len(closes) == 2


async def test_a_closed_stream_stops_the_producer() -> None:
    fake = ProducerFake(closed=True)
    async with IdempotentProducer(handle_for(fake), "p") as producer:
        producer.append(1)
        with pytest.raises(StreamClosedError):
            await producer.flush()


async def test_linger_collects_appends_into_one_batch(autojump_clock: trio.abc.Clock) -> None:
    fake = ProducerFake()
    async with IdempotentProducer(handle_for(fake), "p", linger_ms=50) as producer:
        for i in range(3):
            producer.append(i)
            await trio.sleep(0.01)
        assert fake.posts == []  # still lingering
        await trio.sleep(0.05)
        await trio.testing.wait_all_tasks_blocked()
        assert [values for _, _, values in fake.posts] == [[0, 1, 2]]


async def test_a_full_buffer_refuses_the_message_and_drain_makes_room() -> None:
    fake = ProducerFake()
    gate = trio.Event()
    fake.hold[0] = gate
    # One-byte batches: each append is sealed at once; buffered (unsent) bytes may reach 3.
    async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=1, max_buffered_bytes=3) as producer:
        producer.append(0)  # in flight, held by the fake
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2, 3):
            producer.append(i)
        with pytest.raises(ProducerBufferFullError) as info:
            producer.append(4)
        assert info.value.code == "BUFFER_FULL" and producer.pending_count == 3  # refused, not queued
        drained = False

        async def drain() -> None:
            nonlocal drained
            await producer.drain()
            drained = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await trio.testing.wait_all_tasks_blocked()
            assert not drained
            gate.set()
        assert drained
        producer.append(4)
    assert fake.messages == [0, 1, 2, 3, 4]


async def test_typescript_style_without_async_with_or_await_delivers_everything() -> None:
    """The TypeScript shape: construct, append without await, then flush and close."""
    fake = ProducerFake(lose_response_once={(0, 0), (0, 3)}, delay_s=0.001)
    producer = IdempotentProducer(handle_for(fake), "p", max_batch_bytes=12, max_in_flight=3)
    for i in range(40):
        producer.append({"i": i})
    assert fake.posts == [] and producer.pending_count == 40  # queued, nothing sent before flush
    await producer.flush()
    stats = producer.statistics()
    assert fake.messages == [{"i": i} for i in range(40)]
    assert stats.pending_messages == 0 and stats.in_flight_batches == 0 and stats.duplicates >= 1
    assert fake.max_in_flight > 1  # an inline flush still pipelines
    producer.append("last")
    result = await producer.close()  # flushes first, then closes
    assert fake.messages[-1] == "last" and fake.closed and result.final_offset == fake.offset()
    with pytest.raises(DurableStreamError):
        producer.append("after close")


async def test_close_without_flush_or_async_with_sends_first() -> None:
    fake = ProducerFake()
    producer = IdempotentProducer(handle_for(fake), "p")
    producer.append(1)
    producer.append(2)
    await producer.close({"final": True})
    assert fake.messages == [1, 2, {"final": True}] and fake.closed


async def test_failures_without_async_with_are_raised_by_flush() -> None:
    fake = ProducerFake(epoch=3, last_seq=10)
    producer = IdempotentProducer(handle_for(fake), "p", epoch=1)
    producer.append("zombie")
    with pytest.raises(StaleEpochError):
        await producer.flush()
    with pytest.raises(StaleEpochError):
        await producer.close()
    assert fake.messages == [] and not fake.closed


async def test_a_cancelled_inline_flush_is_finished_by_the_next(autojump_clock: trio.abc.Clock) -> None:
    fake = ProducerFake(lose_response_once={(0, 1)})
    fake.hold[2] = trio.Event()  # never set: seq 2 hangs until the flush gives up
    producer = IdempotentProducer(handle_for(fake), "p", max_batch_bytes=2, max_in_flight=2)
    for i in range(6):
        producer.append(i)
    with trio.move_on_after(5):
        await producer.flush()
    assert fake.messages == [0, 1, 2, 3] and producer.pending_count == 2  # seq 2's send was cancelled, not lost
    await producer.flush()
    assert fake.messages == list(range(6))
    assert sorted({seq for _, seq, _ in fake.posts}) == [0, 1, 2]  # seq 2 resent as itself


async def test_without_a_known_content_type_append_fails_loudly_until_the_producer_asks() -> None:
    fake = ProducerFake()
    ds = DurableStream(URL, client=fake.client())  # a cold handle: no content type yet
    producer = IdempotentProducer(ds, "p")
    with pytest.raises(DurableStreamError) as info:
        producer.append({"a": 1})
    assert info.value.code == "CONTENT_TYPE_UNKNOWN"
    async with producer:  # entering asks the server (HEAD)
        producer.append({"a": 1})
    assert fake.messages == [{"a": 1}]
    with pytest.raises(ValueError):
        IdempotentProducer(handle_for(ProducerFake()), "")


def test_a_producer_dropped_with_unsent_messages_warns() -> None:
    producer = IdempotentProducer(DurableStream(URL, content_type="application/json"), "p")
    producer.append(1)
    with pytest.warns(ResourceWarning, match="1 unacknowledged"):
        del producer
        gc.collect()


def test_producer_under_asyncio() -> None:
    async def scenario() -> tuple[str, ProducerFake]:
        fake = ProducerFake(lose_response_once={(0, 1)}, delay_s=0.002)
        async with IdempotentProducer(handle_for(fake), "p", max_batch_bytes=10, max_in_flight=3) as producer:
            for i in range(30):
                producer.append(i)
            await producer.close()
        return sniffio.current_async_library(), fake

    library, fake = asyncio.run(scenario())
    assert library == "asyncio"
    assert fake.messages == list(range(30)) and fake.closed
    assert fake.max_in_flight > 1
