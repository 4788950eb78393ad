"""The floor: a trivial Hypercorn-Trio ASGI app that stores nothing.

    python -m scripts.bench.floor_app --port P [--long-poll-timeout-ms 500]

It speaks just enough of the protocol for the bench's scenarios, with canned
responses: PUT 201 and POST 204 with a ``Stream-Next-Offset``; a catch-up
GET answers canned bytes up to the number of bytes appended (1 MiB per
response, like ours); long-polls and SSE readers park until a POST to their
stream wakes them with that POST's body. Per stream it keeps a byte count
and the last body, nothing else. What it reaches on this machine is what
Hypercorn and Trio allow at most: the floor under any server built on them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

READ_CHUNK_BYTES_MAX = 1024 * 1024
HARD_EXIT_AFTER_S = 2.0
CANNED = bytes(range(256)) * (READ_CHUNK_BYTES_MAX // 256)


class Stream:
    __slots__ = ("total", "last", "appended")

    def __init__(self) -> None:
        self.total = 0
        self.last = b""
        self.appended = trio.Event()

    def append(self, body: bytes) -> None:
        self.total += len(body)
        self.last = body
        self.appended.set()
        self.appended = trio.Event()


def offset_header(n: int) -> tuple[bytes, bytes]:
    return b"stream-next-offset", f"{n:016d}".encode()


def parse_offset(raw: str, stream: Stream) -> int:
    if raw in ("", "-1"):
        return 0
    if raw == "now":
        return stream.total
    return int(raw) if raw.isdigit() else 0


class FloorApp:
    def __init__(self, long_poll_timeout_s: float) -> None:
        self.long_poll_timeout_s = long_poll_timeout_s
        self.streams: dict[str, Stream] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        method = scope["method"]
        if method == "HEAD" and scope["path"] not in self.streams:
            await respond(send, 404, [])
            return
        stream = self.streams.setdefault(scope["path"], Stream())
        if method == "POST":
            stream.append(await read_body(receive))
            await respond(send, 204, [offset_header(stream.total)])
        elif method in ("PUT", "HEAD"):
            await read_body(receive)
            await respond(send, 201 if method == "PUT" else 200,
                          [offset_header(stream.total), (b"content-type", b"text/plain")])
        else:
            await self.get(scope, send, stream)

    async def get(self, scope: Scope, send: Send, stream: Stream) -> None:
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        offset = parse_offset(query.get("offset", "-1"), stream)
        live = query.get("live")
        if live == "sse":
            await self.sse(send, stream)
        elif live == "long-poll" and offset >= stream.total:
            await self.long_poll(send, stream)
        else:
            body = CANNED[: min(READ_CHUNK_BYTES_MAX, max(0, stream.total - offset))]
            up_to_date = b"true" if offset + len(body) >= stream.total else b"false"
            await respond(send, 200, [offset_header(offset + len(body)), (b"stream-up-to-date", up_to_date),
                                      (b"content-type", b"application/octet-stream")], body)

    async def long_poll(self, send: Send, stream: Stream) -> None:
        appended = stream.appended
        with trio.move_on_after(self.long_poll_timeout_s):
            await appended.wait()
        if not appended.is_set():
            await respond(send, 204, [offset_header(stream.total), (b"stream-up-to-date", b"true")])
            return
        await respond(send, 200, [offset_header(stream.total), (b"stream-cursor", b"1"),
                                  (b"content-type", b"text/plain")], stream.last)

    async def sse(self, send: Send, stream: Stream) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        while True:
            await stream.appended.wait()
            control = json.dumps({"streamNextOffset": f"{stream.total:016d}", "upToDate": True}).encode()
            event = b"event: data\ndata: " + stream.last + b"\n\nevent: control\ndata: " + control + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            # Parked readers can hold Hypercorn's graceful stop up on a busy
            # machine; the floor stores nothing, so a hard exit loses nothing.
            threading.Timer(HARD_EXIT_AFTER_S, os._exit, (0,)).start()
            return


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--long-poll-timeout-ms", type=int, default=30_000)
    args = parser.parse_args(argv)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.backlog = 4096
    config.graceful_timeout = 1.0
    config.keep_alive_max_requests = 1_000_000  # as ours: writers keep one connection for long
    app = FloorApp(args.long_poll_timeout_ms / 1e3)
    print(f"floor app listening on http://{args.host}:{args.port}", flush=True)
    trio.run(functools.partial(serve, app, config, shutdown_trigger=until_signal))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
