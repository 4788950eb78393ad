"""Checked by mypy (``make test``), never run: the client's types as user code sees them.

``assert_type`` lines fail the type check if a signature loses precision
(an ``Any`` where a JSON item type should flow through). The ``type:
ignore`` lines mark mistakes the types must keep catching: strict mypy
reports an ignore that is no longer needed, so if one of those mistakes
ever type-checks, this file fails.
"""

from __future__ import annotations

from typing import TypedDict, assert_type

from trio_streams.client import (
    CloseResult, DurableStream, HeadResult, IdempotentProducer, JsonBatch, OffsetTrimmedError, RetryOpts,
    StreamResponse, TrimmedGap, stream,
)
from trio_streams.client import sync


class Event(TypedDict):
    kind: str


async def async_reads(url: str) -> None:
    res: StreamResponse[Event] = await stream(url, live="sse", on_error=lambda error: RetryOpts(headers={"x": "y"}))
    assert_type(await res.json(), list[Event])
    async for event in res.json_stream():
        assert_type(event, Event)
    async for batch in res.json_batches():
        assert_type(batch, JsonBatch[Event])
        assert_type(batch.items, list[Event])
    async for text in res.text_stream():
        assert_type(text, str)
    try:
        await stream(url, offset="0_0")
    except OffsetTrimmedError as error:
        assert_type(error.earliest_offset, str)

    async def lost(gap: TrimmedGap) -> None:
        assert_type(gap.to_offset, str)

    await stream(url, live=True, on_trimmed=lost)
    await stream(url, on_trimmed=lambda gap: print(gap.from_offset))
    await stream(url, on_trimmed="resume")  # type: ignore[arg-type]


async def async_writes(url: str) -> None:
    ds = await DurableStream.create(url, content_type="application/json")
    assert_type(await ds.append({"kind": "x"}), str | None)
    assert_type(await ds.head(), HeadResult)
    assert_type(await ds.fork(url + "-fork", offset="0", sub_offset=1), DurableStream)
    producer = IdempotentProducer(ds, "writer")
    assert_type(producer.append({"kind": "x"}), None)
    await producer.append({"kind": "x"})  # type: ignore[func-returns-value, misc]
    assert_type(await producer.close(), CloseResult)


def sync_usage(url: str) -> None:
    stream_ = sync.DurableStream(url=url)
    assert_type(stream_.read(live=False), str)
    res: sync.StreamResponse[Event] = sync.stream(url, live=True)
    for event in res.json_stream():
        assert_type(event, Event)
    sync.stream(url, on_trimmed=lambda gap: print(gap.to_offset))
    assert_type(stream_.append_stream(open(__file__, "rb")), str | None)
    producer = sync.IdempotentProducer(stream_, "writer", linger_ms=1, auto_claim=True)
    assert_type(producer.append("x"), None)
    sync.IdempotentProducer(stream_, "writer", linger=1)  # type: ignore[call-arg]
    assert_type(producer.close(), CloseResult)
