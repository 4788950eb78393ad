"""Live reads through a real server: the ones that need Hypercorn, sockets or the wall clock.

A long-poll woken by an append and one timing out, an SSE session, client
disconnects as closed and reset sockets, and stream expiry (Stream-TTL,
Stream-Expires-At), which follows ``time.time()`` and so must wait for
real seconds to pass. Everything else about PROTOCOL.md 5.7, 5.8, 8 and
10.1 runs in process on the autojump clock (tests/test_inproc_live.py).
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
    SseReader,
    assert_error,
    assert_pairs,
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


# -- long-poll -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, initial, new, expected",
    [
        (TEXT, b"old ", "nëw".encode(), "nëw".encode()),
    ],
    ids=["text"],
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


def test_sliding_ttl_reads_and_writes_reset_head_does_not(client: httpx.Client) -> None:
    """Stream-TTL: 1. Timeline in 0.6 s steps: a GET or POST at 0.6 keeps a stream alive at 1.2; a HEAD does not."""
    read, written, headed, idle = (unique(label) for label in ("read", "written", "headed", "idle"))
    for n in (read, written, headed, idle):
        create(client, n, TEXT, b"x", stream_ttl="1")
        assert client.head(path(n)).headers.get("stream-ttl") == "1"
    time.sleep(0.6)
    assert client.get(path(read)).status_code == 200
    append(client, written, b"y", TEXT)
    assert client.head(path(headed)).status_code == 200
    time.sleep(0.6)
    assert client.head(path(idle)).status_code == 404, "an idle TTL=1 stream is still there after 1.2 s"
    assert_error(client.get(path(idle)), 404)
    assert client.head(path(headed)).status_code == 404, "HEAD reset the sliding TTL"
    assert client.get(path(read)).status_code == 200, "a read did not reset the sliding TTL"
    assert client.get(path(written)).content == b"xy", "an append did not reset the sliding TTL"
    time.sleep(1.2)
    for n in (read, written):
        assert_error(client.get(path(n)), 404)
        assert_error(client.post(path(n), content=b"z", headers={"content-type": TEXT}), 404)
    # An expired path can be created again, empty.
    create(client, read, TEXT)
    assert client.get(path(read)).content == b""


def test_live_readers_keep_a_ttl_stream_alive(server: Server, client: httpx.Client) -> None:
    name = unique()
    tail = create(client, name, TEXT, b"x", stream_ttl="1")
    end = time.monotonic() + 1.6
    while time.monotonic() < end:  # back-to-back 500 ms long-polls, each resets the TTL when it starts
        resp, _ = long_poll(server, name, tail)
        assert resp.status_code == 204
    assert client.get(path(name)).status_code == 200


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_expires_at_in_the_near_future(client: httpx.Client, name: str) -> None:
    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1.0)
    when = rfc3339(deadline)
    create(client, name, TEXT, b"brief", stream_expires_at=when)
    head = client.head(path(name))
    assert head.headers.get("stream-expires-at") == when
    assert client.get(path(name)).content == b"brief"  # reads do not extend an absolute expiry
    remaining = (deadline - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    time.sleep(max(0.0, remaining) + 0.2)
    assert client.head(path(name)).status_code == 404
    assert_error(client.get(path(name)), 404)
    deadline_poll(lambda: client.put(path(name), headers={"content-type": TEXT}).status_code == 201, 2, what="re-create")
    assert client.get(path(name)).content == b""
