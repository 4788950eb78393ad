"""SSE event ids and Last-Event-ID, in process: a reconnecting EventSource resumes where it stopped.

A browser's EventSource reconnects to the URL it was opened with (often
``offset=-1``) whenever the server recycles the connection; it sends the id
of the last event it received as ``Last-Event-ID``. Every event carries the
offset after it as its id, and that header takes precedence over ``offset``.
The ASGI app is driven by tests/inproc.py; the recycling test runs on the
autojump clock, so each 60 s connection lifetime passes in no real time.
The pure encoding tests are in tests/test_sse_resume.py; the same
reconnection in a real browser through Hypercorn, tests/test_browser.py.
"""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from conftest import (
    PREFIX,
    SseEvent,
    assert_error,
    is_control,
    offset_of,
    unique,
)
from inproc import AsyncSseReader, InprocClient, InprocServer

TEXT = "text/plain"
JSON = "application/json"
OCTET = "application/octet-stream"


@pytest.fixture
def client(inproc: InprocServer) -> InprocClient:
    return inproc.client


def path(name: str) -> str:
    return PREFIX + name


async def sse_get(client: InprocClient, name: str, offset: str, headers: list[tuple[str, str]] | None = None) -> list[SseEvent]:
    """Every event of an SSE read of a closed stream (the server ends the response)."""
    async with client.stream("GET", path(name), params={"offset": offset, "live": "sse"}, headers=headers or []) as resp:
        assert resp.status_code == 200
        return await AsyncSseReader(resp).rest()


async def closed_text_stream(client: InprocClient, *parts: bytes) -> list[str]:
    """A closed text stream made of ``parts``: its name, then the offset after each part."""
    name = unique()
    resp = await client.put(path(name), content=parts[0], headers={"content-type": TEXT})
    offsets = [offset_of(resp)]
    for i, part in enumerate(parts[1:], start=2):
        closing = {"stream-closed": "true"} if i == len(parts) else {}
        resp = await client.post(path(name), content=part, headers={"content-type": TEXT} | closing)
        offsets.append(offset_of(resp))
    if len(parts) == 1:
        await client.post(path(name), headers={"stream-closed": "true"})
    return [name, *offsets]


# -- ids on the wire ---------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "first", "second"), [
    (TEXT, b"first\n", b"second"),
    (JSON, b'{"n":1}', b'[{"n":2},{"n":3}]'),
    (OCTET, b"\x00\x01", b"\xff"),
], ids=["text", "json", "binary"])
async def test_every_event_carries_the_offset_after_it(client: InprocClient, content_type: str, first: bytes,
                                                 second: bytes) -> None:
    name = unique()
    await client.put(path(name), content=first, headers={"content-type": content_type})
    async with client.stream("GET", path(name), params={"offset": "-1", "live": "sse"}) as resp:
        reader = AsyncSseReader(resp)
        events = await reader.until(is_control)
        await client.post(path(name), content=second, headers={"content-type": content_type, "stream-closed": "true"})
        events += await reader.rest()
    assert [e.event for e in events] == ["data", "control"] * (len(events) // 2)
    assert len(events) >= 4
    for data, control in zip(events[::2], events[1::2]):
        assert data.id == control.id == control.json()["streamNextOffset"], (data, control)


async def test_the_first_control_at_the_tail_carries_the_tail_as_id(client: InprocClient) -> None:
    name = unique()
    tail = offset_of(await client.put(path(name), content=b"history", headers={"content-type": TEXT}))
    async with client.stream("GET", path(name), params={"offset": "now", "live": "sse"}) as resp:
        first = await AsyncSseReader(resp).next_event()
    assert first is not None and first.event == "control" and first.id == tail


# -- Last-Event-ID -----------------------------------------------------------------


@pytest.mark.parametrize("url_offset", ["-1", "now", "tail"])
async def test_last_event_id_takes_precedence_over_the_url_offset(client: InprocClient, url_offset: str) -> None:
    name, after_one, tail = await closed_text_stream(client, b"one", b"two")
    offset = tail if url_offset == "tail" else url_offset
    events = await sse_get(client, name, offset, [("last-event-id", after_one)])
    assert [(e.event, e.data) for e in events if e.event == "data"] == [("data", "two")]
    assert events[-1].json() == {"streamNextOffset": tail, "upToDate": True, "streamClosed": True}


async def test_last_event_id_at_the_closed_tail_gets_only_the_closing_control(client: InprocClient) -> None:
    name, tail = await closed_text_stream(client, b"all of it")
    events = await sse_get(client, name, "-1", [("last-event-id", tail)])
    assert [e.event for e in events] == ["control"]
    assert events[0].json()["streamClosed"] is True and events[0].id == tail


async def test_an_empty_last_event_id_is_no_header(client: InprocClient) -> None:
    """EventSource sends none before it has an id; an empty one means the same (the SSE spec's reset)."""
    name, _, _ = await closed_text_stream(client, b"one", b"two")
    events = await sse_get(client, name, "-1", [("last-event-id", "")])
    assert [e.data for e in events if e.event == "data"] == ["onetwo"]


@pytest.mark.parametrize("value", [
    "garbage", "1", "-2", "0000000000000000_00000000000000x1", "0000000000000001_0000000000000000",
    "0000000000000000_0000000000000003, 0000000000000000_0000000000000003",  # two headers, joined
    "0000000000000000_9999999999999999",  # beyond the tail
])
async def test_a_malformed_or_impossible_last_event_id_is_400(client: InprocClient, value: str) -> None:
    name, _, _ = await closed_text_stream(client, b"one", b"two")
    headers = [("last-event-id", v.strip()) for v in value.split(",")]
    resp = await client.get(path(name), params={"offset": "-1", "live": "sse"}, headers=headers)
    assert_error(resp, 400, "INVALID_OFFSET")


async def test_a_last_event_id_inside_a_json_message_is_400(client: InprocClient) -> None:
    name = unique()
    await client.put(path(name), content=b'[{"n":1},{"n":2}]', headers={"content-type": JSON})
    inside = "0000000000000000_0000000000000003"
    resp = await client.get(path(name), params={"offset": "-1", "live": "sse"}, headers={"last-event-id": inside})
    assert_error(resp, 400, "INVALID_OFFSET")


@pytest.mark.parametrize("live", [None, "long-poll"])
async def test_other_reads_ignore_last_event_id(client: InprocClient, live: str | None) -> None:
    """Only EventSource sends it, and only SSE honours it: other reads go by their offset."""
    name, after_one, _ = await closed_text_stream(client, b"one", b"two")
    params = {"offset": "-1"} | ({"live": live} if live else {})
    for value in (after_one, "garbage"):
        resp = await client.get(path(name), params=params, headers={"last-event-id": value})
        assert resp.status_code == 200 and resp.content == b"onetwo", resp.content


async def test_cors_preflight_allows_last_event_id(client: InprocClient) -> None:
    """It is no CORS-safelisted header: a cross-origin page's reconnect may need it allowed."""
    resp = await client.options(path(unique()), headers={"origin": "https://app.example",
                                                  "access-control-request-method": "GET"})
    allowed = {h.strip().lower() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert "last-event-id" in allowed


# -- across recycled connections, as EventSource does it -----------------------------


@pytest.mark.parametrize("inproc_settings", [{"sse_connection_s": 60.0}])
async def test_reconnecting_like_event_source_sees_each_message_once(autojump_clock: MockClock, inproc: InprocServer) -> None:
    """Reconnect to the original URL with the last id, as a browser does, across several recycles.

    Each connection appends one message once it is up to date, then reads
    until the server recycles it; the fourth append closes the stream.
    """
    client = inproc.client
    name = unique()
    await client.put(path(name), content=b'{"n":0}', headers={"content-type": JSON})
    seen: list[object] = []
    last_id: str | None = None  # EventSource keeps the last id it received
    connections, closed = 0, False
    while not closed:
        connections += 1
        appended = False
        headers = [("last-event-id", last_id)] if last_id else []
        async with client.stream("GET", path(name), params={"offset": "-1", "live": "sse"}, headers=headers) as resp:
            reader = AsyncSseReader(resp)
            while (event := await reader.next_event()) is not None:
                last_id = event.id or last_id
                if event.event == "data":
                    seen += event.json()
                elif event.json().get("streamClosed"):
                    closed = True
                elif event.json().get("upToDate") and not appended:
                    appended = True
                    closing = {"stream-closed": "true"} if len(seen) == 4 else {}
                    await client.post(path(name), content=b'{"n":%d}' % len(seen),
                            headers={"content-type": JSON} | closing)
    assert seen == [{"n": i} for i in range(5)]
    assert connections >= 4
