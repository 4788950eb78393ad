"""Live reads (long-poll, SSE), client disconnects, and stream expiry (TTL / Expires-At).

PROTOCOL.md 5.7, 5.8, 8 (offset=now), 10.1 (cursors) and 5.1 (Stream-TTL).
Synchronisation is by polling observable state (the /metrics subscriber
gauge) with bounded deadlines; the only sleeps are where a TTL must elapse.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import (
    PREFIX,
    Server,
    SseEvent,
    SseReader,
    assert_error,
    deadline_poll,
    is_control,
    offset_of,
    serving,
    unique,
)

OCTET = "application/octet-stream"
TEXT = "text/plain"
JSON = "application/json"
SLOW_POLL_MS = 30_000  # slow_server: a long-poll that returns early did so for a reason


def path(name: str) -> str:
    return PREFIX + name


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose long-polls wait 30 s, so prompt answers and disconnect clean-up are unambiguous."""
    yield from serving(tmp_path_factory.mktemp("slow"), ["--long-poll-timeout-ms", str(SLOW_POLL_MS)])


@pytest.fixture(scope="module")
def slow_client(slow_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=slow_server.url, timeout=10.0) as c:
        yield c


@pytest.fixture(autouse=True)
def no_leftover_subscribers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each live test starts and ends with no live readers on the servers it used."""
    servers = [request.getfixturevalue(n) for n in ("server", "slow_server") if n in request.fixturenames]
    for srv in servers:
        srv.wait_subscribers(lambda n: n == 0, what="no subscribers before the test")
    yield
    for srv in servers:
        srv.wait_subscribers(lambda n: n == 0, what="subscribers back to 0 after the test")


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


def create(client: httpx.Client, name: str, content_type: str, body: bytes = b"", **headers: str) -> str:
    hdrs = {"content-type": content_type} | {k.replace("_", "-"): v for k, v in headers.items()}
    resp = client.put(path(name), content=body, headers=hdrs)
    assert resp.status_code == 201, resp.text
    return offset_of(resp)


def append(client: httpx.Client, name: str, body: bytes, content_type: str | None, **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type:
        hdrs["content-type"] = content_type
    resp = client.post(path(name), content=body, headers=hdrs)
    assert resp.status_code in (200, 204), resp.text
    return resp


def close(client: httpx.Client, name: str) -> httpx.Response:
    return append(client, name, b"", None, stream_closed="true")


def long_poll(srv: Server, name: str, offset: str, cursor: str | None = None, timeout: float = 10.0) -> tuple[httpx.Response, float]:
    params = {"offset": offset, "live": "long-poll"} | ({"cursor": cursor} if cursor else {})
    started = time.monotonic()
    resp = httpx.get(srv.stream_url(name), params=params, timeout=timeout)
    return resp, time.monotonic() - started


def sse_params(offset: str) -> dict[str, str]:
    return {"offset": offset, "live": "sse"}


def assert_pairs(events: list[SseEvent]) -> None:
    """Every data event is immediately followed by a control event."""
    for i, ev in enumerate(events):
        assert ev.event in ("data", "control"), ev
        if ev.event == "data":
            assert i + 1 < len(events) and events[i + 1].event == "control", [e.event for e in events]


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
def test_long_poll_returns_data_appended_while_waiting(
    slow_server: Server, slow_client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor,
    content_type: str, initial: bytes, new: bytes, expected: bytes,
) -> None:
    name = unique()
    tail = create(slow_client, name, content_type, initial)
    future = pool.submit(long_poll, slow_server, name, tail)
    slow_server.wait_subscribers(lambda n: n >= 1, what="the long-poll to start waiting")
    appended = append(slow_client, name, new, content_type)
    resp, elapsed = future.result(timeout=10)
    assert elapsed < 5
    assert resp.status_code == 200, resp.text
    if content_type == JSON:
        assert json.loads(resp.content) == json.loads(expected)
    else:
        assert resp.content == expected
    assert offset_of(resp) == offset_of(appended)
    assert resp.headers.get("stream-cursor", "").isdigit()
    assert resp.headers.get("etag")
    assert resp.headers.get("stream-up-to-date") == "true"
    assert "stream-closed" not in resp.headers


def test_long_poll_offset_now_waits_for_new_data_only(slow_server: Server, slow_client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    name = unique()
    create(slow_client, name, TEXT, b"history")
    future = pool.submit(long_poll, slow_server, name, "now")
    slow_server.wait_subscribers(lambda n: n >= 1, what="the long-poll to start waiting")
    append(slow_client, name, b"future", TEXT)
    resp, _ = future.result(timeout=10)
    assert resp.status_code == 200
    assert resp.content == b"future"


def test_long_poll_timeout_is_204_up_to_date_with_cursor(server: Server, client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"abc")
    for offset in (tail, "now"):
        resp, elapsed = long_poll(server, name, offset)
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert 0.4 <= elapsed < 5, elapsed
        assert offset_of(resp) == tail
        assert resp.headers.get("stream-up-to-date") == "true"
        assert resp.headers.get("stream-cursor", "").isdigit()
        assert "stream-closed" not in resp.headers


def test_long_poll_with_data_behind_returns_immediately(slow_server: Server, slow_client: httpx.Client) -> None:
    name = unique()
    tail = create(slow_client, name, TEXT, b"already here")
    resp, elapsed = long_poll(slow_server, name, "-1")
    assert resp.status_code == 200
    assert resp.content == b"already here"
    assert offset_of(resp) == tail
    assert resp.headers.get("stream-cursor", "").isdigit()
    assert elapsed < 2


def test_long_poll_cursor_never_goes_backwards(server: Server, client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"x")
    first, _ = long_poll(server, name, tail)
    cursor = int(first.headers["stream-cursor"])
    echoed, _ = long_poll(server, name, tail, cursor=str(cursor))
    assert int(echoed.headers["stream-cursor"]) > cursor
    ahead = cursor + 10_000
    far, _ = long_poll(server, name, "-1", cursor=str(ahead))  # 200 with data; still must pass the client's cursor
    assert far.status_code == 200
    assert int(far.headers["stream-cursor"]) > ahead


@pytest.mark.parametrize("offset", ["tail", "now"])
def test_long_poll_at_closed_tail_is_immediate_204_closed(slow_server: Server, slow_client: httpx.Client, offset: str) -> None:
    name = unique()
    tail = create(slow_client, name, TEXT, b"done")
    close(slow_client, name)
    resp, elapsed = long_poll(slow_server, name, tail if offset == "tail" else "now")
    assert resp.status_code == 204
    assert elapsed < 2, f"waited {elapsed:.1f}s at the tail of a closed stream"
    assert resp.headers.get("stream-closed") == "true"
    assert resp.headers.get("stream-up-to-date") == "true"
    assert offset_of(resp) == tail


def test_long_poll_before_closed_tail_returns_final_data_with_closed(slow_server: Server, slow_client: httpx.Client) -> None:
    name = unique()
    create(slow_client, name, TEXT, b"all of it", stream_closed="true")
    resp, elapsed = long_poll(slow_server, name, "-1")
    assert resp.status_code == 200
    assert resp.content == b"all of it"
    assert resp.headers.get("stream-closed") == "true"
    assert elapsed < 2


def test_long_poll_waiter_is_woken_by_close(slow_server: Server, slow_client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    name = unique()
    tail = create(slow_client, name, TEXT, b"abc")
    future = pool.submit(long_poll, slow_server, name, tail)
    slow_server.wait_subscribers(lambda n: n >= 1, what="the long-poll to start waiting")
    close(slow_client, name)
    resp, elapsed = future.result(timeout=10)
    assert resp.status_code == 204
    assert resp.headers.get("stream-closed") == "true"
    assert offset_of(resp) == tail
    assert elapsed < 5


def test_long_poll_waiter_on_deleted_stream_does_not_hang(slow_server: Server, slow_client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    name = unique()
    tail = create(slow_client, name, TEXT, b"abc")
    future = pool.submit(long_poll, slow_server, name, tail)
    slow_server.wait_subscribers(lambda n: n >= 1, what="the long-poll to start waiting")
    assert slow_client.delete(path(name)).status_code == 204
    resp, elapsed = future.result(timeout=10)
    assert elapsed < 5, f"long-poll on a deleted stream waited {elapsed:.1f}s"
    assert_error(resp, 404)


def test_one_append_wakes_every_long_poll(slow_server: Server, slow_client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    name = unique()
    tail = create(slow_client, name, OCTET)
    futures = [pool.submit(long_poll, slow_server, name, tail) for _ in range(8)]
    slow_server.wait_subscribers(lambda n: n >= 8, what="8 long-polls waiting")
    append(slow_client, name, b"broadcast", OCTET)
    for future in futures:
        resp, elapsed = future.result(timeout=10)
        assert resp.status_code == 200
        assert resp.content == b"broadcast"
        assert elapsed < 5


# -- SSE ------------------------------------------------------------------------------


def test_sse_text_data_control_pairs_live_appends_and_close(server: Server, client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"hello")
    with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].split(";")[0] == "text/event-stream"
        assert "stream-sse-data-encoding" not in resp.headers
        sse = SseReader(resp)
        first = sse.until(is_control)
        assert [e.event for e in first] == ["data", "control"]
        assert first[0].data == "hello"
        control = first[1].json()
        assert control["streamNextOffset"] == tail
        assert control["streamCursor"].isdigit()
        assert control.get("upToDate") is True
        assert "streamClosed" not in control
        # Live: an append while connected arrives as another pair.
        after = offset_of(append(client, name, " wörld", TEXT))
        events = sse.until(is_control)
        assert [e.event for e in events] == ["data", "control"]
        assert events[0].data == " wörld"
        assert events[1].json()["streamNextOffset"] == after
        # Close: the final control says so, then the server ends the response.
        close(client, name)
        final = sse.until(lambda e: is_control(e) and e.json().get("streamClosed") is True)
        assert_pairs(final)
        closing = final[-1].json()
        assert closing["streamNextOffset"] == after
        assert closing.get("upToDate", True) is True
        assert sse.rest() == [], "events after streamClosed"
        assert sse.eof


def test_sse_text_keeps_line_breaks_and_leading_spaces(client: httpx.Client) -> None:
    name = unique()
    text = "first line\nsecond\n\n  indented\nevent: fake\ndata: injected\nlast"
    create(client, name, TEXT, text.encode(), stream_closed="true")
    with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        events = SseReader(resp).rest()
    assert_pairs(events)
    assert [e.event for e in events] == ["data", "control"]
    assert events[0].data == text
    assert events[1].json().get("streamClosed") is True


def test_sse_binary_is_base64_with_header(client: httpx.Client) -> None:
    name = unique()
    initial = bytes(range(256))
    create(client, name, OCTET, initial)
    with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("stream-sse-data-encoding") == "base64"
        sse = SseReader(resp)
        events = sse.until(is_control)
        append(client, name, b"\x00\n\r\xff", OCTET)
        events += sse.until(is_control)
        append(client, name, b"\x80", OCTET, stream_closed="true")
        events += sse.rest()
    assert_pairs(events)
    data = [e for e in events if e.event == "data"]
    for e in data:
        joined = "".join(e.data_lines)
        assert len(joined) % 4 == 0
    assert b"".join(e.b64() for e in data) == initial + b"\x00\n\r\xff\x80"
    assert events[-1].json().get("streamClosed") is True


def test_sse_json_data_events_are_arrays(client: httpx.Client) -> None:
    name = unique()
    create(client, name, JSON, b'[{"k":"v"},{"k":"w"}]')
    with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        assert "stream-sse-data-encoding" not in resp.headers
        sse = SseReader(resp)
        events = sse.until(is_control)
        append(client, name, b'{"k":"final"}', JSON, stream_closed="true")
        events += sse.rest()
    assert_pairs(events)
    messages = []
    for e in events:
        if e.event == "data":
            value = e.json()
            assert isinstance(value, list)
            messages += value
    assert messages == [{"k": "v"}, {"k": "w"}, {"k": "final"}]
    assert events[-1].json().get("streamClosed") is True


def test_sse_offset_now_skips_history(client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"history")
    with client.stream("GET", path(name), params=sse_params("now")) as resp:
        sse = SseReader(resp)
        first = sse.next_event()
        assert first is not None and first.event == "control"
        assert first.json()["streamNextOffset"] == tail
        assert first.json().get("upToDate") is True
        append(client, name, b"news", TEXT)
        events = sse.until(is_control)
        assert [e.data for e in events if e.event == "data"] == ["news"]
        close(client, name)
        assert sse.until(lambda e: e.json().get("streamClosed") is True)
        assert sse.rest() == []


@pytest.mark.parametrize("offset", ["tail", "now"])
def test_sse_at_closed_tail_sends_closed_control_and_ends(client: httpx.Client, offset: str) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"done", stream_closed="true")
    started = time.monotonic()
    with client.stream("GET", path(name), params=sse_params(tail if offset == "tail" else "now")) as resp:
        events = SseReader(resp).rest()
    assert time.monotonic() - started < 3
    assert len(events) == 1 and events[0].event == "control", events
    control = events[0].json()
    assert control["streamNextOffset"] == tail
    assert control.get("streamClosed") is True
    assert control.get("upToDate") is True


def test_sse_closed_stream_from_start_sends_data_then_closed(client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"whole story", stream_closed="true")
    with client.stream("GET", path(name), params=sse_params("-1")) as resp:
        events = SseReader(resp).rest()
    assert [e.event for e in events] == ["data", "control"]
    assert events[0].data == "whole story"
    assert events[1].json()["streamNextOffset"] == tail
    assert events[1].json().get("streamClosed") is True


def test_sse_multibyte_text_split_across_read_chunks_arrives_intact(chunk_server: Server) -> None:
    """--read-chunk-bytes-max 16: chunk boundaries fall inside 2-, 3- and 4-byte characters."""
    text = "x" * 15 + "é" + "y" * 13 + "🌍" + "z" * 14 + "日本語" * 6 + "\nline two " + "ü" * 20 + "🎉" * 9
    raw = text.encode()
    assert any(0x80 <= raw[i] < 0xC0 for i in range(16, len(raw), 16)), "some boundary must split a character"
    name = unique()
    with httpx.Client(base_url=chunk_server.url, timeout=10) as c:
        create(c, name, TEXT, raw[:40])
        append(c, name, raw[40:], TEXT, stream_closed="true")
        with c.stream("GET", path(name), params=sse_params("-1")) as resp:
            sse = SseReader(resp)
            events = []
            while True:
                try:
                    ev = sse.next_event()
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


def test_sse_client_disconnect_releases_the_subscriber(slow_server: Server, slow_client: httpx.Client) -> None:
    name = unique()
    create(slow_client, name, TEXT, b"abc")
    with httpx.Client(base_url=slow_server.url, timeout=10) as reader:
        with reader.stream("GET", path(name), params=sse_params("-1")) as resp:
            sse = SseReader(resp)  # keep a reference: dropping the iterator closes the response
            sse.until(is_control)
            slow_server.wait_subscribers(lambda n: n == 1, what="one SSE subscriber")
    slow_server.wait_subscribers(lambda n: n == 0, what="the SSE subscriber to go away after disconnect")
    append(slow_client, name, b"d", TEXT)
    assert slow_client.get(path(name)).content == b"abcd"


def open_raw_live_request(srv: Server, name: str, query: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(f"GET {path(name)}?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_long_poll_client_disconnect_releases_the_subscriber(slow_server: Server, slow_client: httpx.Client) -> None:
    name = unique()
    tail = create(slow_client, name, TEXT, b"abc")
    sock = open_raw_live_request(slow_server, name, f"offset={tail}&live=long-poll")
    try:
        slow_server.wait_subscribers(lambda n: n == 1, what="one long-poll subscriber")
    finally:
        sock.close()
    # The long-poll timeout is 30 s: getting back to 0 quickly means the disconnect was noticed.
    slow_server.wait_subscribers(lambda n: n == 0, timeout=5, what="the long-poll subscriber to go away after disconnect")


def test_many_abrupt_disconnects_leave_the_server_healthy(slow_server: Server, slow_client: httpx.Client) -> None:
    name = unique()
    tail = create(slow_client, name, OCTET, b"abc")
    sockets = []
    try:
        for i in range(20):
            query = f"offset={tail}&live=long-poll" if i % 2 else f"offset={tail}&live=sse"
            sockets.append(open_raw_live_request(slow_server, name, query))
        slow_server.wait_subscribers(lambda n: n == 20, what="20 live readers")
    finally:
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.close()
    slow_server.wait_subscribers(lambda n: n == 0, what="all live readers gone after resets")
    assert slow_client.get("/healthz").status_code == 200
    append(slow_client, name, b"d", OCTET)
    assert slow_client.get(path(name)).content == b"abcd"


# -- expiry ----------------------------------------------------------------------------------


# Sliding TTL (reads and writes reset it, HEAD does not), live readers keeping a
# stream alive, Expires-At and the expiry sweep are driven by MockClock in
# process: tests/test_streams.py and tests/test_live_waits.py.


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_expires_at_in_the_past_is_never_readable(client: httpx.Client, name: str) -> None:
    past = rfc3339(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    resp = client.put(path(name), content=b"x", headers={"content-type": TEXT, "stream-expires-at": past})
    assert resp.status_code in (201, 400), resp.text
    if resp.status_code == 400:
        assert_error(resp, 400)
    assert client.head(path(name)).status_code == 404
    assert_error(client.get(path(name)), 404)
    assert_error(client.post(path(name), content=b"y", headers={"content-type": TEXT}), 404)
