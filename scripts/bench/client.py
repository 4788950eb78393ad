"""A keep-alive HTTP/1.1 client for the load generator: h11 over asyncio protocols.

h11 does the parsing; this adds what a benchmark needs from a client:
response times taken when the last byte is parsed (in ``data_received``,
not when the awaiting task wakes up), body bytes counted without being kept
unless asked, a callback per body chunk with its arrival time (SSE readers
look for their event in it), and a reconnect when the server says
``Connection: close``. Requests are never retried, so an append is never
sent twice.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

OnData = Callable[[bytes, float], None]


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes | None
    nbytes: int
    t: float  # perf_counter when the response was complete

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@dataclass(slots=True)
class _Pending:
    waiter: asyncio.Future[Response]
    keep_body: bool
    on_data: OnData | None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)
    nbytes: int = 0


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str) -> None:
        self.host = host.encode()
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.pending: _Pending | None = None
        self.lost = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(f"{host}:{port}"), host, port)
        return conn

    @property
    def reusable(self) -> bool:
        return not self.lost and self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request(self, method: str, target: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                *, keep_body: bool = False, on_data: OnData | None = None) -> asyncio.Future[Response]:
        if not self.reusable:
            raise ConnectionError("connection not reusable")
        all_headers = [("Host", self.host.decode()), *(headers or [])]
        if body or method in ("POST", "PUT"):
            all_headers.append(("Content-Length", str(len(body))))
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending = _Pending(waiter, keep_body, on_data)
        data = self.h11.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if body:
            data += self.h11.send(h11.Data(data=body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._drain_safely()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._drain_safely()
        return None

    def _drain_safely(self) -> None:
        """A malformed or cut-off response fails its request as a lost connection."""
        try:
            self._drain_events()
        except h11.ProtocolError as exc:
            self.lost = True
            self._fail(ConnectionError(f"HTTP/1.1 protocol error: {exc}"))
            self.close()

    def _drain_events(self) -> None:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            pending = self.pending
            if isinstance(event, h11.ConnectionClosed):
                self._fail(ConnectionError("server closed the connection"))
                return
            if pending is None:
                continue
            if isinstance(event, h11.Response):
                pending.status = event.status_code
                pending.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                if pending.on_data is not None:  # the head: a live reader is now connected
                    pending.on_data(b"", time.perf_counter())
            elif isinstance(event, h11.Data):
                self._on_body(pending, bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._finish(pending)

    @staticmethod
    def _on_body(pending: _Pending, chunk: bytes) -> None:
        pending.nbytes += len(chunk)
        if pending.keep_body:
            pending.parts.append(chunk)
        if pending.on_data is not None:
            pending.on_data(chunk, time.perf_counter())

    def _finish(self, pending: _Pending) -> None:
        t = time.perf_counter()
        self.pending = None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        body = b"".join(pending.parts) if pending.keep_body else None
        if not pending.waiter.done():
            pending.waiter.set_result(Response(pending.status, pending.headers, body, pending.nbytes, t))

    def _fail(self, exc: Exception) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending.waiter.done():
            pending.waiter.set_exception(exc)


# Node, uvicorn and Hypercorn close a keep-alive connection after 5 s idle; a
# request sent just as the server closes would be reset. A connection idle
# for longer than this is replaced before the next request (never retried).
IDLE_REOPEN_S = 2.0


class Client:
    """A keep-alive connection that reopens when the server has closed it or may be closing it."""

    reconnects = 0  # over all clients of the process

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: Connection | None = None
        self.last_used = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Client:
        client = cls(host, port)
        client.conn = await Connection.open(host, port)
        return client

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None, *, keep_body: bool = False,
                      on_data: OnData | None = None) -> Response:
        await self.refresh()
        try:
            return await self.conn.request(method, target, body, headers,  # type: ignore[union-attr]
                                           keep_body=keep_body, on_data=on_data)
        finally:
            self.last_used = time.monotonic()

    async def refresh(self) -> None:
        """Opens a new connection if the current one is closed, or idle long enough to be closing."""
        stale = time.monotonic() - self.last_used > IDLE_REOPEN_S
        if self.conn is None or not self.conn.reusable or stale:
            if self.conn is not None:
                self.conn.close()
                Client.reconnects += 1
            self.conn = await Connection.open(self.host, self.port)
            self.last_used = time.monotonic()

    def abort(self) -> None:
        """Drops the connection mid-response (an SSE reader leaving)."""
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.abort()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def open_many(host: str, port: int, count: int, batch: int = 50) -> list[Client]:
    """``count`` connections, opened in batches: listen backlogs are finite."""
    clients: list[Client] = []
    while len(clients) < count:
        n = min(batch, count - len(clients))
        clients += await asyncio.gather(*(Client.open(host, port) for _ in range(n)))
    return clients
