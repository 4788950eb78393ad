"""The connection guard holds a long-poll connection's next request for the fan-out's admission.

Hypercorn's real connection handler (``GuardedTCPServer``, h11 and all) on
one end of a socket pair, in process; the application is a stand-in that
answers every request and counts the admissions the guard asks it for
(the real one queues them in ``FanOut.admit``, tests/test_fanout.py).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext

from conftest import inproc_settings_for
from trio_streams.http import hypercorn_guard


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
    hypercorn_guard.install(inproc_settings_for(tmp_path))
    app = _App()
    ours, theirs = socket.socketpair()
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    server = hypercorn_guard.GuardedTCPServer(
        ASGIWrapper(app), Config(), WorkerContext(None), {}, trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        with trio.fail_after(10):  # a bound for a failure only
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
        await client.aclose()
        nursery.cancel_scope.cancel()
