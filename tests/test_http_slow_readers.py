"""Readers that stop reading: every response write is bounded, shutdown is too.

In-process tests drive ``SendDeadlines`` with trio's memory streams and the
autojump clock; the rest run a real server with raw sockets whose receive
buffers are tiny and never read, so the server's writes block for real.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from conftest import PREFIX, Server, deadline_poll, serving
from trio_streams.http.send_timeout import SEND_PIECE_BYTES, SendDeadlines

STREAM_BYTES = 4 * 1024 * 1024  # far more than the socket buffers of a reader that never reads


# -- SendDeadlines in-process -------------------------------------------------


async def test_a_write_nobody_reads_times_out(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = SendDeadlines(send_timeout_s=5.0)
    sender, _receiver = trio.testing.lockstep_stream_pair()  # a write completes only when read
    started = trio.current_time()
    assert await deadlines.send_all(sender, b"x" * 10) is False
    assert trio.current_time() - started == pytest.approx(5.0)
    assert deadlines.stalled == 1


async def test_a_slow_but_steady_reader_is_never_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = SendDeadlines(send_timeout_s=5.0)
    sender, receiver = trio.testing.memory_stream_pair()
    data = b"y" * (3 * SEND_PIECE_BYTES + 7)
    received = bytearray()

    async def read_slowly() -> None:
        while len(received) < len(data):
            await trio.sleep(1.0)  # each piece waits a while, but well within the timeout
            received.extend(await receiver.receive_some(SEND_PIECE_BYTES))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        assert await deadlines.send_all(sender, data) is True
    assert bytes(received) == data
    assert deadlines.stalled == 0


async def test_drain_cuts_writes_in_flight_and_later_ones_to_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines = SendDeadlines(send_timeout_s=60.0)
    sender, _receiver = trio.testing.lockstep_stream_pair()
    results: list[tuple[bool, float]] = []

    async def write() -> None:
        outcome = await deadlines.send_all(sender, b"z")
        results.append((outcome, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        drained_at = trio.current_time()
        deadlines.drain(grace_s=2.0)
    assert results == [(False, pytest.approx(drained_at + 2.0))]
    other, _ = trio.testing.lockstep_stream_pair()
    assert await deadlines.send_all(other, b"late") is False
    assert trio.current_time() == pytest.approx(drained_at + 2.0)  # a later write gets no fresh timeout


# -- a real server ----------------------------------------------------------------


def _fill_stream(server: Server, name: str, content_type: str = "text/plain") -> None:
    url = server.stream_url(name)
    assert httpx.put(url, headers={"content-type": content_type}).status_code == 201
    piece = 1024 * 1024
    for _ in range(STREAM_BYTES // piece):
        assert httpx.post(url, content=b"x" * piece, headers={"content-type": content_type},
                          timeout=30).status_code == 204


def _stalled_reader(server: Server, name: str, live: str) -> socket.socket:
    """Asks for the whole stream, then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {PREFIX}{name}?live={live}&offset=-1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def _stalled(server: Server) -> float:
    return server.metrics().get("trio_streams_http_stalled_writes_total", 0.0)


@pytest.fixture
def quick_server(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path, ["--send-timeout-s", "0.5", "--append-bytes-max", str(2 * 1024 * 1024)])


def test_readers_that_stop_reading_are_dropped(quick_server: Server) -> None:
    _fill_stream(quick_server, "big")
    sockets = [_stalled_reader(quick_server, "big", live) for live in ("sse", "sse", "long-poll")]
    try:
        deadline_poll(lambda: _stalled(quick_server) >= 3, timeout=20, what="three stalled writes dropped")
        deadline_poll(lambda: quick_server.subscribers() == 0, timeout=10, what="no live readers left")
        assert httpx.get(f"{quick_server.url}/healthz", timeout=5).status_code == 200
        assert "made no progress" in quick_server.log_tail(200)
    finally:
        for sock in sockets:
            sock.close()


def test_a_slow_reader_that_keeps_reading_gets_everything(quick_server: Server) -> None:
    _fill_stream(quick_server, "big")
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as sock:
        sock.sendall(f"GET {PREFIX}big?offset=-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        received = 0
        while chunk := sock.recv(256 * 1024):
            received += len(chunk)
            time.sleep(0.01)  # the reader's own pace: ~25 MB/s at most, but it never stops
    assert received > 1024 * 1024  # one full read chunk plus headers arrived
    assert _stalled(quick_server) == 0


def test_shutdown_ends_within_the_grace_period_whatever_readers_do(tmp_path: Path) -> None:
    """50 readers that never read hold no connection past the grace period (1 s here)."""
    generator = serving(tmp_path, ["--shutdown-grace-s", "1", "--append-bytes-max", str(2 * 1024 * 1024)])
    srv = next(generator)
    sockets: list[socket.socket] = []
    try:
        _fill_stream(srv, "big")
        sockets = [_stalled_reader(srv, "big", "sse" if i % 5 else "long-poll") for i in range(50)]
        deadline_poll(lambda: srv.subscribers() >= 40, timeout=20, what="the SSE readers attached")
        # Before the fix the process never exited; stop() fails if it is still running after 20 s.
        assert srv.stop(signal.SIGTERM, timeout=20) == 0
    finally:
        for sock in sockets:
            sock.close()
        generator.close()

