"""Live reads (long-poll, SSE) and client disconnects, in process under the autojump clock.

PROTOCOL.md 5.7, 5.8, 8 (offset=now) and 10.1 (cursors). Every test runs
the ASGI app through tests/inproc.py on ``autojump_clock`` (each test asks
for it: pytest-trio takes the clock from the test's own arguments only): a 30 s
long-poll timeout or a 60 s SSE connection passes in no real time, and
"answered at once" means "before the timeout in virtual time", exactly.
Synchronisation is by the /metrics subscriber gauge once every task has
settled, never by sleeping. TTL and Expires-At run here too, on a wall
clock driven by trio's (``trio_driven_clock``). What needs real sockets
(abrupt resets, an HTTP/1.1 connection closing under a waiting reader) is
in tests/test_http_live.py.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from conftest import (
    PREFIX,
    SseEvent,
    assert_error,
    assert_pairs,
    inproc_settings_for,
    is_control,
    offset_of,
    unique,
)
from inproc import AsyncSseReader, InprocClient, InprocServer, Response, running_app
from trio_streams.clock import trio_driven_clock

OCTET = "application/octet-stream"
TEXT = "text/plain"
JSON = "application/json"
LONG_POLL_S = 30.0
SSE_CONNECTION_S = 60.0


def path(name: str) -> str:
    return PREFIX + name


@pytest.fixture
def inproc_settings() -> dict[str, object]:
    return {"long_poll_timeout_ms": int(LONG_POLL_S * 1000), "sse_connection_s": SSE_CONNECTION_S,
            "sse_connection_jitter_fraction": 0.0}


@pytest.fixture
def server(inproc: InprocServer) -> InprocServer:
    return inproc


@pytest.fixture
def client(server: InprocServer) -> InprocClient:
    return server.client


@pytest.fixture(autouse=True)
async def no_leftover_subscribers(request: pytest.FixtureRequest) -> Any:
    """Each live test ends with no live readers left behind."""
    yield
    if "server" in request.fixturenames:
        await request.getfixturevalue("server").wait_subscribers(lambda n: n == 0, "subscribers back to 0 after the test")


async def create(client: InprocClient, name: str, content_type: str, body: bytes = b"", **headers: str) -> str:
    hdrs = {"content-type": content_type} | {k.replace("_", "-"): v for k, v in headers.items()}
    resp = await client.put(path(name), content=body, headers=hdrs)
    assert resp.status_code == 201, resp.text
    return offset_of(resp)


async def append(client: InprocClient, name: str, body: bytes, content_type: str | None, **headers: str) -> Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type:
        hdrs["content-type"] = content_type
    resp = await client.post(path(name), content=body, headers=hdrs)
    assert resp.status_code in (200, 204), resp.text
    return resp


async def close(client: InprocClient, name: str) -> Response:
    return await append(client, name, b"", None, stream_closed="true")


async def long_poll(client: InprocClient, name: str, offset: str, cursor: str | None = None) -> tuple[Response, float]:
    """The response and how long it took, in (virtual) trio time."""
    params = {"offset": offset, "live": "long-poll"} | ({"cursor": cursor} if cursor else {})
    started = trio.current_time()
    resp = await client.get(path(name), params=params)
    return resp, trio.current_time() - started


def sse_params(offset: str) -> dict[str, str]:
    return {"offset": offset, "live": "sse"}


async def while_parked(server: InprocServer, readers: list[Callable[[], Awaitable[None]]],
                       action: Callable[[], Awaitable[object]]) -> None:
    """Starts ``readers``, waits until each one is subscribed, runs ``action``, then waits for the readers."""
    async with trio.open_nursery() as nursery:
        for reader in readers:
            nursery.start_soon(reader)
        await server.wait_subscribers(lambda n: n >= len(readers), f"{len(readers)} readers waiting")
        await action()


async def parked_long_polls(server: InprocServer, name: str, offset: str, action: Callable[[], Awaitable[object]],
                            count: int = 1) -> list[tuple[Response, float]]:
    results: list[tuple[Response, float]] = []

    async def poll() -> None:
        results.append(await long_poll(server.client, name, offset))

    await while_parked(server, [poll] * count, action)
    return results


# -- long-poll -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, initial, new, expected",
    [
        (OCTET, b"\x00\x01", b"\xff\xfe", b"\xff\xfe"),
        (TEXT, b"old ", "nëw".encode(), "nëw".encode()),
        (JSON, b'{"old":1}', b'[{"new":1},{"new":2}]', b'[{"new":1},{"new":2}]'),
    ],
    ids=["bytes", "text", "json"],
)
async def test_long_poll_returns_data_appended_while_waiting(autojump_clock: MockClock, 
    server: InprocServer, client: InprocClient, content_type: str, initial: bytes, new: bytes, expected: bytes,
) -> None:
    name = unique()
    tail = await create(client, name, content_type, initial)
    appended: list[Response] = []

    async def do_append() -> None:
        appended.append(await append(client, name, new, content_type))

    [(resp, elapsed)] = await parked_long_polls(server, name, tail, do_append)
    assert elapsed < LONG_POLL_S
    assert resp.status_code == 200, resp.text
    if content_type == JSON:
        assert json.loads(resp.content) == json.loads(expected)
    else:
        assert resp.content == expected
    assert offset_of(resp) == offset_of(appended[0])
    assert resp.headers.get("stream-cursor", "").isdigit()
    assert resp.headers.get("etag")
    assert resp.headers.get("stream-up-to-date") == "true"
    assert "stream-closed" not in resp.headers


async def test_long_poll_offset_now_waits_for_new_data_only(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    await create(client, name, TEXT, b"history")
    [(resp, _)] = await parked_long_polls(server, name, "now", lambda: append(client, name, b"future", TEXT))
    assert resp.status_code == 200
    assert resp.content == b"future"


async def test_long_poll_timeout_is_204_up_to_date_with_cursor(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"abc")
    for offset in (tail, "now"):
        resp, elapsed = await long_poll(client, name, offset)
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert elapsed == pytest.approx(LONG_POLL_S), elapsed
        assert offset_of(resp) == tail
        assert resp.headers.get("stream-up-to-date") == "true"
        assert resp.headers.get("stream-cursor", "").isdigit()
        assert "stream-closed" not in resp.headers


async def test_long_poll_with_data_behind_returns_immediately(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"already here")
    resp, elapsed = await long_poll(client, name, "-1")
    assert resp.status_code == 200
    assert resp.content == b"already here"
    assert offset_of(resp) == tail
    assert resp.headers.get("stream-cursor", "").isdigit()
    assert elapsed < LONG_POLL_S


async def test_long_poll_cursor_never_goes_backwards(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"x")
    first, _ = await long_poll(client, name, tail)
    cursor = int(first.headers["stream-cursor"])
    echoed, _ = await long_poll(client, name, tail, cursor=str(cursor))
    assert int(echoed.headers["stream-cursor"]) > cursor
    ahead = cursor + 10_000
    far, _ = await long_poll(client, name, "-1", cursor=str(ahead))  # 200 with data; still must pass the client's cursor
    assert far.status_code == 200
    assert int(far.headers["stream-cursor"]) > ahead


@pytest.mark.parametrize("offset", ["tail", "now"])
async def test_long_poll_at_closed_tail_is_immediate_204_closed(autojump_clock: MockClock, client: InprocClient, offset: str) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"done")
    await close(client, name)
    resp, elapsed = await long_poll(client, name, tail if offset == "tail" else "now")
    assert resp.status_code == 204
    assert elapsed < LONG_POLL_S, f"waited {elapsed:.1f}s at the tail of a closed stream"
    assert resp.headers.get("stream-closed") == "true"
    assert resp.headers.get("stream-up-to-date") == "true"
    assert offset_of(resp) == tail


async def test_long_poll_before_closed_tail_returns_final_data_with_closed(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    await create(client, name, TEXT, b"all of it", stream_closed="true")
    resp, elapsed = await long_poll(client, name, "-1")
    assert resp.status_code == 200
    assert resp.content == b"all of it"
    assert resp.headers.get("stream-closed") == "true"
    assert elapsed < LONG_POLL_S


async def test_long_poll_waiter_is_woken_by_close(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"abc")
    [(resp, elapsed)] = await parked_long_polls(server, name, tail, lambda: close(client, name))
    assert resp.status_code == 204
    assert resp.headers.get("stream-closed") == "true"
    assert offset_of(resp) == tail
    assert elapsed < LONG_POLL_S


async def test_long_poll_waiter_on_deleted_stream_does_not_hang(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"abc")

    async def delete() -> None:
        assert (await client.delete(path(name))).status_code == 204

    [(resp, elapsed)] = await parked_long_polls(server, name, tail, delete)
    assert elapsed < LONG_POLL_S, f"long-poll on a deleted stream waited {elapsed:.1f}s"
    assert_error(resp, 404)


async def test_one_append_wakes_every_long_poll(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, OCTET)
    results = await parked_long_polls(server, name, tail, lambda: append(client, name, b"broadcast", OCTET), count=8)
    assert len(results) == 8
    for resp, elapsed in results:
        assert resp.status_code == 200
        assert resp.content == b"broadcast"
        assert elapsed < LONG_POLL_S


# -- SSE ------------------------------------------------------------------------------


async def test_sse_text_data_control_pairs_live_appends_and_close(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"hello")
    async with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].split(";")[0] == "text/event-stream"
        assert "stream-sse-data-encoding" not in resp.headers
        sse = AsyncSseReader(resp)
        first = await sse.until(is_control)
        assert [e.event for e in first] == ["data", "control"]
        assert first[0].data == "hello"
        control = first[1].json()
        assert control["streamNextOffset"] == tail
        assert control["streamCursor"].isdigit()
        assert control.get("upToDate") is True
        assert "streamClosed" not in control
        # Live: an append while connected arrives as another pair.
        after = offset_of(await append(client, name, " wörld".encode(), TEXT))
        events = await sse.until(is_control)
        assert [e.event for e in events] == ["data", "control"]
        assert events[0].data == " wörld"
        assert events[1].json()["streamNextOffset"] == after
        # Close: the final control says so, then the server ends the response.
        await close(client, name)
        final = await sse.until(lambda e: is_control(e) and e.json().get("streamClosed") is True)
        assert_pairs(final)
        closing = final[-1].json()
        assert closing["streamNextOffset"] == after
        assert closing.get("upToDate", True) is True
        assert await sse.rest() == [], "events after streamClosed"
        assert sse.eof and resp.ended


async def sse_events(client: InprocClient, name: str, offset: str) -> list[SseEvent]:
    """Every event of an SSE read that the server ends by itself."""
    async with client.stream("GET", path(name), params=sse_params(offset)) as resp:
        events = await AsyncSseReader(resp).rest()
        assert resp.ended
    return events


async def test_sse_text_keeps_line_breaks_and_leading_spaces(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    text = "first line\nsecond\n\n  indented\nevent: fake\ndata: injected\nlast"
    await create(client, name, TEXT, text.encode(), stream_closed="true")
    events = await sse_events(client, name, "-1")
    assert_pairs(events)
    assert [e.event for e in events] == ["data", "control"]
    assert events[0].data == text
    assert events[1].json().get("streamClosed") is True


async def test_sse_binary_is_base64_with_header(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    initial = bytes(range(256))
    await create(client, name, OCTET, initial)
    async with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("stream-sse-data-encoding") == "base64"
        sse = AsyncSseReader(resp)
        events = await sse.until(is_control)
        await append(client, name, b"\x00\n\r\xff", OCTET)
        events += await sse.until(is_control)
        await append(client, name, b"\x80", OCTET, stream_closed="true")
        events += await sse.rest()
    assert_pairs(events)
    data = [e for e in events if e.event == "data"]
    for e in data:
        joined = "".join(e.data_lines)
        assert len(joined) % 4 == 0
    assert b"".join(e.b64() for e in data) == initial + b"\x00\n\r\xff\x80"
    assert events[-1].json().get("streamClosed") is True


async def test_sse_json_data_events_are_arrays(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    await create(client, name, JSON, b'[{"k":"v"},{"k":"w"}]')
    async with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert "stream-sse-data-encoding" not in resp.headers
        sse = AsyncSseReader(resp)
        events = await sse.until(is_control)
        await append(client, name, b'{"k":"final"}', JSON, stream_closed="true")
        events += await sse.rest()
    assert_pairs(events)
    messages = []
    for e in events:
        if e.event == "data":
            value = e.json()
            assert isinstance(value, list)
            messages += value
    assert messages == [{"k": "v"}, {"k": "w"}, {"k": "final"}]
    assert events[-1].json().get("streamClosed") is True


async def test_sse_offset_now_skips_history(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"history")
    async with client.stream("GET", path(name), params=sse_params("now")) as resp:
        sse = AsyncSseReader(resp)
        first = await sse.next_event()
        assert first is not None and first.event == "control"
        assert first.json()["streamNextOffset"] == tail
        assert first.json().get("upToDate") is True
        await append(client, name, b"news", TEXT)
        events = await sse.until(is_control)
        assert [e.data for e in events if e.event == "data"] == ["news"]
        await close(client, name)
        assert await sse.until(lambda e: e.json().get("streamClosed") is True)
        assert await sse.rest() == []


@pytest.mark.parametrize("offset", ["tail", "now"])
async def test_sse_at_closed_tail_sends_closed_control_and_ends(autojump_clock: MockClock, client: InprocClient, offset: str) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"done", stream_closed="true")
    started = trio.current_time()
    events = await sse_events(client, name, tail if offset == "tail" else "now")
    assert trio.current_time() - started < SSE_CONNECTION_S, "a closed stream's SSE read waited for its lifetime"
    assert len(events) == 1 and events[0].event == "control", events
    control = events[0].json()
    assert control["streamNextOffset"] == tail
    assert control.get("streamClosed") is True
    assert control.get("upToDate") is True


async def test_sse_closed_stream_from_start_sends_data_then_closed(autojump_clock: MockClock, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"whole story", stream_closed="true")
    events = await sse_events(client, name, "-1")
    assert [e.event for e in events] == ["data", "control"]
    assert events[0].data == "whole story"
    assert events[1].json()["streamNextOffset"] == tail
    assert events[1].json().get("streamClosed") is True


async def test_sse_connection_ends_cleanly_after_its_lifetime(autojump_clock: MockClock, client: InprocClient) -> None:
    """sse_connection_s: the response ends (more_body False) with the stream still open, in virtual time."""
    name = unique()
    await create(client, name, TEXT, b"x")
    started = trio.current_time()
    events = await sse_events(client, name, "-1")
    assert trio.current_time() - started == pytest.approx(SSE_CONNECTION_S)
    assert [e.event for e in events] == ["data", "control"]
    assert "streamClosed" not in events[-1].json()


@pytest.mark.parametrize("inproc_settings", [{"sse_connection_s": SSE_CONNECTION_S, "sse_connection_jitter_fraction": 0.1}])
async def test_sse_connections_opened_together_end_spread_out(autojump_clock: MockClock, client: InprocClient) -> None:
    """sse_connection_jitter_fraction: a wave of connections does not come back as one wave."""
    name = unique()
    await create(client, name, TEXT, b"x")
    started = trio.current_time()
    lifetimes: list[float] = []

    async def one() -> None:
        await sse_events(client, name, "-1")
        lifetimes.append(trio.current_time() - started)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert all(0.9 * SSE_CONNECTION_S <= t <= SSE_CONNECTION_S for t in lifetimes), lifetimes
    # 20 uniform draws over 6 s all within 1 s of each other: about 1 in 10^14.
    assert max(lifetimes) - min(lifetimes) > 1.0, lifetimes


async def test_sse_multibyte_text_split_across_read_chunks_arrives_intact(autojump_clock: MockClock, tmp_path: Path) -> None:
    """read_chunk_bytes_max 16: chunk boundaries fall inside 2-, 3- and 4-byte characters."""
    text = "x" * 15 + "é" + "y" * 13 + "🌍" + "z" * 14 + "日本語" * 6 + "\nline two " + "ü" * 20 + "🎉" * 9
    raw = text.encode()
    assert any(0x80 <= raw[i] < 0xC0 for i in range(16, len(raw), 16)), "some boundary must split a character"
    name = unique()
    async with running_app(inproc_settings_for(tmp_path, read_chunk_bytes_max=16)) as chunk_server:
        c = chunk_server.client
        await create(c, name, TEXT, raw[:40])
        await append(c, name, raw[40:], TEXT, stream_closed="true")
        async with c.stream("GET", path(name), params=sse_params("-1")) as resp:
            sse = AsyncSseReader(resp)
            events = []
            while True:
                try:
                    ev = await sse.next_event()
                except UnicodeDecodeError as exc:
                    pytest.fail(f"an SSE data line is not valid UTF-8 on its own: {exc}")
                if ev is None:
                    break
                events.append(ev)
    assert_pairs(events)
    data = [e.data for e in events if e.event == "data"]
    assert len(data) > 3, "the read chunk limit should split the text into several events"
    assert "".join(data) == text
    assert events[-1].json().get("streamClosed") is True


# -- disconnects ---------------------------------------------------------------------------


async def test_sse_client_disconnect_releases_the_subscriber(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    await create(client, name, TEXT, b"abc")
    async with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        await AsyncSseReader(resp).until(is_control)
        await server.wait_subscribers(lambda n: n == 1, "one SSE subscriber")
        await resp.disconnect()
        assert not resp.ended, "the response ended by itself before the disconnect"
    started = trio.current_time()
    await server.wait_subscribers(lambda n: n == 0, "the SSE subscriber to go away after disconnect")
    assert trio.current_time() - started < SSE_CONNECTION_S
    await append(client, name, b"d", TEXT)
    assert (await client.get(path(name))).content == b"abcd"


async def test_long_poll_client_disconnect_releases_the_subscriber(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, TEXT, b"abc")
    params = {"offset": tail, "live": "long-poll"}
    async with client.stream("GET", path(name), params=params, wait_for_start=False) as resp:
        await server.wait_subscribers(lambda n: n == 1, "one long-poll subscriber")
        started = trio.current_time()
        await resp.disconnect()
        # The long-poll timeout has not passed: the app let go because of the disconnect.
        assert trio.current_time() - started < LONG_POLL_S
        assert resp.status_code == 0, "the long-poll answered although nothing happened"
    assert await server.subscribers() == 0


async def test_many_disconnects_leave_the_server_healthy(autojump_clock: MockClock, server: InprocServer, client: InprocClient) -> None:
    name = unique()
    tail = await create(client, name, OCTET, b"abc")
    async with trio.open_nursery() as nursery:
        gone = trio.Event()

        async def reader(live: str) -> None:
            async with client.stream("GET", path(name), params={"offset": tail, "live": live}, wait_for_start=False):
                await gone.wait()

        for i in range(20):
            nursery.start_soon(reader, "long-poll" if i % 2 else "sse")
        await server.wait_subscribers(lambda n: n == 20, "20 live readers")
        gone.set()
    await server.wait_subscribers(lambda n: n == 0, "all live readers gone after disconnects")
    assert (await client.get("/healthz")).status_code == 200
    await append(client, name, b"d", OCTET)
    assert (await client.get(path(name))).content == b"abcd"


# -- expiry (only what the wall clock cannot disturb; the rest is in test_http_live.py) ----------


async def test_expires_at_in_the_past_is_never_readable(autojump_clock: MockClock, client: InprocClient, name: str) -> None:
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat(timespec="milliseconds")
    resp = await client.put(path(name), content=b"x", headers={"content-type": TEXT,
                                                                "stream-expires-at": past.replace("+00:00", "Z")})
    assert resp.status_code in (201, 400), resp.text
    if resp.status_code == 400:
        assert_error(resp, 400)
    assert (await client.head(path(name))).status_code == 404
    assert_error(await client.get(path(name)), 404)
    assert_error(await client.post(path(name), content=b"y", headers={"content-type": TEXT}), 404)


async def test_ttl_and_expires_at_run_on_the_app_clock_over_http(autojump_clock: MockClock, tmp_path: Path) -> None:
    """With a trio-driven wall clock, a whole TTL passes over HTTP in virtual time:
    a read resets the sliding TTL, HEAD does not, and an absolute expiry is
    unaffected by reads."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    clock = trio_driven_clock(start.timestamp())
    expires_at = (start + datetime.timedelta(seconds=100)).isoformat().replace("+00:00", "Z")
    async with running_app(inproc_settings_for(tmp_path), clock) as app:
        client = app.client
        ttl = await client.put(path("ttl"), headers={"content-type": TEXT, "stream-ttl": "10"}, content=b"t")
        dated = await client.put(path("dated"), headers={"content-type": TEXT, "stream-expires-at": expires_at})
        assert (ttl.status_code, dated.status_code) == (201, 201), (ttl.text, dated.text)
        for _ in range(3):  # 24 s in all, each gap under the 10 s TTL, reads in between
            await trio.sleep(8)
            assert (await client.get(path("ttl"))).content == b"t"
            assert (await client.get(path("dated"))).status_code == 200
        await trio.sleep(8)
        assert (await client.head(path("ttl"))).status_code == 200  # HEAD does not reset it
        await trio.sleep(8)  # 16 s since the last read
        assert_error(await client.get(path("ttl")), 404)
        await trio.sleep(100 - trio.current_time() - 0.5)
        assert (await client.get(path("dated"))).status_code == 200
        await trio.sleep(1)
        assert_error(await client.get(path("dated")), 404)
