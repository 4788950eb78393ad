"""Live reads through a real server: the ones that need Hypercorn or sockets.

A long-poll woken by an append and one timing out, an SSE session, and
client disconnects as closed and reset sockets. Everything else about
PROTOCOL.md 5.7, 5.8, 8 and 10.1 runs in process on the autojump clock (tests/test_inproc_live.py).
Synchronisation is by polling observable state (the /metrics subscriber
gauge) with bounded deadlines, never sleeps.
"""

from __future__ import annotations

import concurrent.futures
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


# Sliding TTL (reads and writes reset it, HEAD does not), live readers keeping a
# stream alive, Expires-At and the expiry sweep are driven by MockClock in
# process: tests/test_streams.py and tests/test_live_waits.py.
