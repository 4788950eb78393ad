"""Connections: no client can end the process, wedge it, or hold it open forever.

Real `trio-streams serve` processes driven with raw sockets (the framings
httpx would never send), plus sans-IO tests of the h11 rules in
``http/hypercorn_guard.py`` fed one byte at a time.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import hypercorn.protocol
import hypercorn.trio.run
import pytest
import trio
import trio.testing
from conftest import EXE, RawResponse, Server, assert_error, deadline_poll, free_port, serving, unique
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from trio_streams.config import Settings
from trio_streams.http import fd_budget, hypercorn_guard

READ_TIMEOUT_S = 1.0
HEADER_LIMIT = 8192
REPEATS = 25


# -- raw HTTP/1.1 over one socket -----------------------------------------------


def exchange(port: int, payload: bytes, *, half_close: bool = False, timeout: float = 20.0) -> bytes:
    """Sends ``payload`` and returns everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all was sent: the answer is still readable
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def parse_responses(data: bytes) -> list[RawResponse]:
    """Every Content-Length-framed response in ``data``, which must hold nothing else."""
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = httpx.Headers([tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]])
        length = int(headers.get("content-length", "0"))
        responses.append(RawResponse(int(lines[0].split(" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def only_response(data: bytes) -> RawResponse:
    responses = parse_responses(data)
    assert len(responses) == 1, [(r.status_code, r.body[:80]) for r in responses]
    return responses[0]


def request_head(target: str, size: int) -> bytes:
    """A GET head of exactly ``size`` bytes, blank line included, padded with one header."""
    start = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".encode()
    end = b"\r\n\r\n"
    padding = size - len(start) - len(end)
    assert padding >= 0
    return start + b"a" * padding + end


def send_in_segments(sock: socket.socket, data: bytes, segment: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(data), segment):
        sock.sendall(data[i:i + segment])


def alive_with_data(srv: Server, url: str, body: bytes) -> None:
    assert srv.proc is not None and srv.proc.poll() is None, f"server exited:\n{srv.log_tail()}"
    assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    resp = httpx.get(url, params={"offset": "-1"}, timeout=10)
    assert resp.status_code == 200 and resp.content == body


# -- servers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Short mid-request timeout, a small header limit, and long-polls longer than the read timeout."""
    yield from serving(tmp_path_factory.mktemp("conn"), [
        "--request-read-timeout-s", str(READ_TIMEOUT_S), "--keep-alive-timeout-s", "1",
        "--request-header-bytes-max", str(HEADER_LIMIT), "--long-poll-timeout-ms", "3000",
    ])


@pytest.fixture
def stream_with_data(srv: Server) -> tuple[str, bytes]:
    url = srv.stream_url(unique("conn"))
    body = b"written before the abuse"
    assert httpx.put(url, headers={"content-type": "application/octet-stream"}, content=body).status_code == 201
    return url, body


# -- Finding 1: one connection must not end the process ----------------------


def test_bytes_after_an_http10_request_are_ignored(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    for _ in range(REPEATS):
        resp = only_response(exchange(srv.port, b"GET /healthz HTTP/1.0\r\n\r\nX"))
        assert resp.status_code == 200, resp.body
    alive_with_data(srv, *stream_with_data)


def test_request_after_connection_close_is_not_answered(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    payload = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(REPEATS):
        resp = only_response(exchange(srv.port, payload))
        assert resp.status_code == 200 and resp.json()["status"] == "ok"
    alive_with_data(srv, *stream_with_data)


@pytest.mark.parametrize("length", ["5", str(10**12)], ids=["short-body", "over-append-limit"])
def test_missing_body_then_half_close(srv: Server, stream_with_data: tuple[str, bytes], length: str) -> None:
    url, _ = stream_with_data
    path = httpx.URL(url).path
    payload = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {length}\r\n\r\n").encode()
    for _ in range(REPEATS):
        resp = only_response(exchange(srv.port, payload, half_close=True))
        # 413 when the declared length is refused first; 400 when the missing body is noticed first.
        assert resp.status_code in (400, 413), resp.body
        assert_error(resp, resp.status_code)
    alive_with_data(srv, *stream_with_data)


def test_abuse_from_many_connections_at_once(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    payloads = [
        (b"GET /healthz HTTP/1.0\r\n\r\nXYZ", False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n", False),
        (b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", True),
        (b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n", True),
    ]
    socks = []
    for _ in range(REPEATS):
        for payload, half_close in payloads:
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            socks.append(sock)
    for sock in socks:
        with sock:
            read_to_eof(sock)
    alive_with_data(srv, *stream_with_data)


@pytest.mark.parametrize("trailing", [b"", b"x\n"], ids=["plain", "trailing-bytes"])
def test_websocket_upgrade_is_answered_as_plain_http(
    srv: Server, stream_with_data: tuple[str, bytes], trailing: bytes
) -> None:
    # pgjones/hypercorn#225: trailing bytes after an upgrade request crashed the server.
    payload = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ==\r\n\r\n" + trailing)
    for _ in range(REPEATS):
        assert only_response(exchange(srv.port, payload)).status_code == 200
    alive_with_data(srv, *stream_with_data)


@pytest.fixture
def plain_hypercorn(tmp_path: Path) -> Iterator[Server]:
    """The app under `hypercorn -k trio` itself, configured from the environment."""
    srv = Server(tmp_path / "data")
    srv.data_dir.mkdir()
    env = {**os.environ, "TRIO_STREAMS_DATA_DIR": str(srv.data_dir), "TRIO_STREAMS_CONNECTIONS_MAX": "50"}
    with open(tmp_path / "hypercorn.log", "wb") as log:
        srv.proc = subprocess.Popen(
            [str(EXE.parent / "hypercorn"), "-k", "trio", "-b", f"127.0.0.1:{srv.port}",
             "trio_streams.http.app:create_app()"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.kill_quietly()


def test_plain_hypercorn_is_guarded_too(plain_hypercorn: Server) -> None:
    for _ in range(REPEATS):
        assert only_response(exchange(plain_hypercorn.port, b"GET /healthz HTTP/1.0\r\n\r\nX")).status_code == 200
    smuggle = b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert_error(only_response(exchange(plain_hypercorn.port, smuggle)), 400)
    assert plain_hypercorn.proc is not None and plain_hypercorn.proc.poll() is None
    assert plain_hypercorn.metrics()["trio_streams_connections_open"] >= 1


# -- Finding 5: timeouts, header limit, connection cap, descriptors ------------


def test_stalled_body_gets_408_and_is_closed(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    url, body = stream_with_data
    path = httpx.URL(url).path
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 10\r\n\r\nabc").encode()
    resp = only_response(exchange(srv.port, head))  # the socket's own timeout (20 s) fails the test
    assert_error(resp, 408, "REQUEST_TIMEOUT")
    assert resp.headers["connection"] == "close"
    alive_with_data(srv, url, body)  # the partial body was never appended


def test_stalled_head_is_closed(srv: Server) -> None:
    data = exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    # The read timeout answers 408; the keep-alive timer (equally short here) just closes.
    assert data == b"" or only_response(data).status_code == 408


def test_idle_keep_alive_connection_is_closed(srv: Server) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = only_response(read_to_eof(sock))  # EOF comes from the keep-alive timeout
    assert resp.status_code == 200


def test_long_poll_outlives_the_read_timeout(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    url, _ = stream_with_data
    tail = httpx.head(url).headers["stream-next-offset"]
    resp = httpx.get(url, params={"offset": tail, "live": "long-poll"}, timeout=20)
    assert resp.status_code == 204  # answered at the 3 s long-poll timeout, not cut at 1 s


@pytest.mark.parametrize("segment", [65536, 1000, 97], ids=["one-write", "1000-byte-segments", "97-byte-segments"])
def test_header_block_limit_is_exact(srv: Server, segment: int) -> None:
    for size, status in ((HEADER_LIMIT, 200), (HEADER_LIMIT + 1, 431)):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            send_in_segments(sock, request_head("/healthz", size), segment)
            if status == 200:  # the connection goes on after a head that fits
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            responses = parse_responses(read_to_eof(sock))
        assert responses[0].status_code == status, (size, responses[0].body)
        if status == 431:
            assert_error(responses[0], 431, "HEADERS_TOO_LARGE")
            assert len(responses) == 1
        else:
            assert [r.status_code for r in responses] == [200, 200]


def test_oversized_head_in_one_write_is_refused(srv: Server) -> None:
    resp = only_response(exchange(srv.port, request_head("/healthz", 125_000)))
    assert_error(resp, 431, "HEADERS_TOO_LARGE")


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path, ["--connections-max", "4", "--keep-alive-timeout-s", "60"])


def healthz_on(sock: socket.socket) -> int:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf or not buf.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        buf += chunk
    return int(buf.split(b" ", 2)[1])


def served_connection(port: int) -> socket.socket | None:
    """A connection the server has answered on (so it counts toward the cap), or None if it was shed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    if healthz_on(sock) == 200:
        return sock
    sock.close()
    return None


def test_connections_over_the_cap_are_shed(capped: Server) -> None:
    # Connections of the readiness check may still be closing: retry until each is served.
    held = [deadline_poll(lambda: served_connection(capped.port), timeout=20, what="a served connection")
            for _ in range(4)]
    try:
        for _ in range(REPEATS):
            with socket.create_connection(("127.0.0.1", capped.port), timeout=20) as extra:
                resp = only_response(read_to_eof(extra))
            assert_error(resp, 503, "TOO_MANY_CONNECTIONS")
            assert resp.headers["retry-after"] == "1"
        for sock in held:
            assert healthz_on(sock) == 200  # existing connections are not starved
    finally:
        for sock in held[1:]:
            sock.close()
    again = deadline_poll(lambda: served_connection(capped.port), timeout=20, what="a connection served after others closed")
    again.close()
    held[0].close()


def limits_of(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.MULTILINE)
    assert match, text
    return int(match.group(1)), int(match.group(2))


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc to read another process's limits")
def test_descriptor_soft_limit_is_raised(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.fail(f"this test needs a finite hard limit of at least 512, not {hard}")
    low = 256
    # Only fits once the limit is raised: started at `low`, the server would refuse it.
    srv = Server(tmp_path / "data", ["--connections-max", str(hard - 400)])
    srv.data_dir.mkdir()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            srv.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
        )
    try:
        deadline_poll(lambda: proc.poll() is not None or b"file descriptors:" in log_path.read_bytes(),
                      timeout=20, what="the server to log its descriptor limit")
        assert proc.poll() is None, log_path.read_text()
        assert limits_of(proc.pid) == (hard, hard)
        assert f"file descriptors: limit {hard}" in log_path.read_text()
    finally:
        proc.kill()
        proc.wait(10)


def test_connections_max_beyond_the_descriptor_limit_is_refused(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    too_many = (hard if hard != resource.RLIM_INFINITY else 2**40) + 1
    result = subprocess.run(
        [str(EXE), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
         "--connections-max", str(too_many)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "connections_max" in result.stderr and "file descriptors" in result.stderr


def test_fd_budget_counts_stream_files_and_reserve() -> None:
    settings = Settings(connections_max=100, open_stream_files_max=50)
    assert fd_budget.fds_needed(settings) == 150 + fd_budget.FD_RESERVE


@pytest.mark.parametrize("field, value", [
    ("connections_max", 0), ("request_read_timeout_s", 0.0), ("keep_alive_timeout_s", 0.0),
    ("request_header_bytes_max", 1023),
])
def test_connection_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


# -- Finding 6: request smuggling -------------------------------------------------


SMUGGLING = {
    "content-length-and-chunked": (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "chunked-and-content-length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    "conflicting-content-lengths": (b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "content-length-list": (b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    "gzip-transfer-coding": (b"Transfer-Encoding: gzip\r\n\r\nabc", 501),
    "two-transfer-encodings": (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "chunked-then-more": (b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
}


@pytest.mark.parametrize("case", SMUGGLING, ids=list(SMUGGLING))
def test_ambiguous_framing_is_refused_and_closed(srv: Server, stream_with_data: tuple[str, bytes], case: str) -> None:
    url, body = stream_with_data
    path = httpx.URL(url).path
    framing, status = SMUGGLING[case]
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n".encode()
    smuggled = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\n\r\nZ"
    resp = only_response(exchange(srv.port, head + framing + smuggled.encode()))  # one answer, then closed
    assert_error(resp, status)
    assert resp.headers["connection"] == "close"
    alive_with_data(srv, url, body)  # neither request appended anything


def test_transfer_encoding_in_http10_is_refused(srv: Server) -> None:
    resp = only_response(exchange(srv.port, b"POST /v1/stream/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    assert_error(resp, 400)


def test_plain_chunked_body_still_works(srv: Server, stream_with_data: tuple[str, bytes]) -> None:
    url, body = stream_with_data
    path = httpx.URL(url).path
    payload = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nxyz\r\n0\r\n\r\n").encode()
    assert only_response(exchange(srv.port, payload)).status_code == 204
    alive_with_data(srv, url, body + b"xyz")


# -- the h11 rules, sans IO, one byte at a time --------------------------------------


def feed(connection: h11.Connection, data: bytes, *, bytewise: bool) -> list[object]:
    events: list[object] = []
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        connection.receive_data(piece)
        while (event := connection.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            events.append(event)
    return events


@pytest.mark.parametrize("bytewise", [True, False], ids=["byte-at-a-time", "all-at-once"])
def test_head_at_the_limit_parses(bytewise: bool) -> None:
    events = feed(hypercorn_guard.GuardedConnection(HEADER_LIMIT), request_head("/", HEADER_LIMIT), bytewise=bytewise)
    assert isinstance(events[0], h11.Request)


@pytest.mark.parametrize("bytewise", [True, False], ids=["byte-at-a-time", "all-at-once"])
def test_head_one_byte_over_the_limit_is_431(bytewise: bool) -> None:
    with pytest.raises(h11.RemoteProtocolError) as caught:
        feed(hypercorn_guard.GuardedConnection(HEADER_LIMIT), request_head("/", HEADER_LIMIT + 1), bytewise=bytewise)
    assert caught.value.error_status_hint == 431


@pytest.mark.parametrize("bytewise", [True, False], ids=["byte-at-a-time", "all-at-once"])
def test_content_length_with_transfer_encoding_is_400(bytewise: bool) -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    connection = hypercorn_guard.GuardedConnection(HEADER_LIMIT)
    with pytest.raises(h11.RemoteProtocolError) as caught:
        feed(connection, data, bytewise=bytewise)
    assert caught.value.error_status_hint == 400
    assert connection.their_state is h11.ERROR and connection.error is caught.value


@pytest.mark.parametrize("bytewise", [True, False], ids=["byte-at-a-time", "all-at-once"])
def test_bytes_after_a_final_request_are_discarded(bytewise: bool) -> None:
    connection = hypercorn_guard.GuardedConnection(HEADER_LIMIT)
    events = feed(connection, b"GET / HTTP/1.0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", bytewise=bytewise)
    assert [type(e) for e in events] == [h11.Request, h11.EndOfMessage]
    connection.receive_data(b"")
    assert isinstance(connection.next_event(), h11.ConnectionClosed)


def test_mid_request_tracks_the_client() -> None:
    connection = hypercorn_guard.GuardedConnection(HEADER_LIMIT)
    assert not connection.mid_request()
    feed(connection, b"POST / HTTP/1.1\r\nHost: x\r\n", bytewise=False)
    assert connection.mid_request()  # head incomplete
    feed(connection, b"Content-Length: 2\r\n\r\na", bytewise=False)
    assert connection.mid_request()  # body incomplete
    feed(connection, b"b", bytewise=False)
    assert not connection.mid_request()  # the response is ours to produce: no client timeout


# -- the containment net, in process ---------------------------------------------------


@pytest.fixture
def guard_installed(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Installs the guard in this process and undoes it afterwards."""
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", hypercorn.trio.run.TCPServer)
    monkeypatch.setattr(hypercorn.protocol, "H11Protocol", hypercorn.protocol.H11Protocol)
    monkeypatch.setattr(hypercorn_guard, "_guard", None)
    settings = Settings()
    hypercorn_guard.install(settings)
    return settings


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_an_unexpected_error_ends_only_its_connection(
    guard_installed: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(self, event) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("a defect inside Hypercorn")

    monkeypatch.setattr(hypercorn_guard.GuardedH11Protocol, "handle", explode)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.testing.open_stream_to_socket_listener(listener)
    server_stream = await listener.accept()
    handler = hypercorn.trio.run.TCPServer(wrap_app(_app, 0, "asgi"), Config(), WorkerContext(None), {}, server_stream)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with caplog.at_level(logging.WARNING, logger="trio_streams.connections"):
        await handler.run()  # returns instead of raising into serve_listeners
    port = client.socket.getsockname()[1]
    assert any("a defect inside Hypercorn" in r.getMessage() and str(port) in r.getMessage() for r in caplog.records)
    assert await client.receive_some(100) == b""  # that connection was closed
    assert hypercorn_guard.statistics()["connections_open"] == 0
    assert hypercorn_guard.statistics()["connections_failed_total"] == 1
    await client.aclose()
    await listener.aclose()


async def test_cancellation_still_reaches_a_guarded_connection(guard_installed: Settings) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.testing.open_stream_to_socket_listener(listener)
    server_stream = await listener.accept()
    handler = hypercorn.trio.run.TCPServer(wrap_app(_app, 0, "asgi"), Config(), WorkerContext(None), {}, server_stream)
    finished = False
    async with trio.open_nursery() as nursery:
        async def serve() -> None:
            nonlocal finished
            await handler.run()
            finished = True  # only if the guard swallowed the cancellation

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert not finished
    await client.aclose()
    await listener.aclose()


def test_guard_is_pinned_to_the_installed_hypercorn() -> None:
    from importlib.metadata import version

    assert hypercorn_guard.HYPERCORN_VERSION == version("hypercorn")
    lock = (Path(__file__).resolve().parent.parent / "requirements.lock").read_text()
    assert f"Hypercorn=={hypercorn_guard.HYPERCORN_VERSION}" in lock
    assert f"h11=={hypercorn_guard.H11_VERSION}" in lock


def test_metrics_report_connections(srv: Server) -> None:
    values = srv.metrics()
    assert values["trio_streams_connections_open"] >= 1
    assert "trio_streams_connections_shed_total" in values
