"""The connection guard in process: what it writes, and when it reads.

Hypercorn's real connection handler (``GuardedTCPServer``, h11 and all) on
one end of a socket pair; the application is a stand-in. Checked: a
response's head goes out in the same socket write as its body's first
bytes, and a long-poll connection's next request waits for the fan-out's
admission (the real app queues it in ``FanOut.admit``, tests/test_fanout.py).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext

from conftest import inproc_settings_for
from trio_streams.http import hypercorn_guard


class _CountingStream:
    """The server's end of the socket, recording its writes (Trio's SocketStream is final)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.writes: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self._stream.send_all(data)


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, app: Any) -> AsyncIterator[tuple[trio.SocketStream, _CountingStream]]:
    """(the client's end, the server's end) of one connection served by the guarded handler."""
    hypercorn_guard.install(inproc_settings_for(tmp_path))
    ours, theirs = socket.socketpair()
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    served = _CountingStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
    server = hypercorn_guard.GuardedTCPServer(ASGIWrapper(app), Config(), WorkerContext(None), {},
                                              served)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        with trio.fail_after(10):  # a bound for a failure only
            yield client, served
        await client.aclose()
        nursery.cancel_scope.cancel()


class _Responder:
    """Answers by the query: ``status=N``, ``pause`` (wait for ``go`` between head and body)."""

    def __init__(self) -> None:
        self.go = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = scope["query_string"].decode()
        status = int(query.split("status=")[1].split("&")[0]) if "status=" in query else 200
        body = b"" if status == 204 else b"ok"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())] if body else []})
        if "pause" in query:
            await self.go.wait()
        await send({"type": "http.response.body", "body": body})


async def _exchange(client: trio.SocketStream, request: bytes, ending: bytes) -> bytes:
    await client.send_all(request)
    data = b""
    while not data.endswith(ending):
        data += await client.receive_some(4096)
    return data


async def test_a_response_head_and_body_go_out_in_one_write(tmp_path: Path) -> None:
    app = _Responder()
    async with _serving(tmp_path, app) as (client, served):
        got = await _exchange(client, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\nok")
        assert got.startswith(b"HTTP/1.1 200 ")
        assert len(served.writes) == 1 and served.writes[0] == got

        served.writes.clear()
        got = await _exchange(client, b"GET /a?status=204 HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 204 ") and served.writes == [got]

        served.writes.clear()
        got = await _exchange(client, b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ") and served.writes == [got]


async def test_a_head_waits_for_the_first_body_bytes_then_leaves_with_them(tmp_path: Path) -> None:
    app = _Responder()
    async with _serving(tmp_path, app) as (client, served):
        await client.send_all(b"GET /a?pause HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert served.writes == []  # the app sent its head and waits: nothing written yet
        app.go.set()
        data = b""
        while not data.endswith(b"\r\n\r\nok"):
            data += await client.receive_some(4096)
        assert served.writes == [data]


class _App:
    def __init__(self) -> None:
        self.admissions = 0
        self.gate = trio.Event()
        self.served: list[str] = []

    async def admit_after_long_poll(self) -> None:
        self.admissions += 1
        await self.gate.wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.served.append(scope["query_string"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _response(client: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        data += await client.receive_some(4096)
    return data


async def _request(client: trio.SocketStream, query: str) -> None:
    await client.send_all(f"GET /v1/stream/s?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_only_the_request_after_a_long_poll_waits_for_admission(tmp_path: Path) -> None:
    app = _App()
    async with _serving(tmp_path, app) as (client, _):
        await _request(client, "offset=0")
        await _response(client)
        await _request(client, "offset=0&live=long-poll")
        await _response(client)
        assert app.admissions == 0  # a catch-up read's successor, and the long-poll itself, go straight in

        await _request(client, "offset=2")  # the re-poll, here a catch-up: held unparsed
        await trio.testing.wait_all_tasks_blocked()
        assert app.admissions == 1
        assert app.served == ["offset=0", "offset=0&live=long-poll"]

        app.gate.set()
        await _response(client)
        assert app.served[-1] == "offset=2"
        await _request(client, "offset=4")  # after a catch-up read: no admission
        await _response(client)
        assert app.admissions == 1
