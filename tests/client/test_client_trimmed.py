"""The client meets retention: reads below a stream's earliest retained offset, on a real server.

Streams here are created with a 64-byte budget (``Trio-Streams-Retention-Max-Bytes``)
on a server that trims in 1-byte steps, so every append past the budget trims
the stream to its newest message. ``trimmed_past`` waits (polling) until that
trim is durable, so each test knows the earliest offset before it reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import Server, deadline_poll, serving
from test_client_cli import cli
from trio_streams.client import DurableStream, DurableStreamError, OffsetTrimmedError, TrimmedGap, stream
from trio_streams.client import sync
from trio_streams.client._protocol import trimmed_gap

BUDGET_BYTES = 64
EARLIEST = "trio-streams-earliest-offset"
# Each message is more than half the budget: a trim keeps only the newest one.
FIRST = {"n": 0, "pad": "a" * 40}
LATER = [{"n": i, "pad": "b" * 40} for i in range(1, 5)]


@pytest.fixture(scope="module")
def trimming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("trim"), [], env={"TRIO_STREAMS_RETENTION_TRIM_STEP_BYTES": "1"})


def position(offset: str) -> int:
    return int(offset.rpartition("_")[2])


def new_stream(server: Server, name: str) -> tuple[str, str]:
    """A JSON stream holding FIRST under the budget; returns its URL and the offset after FIRST."""
    url = server.stream_url(f"trimmed/{name}-{uuid.uuid4().hex[:8]}")
    created = httpx.put(url, json=FIRST, headers={"trio-streams-retention-max-bytes": str(BUDGET_BYTES)}, timeout=5)
    assert created.status_code == 201, created.text
    return url, created.headers["stream-next-offset"]


def trimmed_past(url: str, offset: str) -> str:
    """Appends LATER, waits until retention has trimmed past ``offset`` and the stream
    is within its budget (no further trim is due), and returns the earliest offset."""
    for message in LATER:
        assert httpx.post(url, json=message, timeout=5).status_code == 204
    tail = position(httpx.head(url, timeout=5).headers["stream-next-offset"])

    def settled() -> str | None:
        answer = httpx.get(url, params={"offset": offset}, timeout=5)
        earliest = answer.headers.get(EARLIEST) if answer.status_code == 410 else None
        return earliest if earliest and tail - position(earliest) <= BUDGET_BYTES else None

    return str(deadline_poll(settled, what="the trim past the reader's offset"))


def close(url: str) -> None:
    assert httpx.post(url, headers={"stream-closed": "true"}, timeout=5).status_code == 204


# -- the error ------------------------------------------------------------------------


async def test_a_read_below_the_earliest_offset_raises_offset_trimmed_naming_it(trimming_server: Server) -> None:
    url, after_first = new_stream(trimming_server, "raise")
    earliest = trimmed_past(url, after_first)
    with pytest.raises(OffsetTrimmedError) as caught:
        await stream(url, offset=after_first)
    error = caught.value
    assert isinstance(error, DurableStreamError)  # existing `except DurableStreamError` clauses still catch it
    assert (error.status, error.code, error.earliest_offset) == (410, "OFFSET_TRIMMED", earliest)
    res = await stream(url)  # -1: the earliest retained offset, never a 410
    assert await res.json() == LATER[-1:]


async def test_a_bare_410_is_still_gone(trimming_server: Server) -> None:
    """A deleted stream's 410 (no earliest offset) keeps its old meaning."""
    url, _ = new_stream(trimming_server, "gone")
    fork = f"{url}-fork"
    assert httpx.put(fork, headers={"stream-forked-from": httpx.URL(url).path}, timeout=5).status_code == 201
    assert httpx.delete(url, timeout=5).status_code == 204  # soft-deleted: its fork still reads it
    with pytest.raises(DurableStreamError) as caught:
        await stream(url)
    assert (type(caught.value), caught.value.status, caught.value.code) == (DurableStreamError, 410, "GONE")


def test_a_resume_goes_only_forward() -> None:
    """A server naming an earliest offset at or before the reader's own would make it loop."""
    error = OffsetTrimmedError("read: HTTP 410", "0000000000000000_0000000000000005")
    assert trimmed_gap(error, "0000000000000000_0000000000000004", resume=True) == TrimmedGap(
        "0000000000000000_0000000000000004", "0000000000000000_0000000000000005")
    for offset, resume in (("0000000000000000_0000000000000005", True), ("0000000000000000_0000000000000004", False)):
        with pytest.raises(OffsetTrimmedError):
            trimmed_gap(error, offset, resume=resume)


# -- resuming: async ----------------------------------------------------------------------


async def test_on_trimmed_at_the_start_reports_the_gap_and_reads_on_from_the_earliest_offset(trimming_server: Server) -> None:
    url, after_first = new_stream(trimming_server, "start")
    earliest = trimmed_past(url, after_first)
    gaps: list[TrimmedGap] = []

    async def lost(gap: TrimmedGap) -> None:  # an async callback is awaited
        gaps.append(gap)

    async with DurableStream(url) as ds:
        res = await ds.stream(offset=after_first, on_trimmed=lost)
        assert await res.json() == LATER[-1:]
    assert gaps == [TrimmedGap(after_first, earliest)]


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_a_live_reader_that_fell_behind_raises_after_what_it_had(trimming_server: Server, live: str) -> None:
    url, after_first = new_stream(trimming_server, f"behind-{live}")
    res = await stream(url, offset="-1", live=live)  # its first answer (FIRST) is in hand
    earliest = trimmed_past(url, after_first)
    seen: list[Any] = []
    with pytest.raises(OffsetTrimmedError) as caught:
        async for message in res.json_stream():
            seen.append(message)
    assert seen == [FIRST]
    assert caught.value.earliest_offset == earliest


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_a_live_reader_with_on_trimmed_skips_the_gap_and_follows_to_the_end(trimming_server: Server, live: str) -> None:
    url, after_first = new_stream(trimming_server, f"resume-{live}")
    gaps: list[TrimmedGap] = []
    res = await stream(url, offset="-1", live=live, on_trimmed=gaps.append)
    earliest = trimmed_past(url, after_first)
    close(url)
    batches = [batch async for batch in res.json_batches()]
    assert [item for batch in batches for item in batch.items] == [FIRST, *LATER[-1:]]
    assert gaps == [TrimmedGap(after_first, earliest)]
    assert batches[-1].closed and res.closed


async def test_a_failing_on_trimmed_ends_the_session_with_its_exception(trimming_server: Server) -> None:
    url, after_first = new_stream(trimming_server, "refuse")
    trimmed_past(url, after_first)

    def refuse(gap: TrimmedGap) -> None:
        raise LookupError(gap.to_offset)

    with pytest.raises(LookupError):
        await stream(url, offset=after_first, on_trimmed=refuse)


# -- resuming: the blocking client -----------------------------------------------------------


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_sync_readers_raise_or_resume_like_async_ones(trimming_server: Server, live: str) -> None:
    url, after_first = new_stream(trimming_server, f"sync-{live}")
    raising = sync.stream(url, offset="-1", live=live)
    gaps: list[TrimmedGap] = []
    resuming = sync.stream(url, offset="-1", live=live, on_trimmed=gaps.append)
    earliest = trimmed_past(url, after_first)
    close(url)
    with pytest.raises(sync.OffsetTrimmedError) as caught:
        list(raising.json_stream())
    assert caught.value.earliest_offset == earliest
    assert list(resuming.json_stream()) == [FIRST, *LATER[-1:]]
    assert gaps == [sync.TrimmedGap(after_first, earliest)]
    with sync.DurableStream(url) as ds:
        assert ds.stream(offset=after_first, on_trimmed=gaps.append).json() == LATER[-1:]
        assert gaps[-1] == TrimmedGap(after_first, earliest)
        with pytest.raises(OffsetTrimmedError):
            ds.read_json(offset=after_first)


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["read", "tail"])
def test_cli_exits_3_naming_the_earliest_offset_unless_told_to_resume(trimming_server: Server, command: str) -> None:
    url, after_first = new_stream(trimming_server, f"cli-{command}")
    earliest = trimmed_past(url, after_first)
    close(url)  # so tail ends
    refused = cli(command, url, "--offset", after_first)
    assert refused.returncode == 3
    assert refused.stdout == b""
    assert f"earliest retained offset is {earliest}".encode() in refused.stderr
    resumed = cli(command, url, "--offset", after_first, "--resume-trimmed")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == b'{"n":4,"pad":"' + b"b" * 40 + b'"}\n'
    assert f"from offset {after_first} to {earliest}".encode() in resumed.stderr
