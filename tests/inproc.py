"""In-process HTTP: drive the ASGI ``App`` with a fake ASGI server, no sockets.

``running_app(settings)`` runs the app's lifespan in a nursery (startup, then
``/healthz`` polled until 200; shutdown at exit, which must complete), and
hands out an ``InprocServer`` whose ``client`` issues requests the way
Hypercorn presents them: an ``http`` scope with lower-cased headers, a
``Host`` header, ``raw_path`` without the query, ``path`` percent-decoded,
and the body as ``http.request`` messages (whole, or piece by piece with
``more_body``). ``client.request`` returns the whole response (``body_end`` makes the
client stall or vanish mid-body); ``client.stream`` yields body pieces as
the app sends them and can deliver ``http.disconnect`` at any point, also
before the response starts (``wait_for_start=False``, for a parked long-poll).

Every response is checked against the ASGI rules Hypercorn would otherwise
enforce silently or not at all: ``http.response.start`` first and once, no
body after ``more_body: False``, bytes only, no body on HEAD/204/304, a
declared Content-Length matched exactly, and a complete response before
the app returns (unless the client went away). A violation fails the test
even if the app swallows the exception it raises inside ``send``.

Not modelled (tests of these need a real process, tests/conftest.py
``Server``): HTTP/1.1 framing and parsing (h11), Hypercorn's connection
handling and guard (http/hypercorn_guard.py), keep-alive, socket-level
disconnects, TLS and HTTP/2, and write backpressure: ``send`` never blocks
on a slow reader, body pieces queue until the test reads them.

Time and worker threads. Under pytest-trio's ``autojump_clock``
(``MockClock(autojump_threshold=0)``) the clock jumps to the next deadline
as soon as every task is blocked, and a task waiting in
``trio.to_thread.run_sync`` counts as blocked. File I/O (recovery, WAL
writes and fsyncs, stream reads, checkpoints) runs in worker threads, so
with real threads virtual time would leap ahead while a disk write is in
flight: a 30 s long-poll would time out during the append meant to wake
it (start-up itself fails that way). Under ``mock_clock`` (which moves only
when the test jumps it) the opposite: nothing can wait for a thread by
polling. So on any MockClock ``running_app`` runs worker-thread functions
inline on the event loop (``inline_worker_threads``): the loop blocks for
the duration of the call, no task is ever "blocked" on a thread, virtual
time moves only when the app really waits on a timer, and once
``wait_all_tasks_blocked()`` returns the app has done all it can. Under
the real clock (no clock fixture) threads stay real.

pytest-trio takes the clock from the test function's own arguments only:
a fixture that depends on ``autojump_clock`` does not put the test on it.

Only trio time is virtual unless the test says otherwise: by default the
app's wall clock (cursors, TTL, Expires-At) is ``time.time()``. Pass
``clock=trio_streams.clock.trio_driven_clock(start)`` to ``running_app``
and the MockClock moves the wall clock too, so expiry runs in virtual time.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

import httpx
import trio
import trio.testing

from conftest import SseEvent, parse_metrics
from trio_streams.auth.config import AuthConfig
from trio_streams.clock import SYSTEM_CLOCK, Clock
from trio_streams.config import Settings
from trio_streams.http.app import App
from trio_streams.service import Service
from trio_streams.storage.fileops import FileOps

HOST = "127.0.0.1"
PORT = 4437
READY_TIMEOUT_S = 20.0
# A request that takes longer than this (trio time: virtual under a MockClock) is a hang.
REQUEST_TIMEOUT_S = 120.0
# After a disconnect or at shutdown the app must finish within this (trio time).
SETTLE_TIMEOUT_S = 60.0
BODILESS_STATUSES = (204, 304)
BODY_ENDS = ("complete", "held", "disconnect")

HeaderItems = Mapping[str, str | bytes] | Iterable[tuple[str | bytes, str | bytes]]
Content = bytes | Iterable[bytes] | None


class AsgiViolation(AssertionError):
    """The app broke the ASGI contract (a bug Hypercorn would hide or turn into a cut response)."""


@dataclass
class Response:
    """A complete response; ``body`` and ``content`` are the same bytes (conftest's helpers use either)."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    @property
    def content(self) -> bytes:
        return self.body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


# -- worker threads under the autojump clock ------------------------------------


@contextlib.contextmanager
def inline_worker_threads() -> Iterator[None]:
    """Runs ``trio.to_thread.run_sync`` functions on the event loop, keeping its checkpoint semantics."""
    original = trio.to_thread.run_sync

    async def run_inline(fn: Any, *args: Any, **_options: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return fn(*args)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    trio.to_thread.run_sync = run_inline  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = original


def on_mock_clock() -> bool:
    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


def clock_stands_still() -> bool:
    """A MockClock that moves only when the test jumps it (``mock_clock``)."""
    clock = trio.lowlevel.current_clock()
    return isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold == math.inf and clock.rate == 0


async def _pause(seconds: float) -> None:
    """Lets time pass between two polls, if anything can make it pass."""
    if clock_stands_still():
        raise AssertionError("still waiting, and the MockClock moves only when the test jumps it")
    await trio.sleep(seconds)


# -- one exchange: the receive and send the app is given -------------------------


class _Exchange:
    """Delivers one request to the app and records its response, checking ASGI rules as they happen."""

    def __init__(self, method: str, messages: list[dict[str, Any]], body_end: str) -> None:
        self.method = method
        self._messages = messages
        self._body_end = body_end
        self.receive_calls = 0
        self.disconnected = trio.Event()
        self.started = trio.Event()
        self.finished = trio.Event()  # the response is complete
        self.status = 0
        self.headers = httpx.Headers()
        self.violations: list[str] = []
        self.pieces_in, self.pieces_out = trio.open_memory_channel[bytes](math.inf)  # no backpressure: see docstring
        self.body_length = 0

    def disconnect(self) -> None:
        self.disconnected.set()

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        if self._messages and not self.disconnected.is_set():
            await trio.lowlevel.checkpoint()
            return self._messages.pop(0)
        if self._body_end == "disconnect":
            self.disconnect()
        # Hypercorn: after the body (or mid-body, for a client that stops
        # sending) receive() waits until the connection ends or the response does.
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_set_then_cancel, self.disconnected, scope)
                if self._body_end == "complete":
                    nursery.start_soon(_set_then_cancel, self.finished, scope)
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        problem = self._check(message)
        if problem is not None:
            self.violations.append(problem)
            raise AsgiViolation(problem)
        if message["type"] == "http.response.start":
            self._start(message)
        else:
            self._body(message)

    def _check(self, message: Mapping[str, Any]) -> str | None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self.started.is_set():
                return "second http.response.start"
            return _start_problem(message)
        if kind != "http.response.body":
            return f"unexpected message type {kind!r}"
        if not self.started.is_set():
            return "http.response.body before http.response.start"
        if self.finished.is_set():
            return "http.response.body after more_body: False"
        return self._body_problem(message)

    def _body_problem(self, message: Mapping[str, Any]) -> str | None:
        body = message.get("body", b"")
        if not isinstance(body, bytes):
            return f"body is {type(body).__name__}, not bytes"
        if body and (self.method == "HEAD" or self.status in BODILESS_STATUSES):
            return f"{len(body)} body bytes on a {self.method} {self.status} response"
        return self._length_problem(self.body_length + len(body), final=not message.get("more_body", False))

    def _length_problem(self, total: int, *, final: bool) -> str | None:
        """h11 refuses a body longer than the declared Content-Length and cuts the connection on a shorter one."""
        declared = self.headers.get("content-length")
        if declared is None or self.method == "HEAD":  # a HEAD response declares the GET's length
            return None
        if total > int(declared) or (final and total != int(declared)):
            return f"body of {total} bytes against Content-Length {declared}"
        return None

    def _start(self, message: Mapping[str, Any]) -> None:
        self.status = message["status"]
        self.headers = httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])])
        self.started.set()

    def _body(self, message: Mapping[str, Any]) -> None:
        body = message.get("body", b"")
        self.body_length += len(body)
        if body and not self.disconnected.is_set():
            self.pieces_in.send_nowait(body)
        if not message.get("more_body", False):
            self.finished.set()
            self.pieces_in.close()

    def after_app_returned(self) -> None:
        """Raises the first violation, or an incomplete response to a client still there."""
        if self.violations:
            raise AsgiViolation(self.violations[0])
        if not self.finished.is_set() and not self.disconnected.is_set():
            raise AsgiViolation("the app returned without completing its response"
                                + ("" if self.started.is_set() else " (none started)"))
        self.pieces_in.close()


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _start_problem(message: Mapping[str, Any]) -> str | None:
    status = message.get("status")
    if not isinstance(status, int) or not 100 <= status <= 599:
        return f"bad status {status!r}"
    for pair in message.get("headers", []):
        if len(pair) != 2 or not all(isinstance(part, bytes) for part in pair):
            return f"header {pair!r} is not a pair of bytes"
        if pair[0] != pair[0].lower():
            return f"header name {pair[0]!r} is not lower-case"
    return None


# -- requests ---------------------------------------------------------------------


def _header_pairs(headers: HeaderItems | None) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return [(_latin1(k).lower(), _utf8(v)) for k, v in items]


def _latin1(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _body_messages(content: Content, body_end: str) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    """The http.request messages for ``content``, and the framing header a client would add."""
    assert body_end in BODY_ENDS, body_end
    if content is None or isinstance(content, (bytes, bytearray)):
        body = bytes(content or b"")
        if body_end != "complete":
            return [{"type": "http.request", "body": body, "more_body": True}], []
        return [{"type": "http.request", "body": body, "more_body": False}], [(b"content-length", str(len(body)).encode())]
    messages = [{"type": "http.request", "body": bytes(piece), "more_body": True} for piece in content]
    if body_end == "complete":
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    return messages, [(b"transfer-encoding", b"chunked")]


def _target(path: str | bytes, params: Mapping[str, str] | str | None) -> bytes:
    target = _utf8(path)
    if params:
        query = params if isinstance(params, str) else urlencode(params)
        target += b"?" + query.encode("latin-1")
    return target


class InprocClient:
    """Requests to one in-process app; the method names follow httpx, but every call is async."""

    def __init__(self, app: App, authority: str) -> None:
        self.app = app
        self.authority = authority
        self.last_exchange: _Exchange | None = None  # for tests that look at how the app read the request

    def _scope(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        raw_path, _, query = target.partition(b"?")
        host, _, port = self.authority.rpartition(":")
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.1"}, "http_version": "1.1",
            "method": method, "scheme": "http", "root_path": "", "extensions": {},
            # As Hypercorn does it: lossy decoding; the app decodes raw_path itself.
            "path": unquote_to_bytes(raw_path).decode("utf-8", errors="replace"), "raw_path": raw_path,
            "query_string": query, "headers": headers, "client": ("127.0.0.1", 50000),
            "server": (host, int(port)),
        }

    def _exchange(self, method: str, path: str | bytes, params: Mapping[str, str] | str | None, headers: HeaderItems | None,
                  content: Content, body_end: str) -> tuple[dict[str, Any], _Exchange]:
        messages, framing = _body_messages(content, body_end)
        pairs = _header_pairs(headers)
        names = {name for name, _ in pairs}
        if b"host" not in names:
            pairs.insert(0, (b"host", self.authority.encode()))
        if method not in ("GET", "HEAD", "OPTIONS", "DELETE") or content is not None:
            pairs += [pair for pair in framing if not names & {b"content-length", b"transfer-encoding"}]
        scope = self._scope(method.upper(), _target(path, params), pairs)
        return scope, _Exchange(method.upper(), messages, body_end)

    async def request(self, method: str, path: str | bytes, *, params: Mapping[str, str] | str | None = None,
                      headers: HeaderItems | None = None, content: Content = None,
                      body_end: str = "complete") -> Response:
        """The whole response; status 0 when the client went away before one started.

        ``body_end``: "complete"; "held", the body's last message never comes
        (a stalled client); "disconnect", the client goes away after the pieces given.
        """
        scope, exchange = self._exchange(method, path, params, headers, content, body_end)
        with trio.fail_after(REQUEST_TIMEOUT_S):
            await self.app(scope, exchange.receive, exchange.send)
        exchange.after_app_returned()
        self.last_exchange = exchange
        return Response(exchange.status, exchange.headers, b"".join(_drain(exchange.pieces_out)))

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str | bytes, *, params: Mapping[str, str] | str | None = None,
                     headers: HeaderItems | None = None, content: Content = None,
                     wait_for_start: bool = True) -> AsyncIterator[StreamingResponse]:
        """A response read as the app sends it; leaving the block disconnects (if it had not ended).

        ``wait_for_start=False`` enters the block at once (status 0 until the
        response starts), so a test can disconnect a long-poll still waiting.
        """
        scope, exchange = self._exchange(method, path, params, headers, content, "complete")
        async with trio.open_nursery() as nursery:
            app_done = trio.Event()

            async def run_app() -> None:
                try:
                    await self.app(scope, exchange.receive, exchange.send)
                finally:
                    app_done.set()

            nursery.start_soon(run_app)
            if wait_for_start:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await _first_of(exchange.started, app_done)
                if not exchange.started.is_set():
                    exchange.after_app_returned()
            response = StreamingResponse(exchange, app_done)
            try:
                yield response
            finally:
                exchange.disconnect()
                with trio.fail_after(SETTLE_TIMEOUT_S):
                    await app_done.wait()
        exchange.after_app_returned()

    async def get(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("HEAD", path, **kwargs)

    async def put(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    async def options(self, path: str | bytes, **kwargs: Any) -> Response:
        return await self.request("OPTIONS", path, **kwargs)


def _drain(channel: trio.MemoryReceiveChannel[bytes]) -> Iterator[bytes]:
    while True:
        try:
            yield channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return


async def _first_of(*events: trio.Event) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for event in events:
                nursery.start_soon(_set_then_cancel, event, scope)


class StreamingResponse:
    """Status and headers at once; body pieces as the app sends them."""

    def __init__(self, exchange: _Exchange, app_done: trio.Event) -> None:
        self._exchange = exchange
        self.app_done = app_done

    @property
    def status_code(self) -> int:
        return self._exchange.status

    @property
    def headers(self) -> httpx.Headers:
        return self._exchange.headers

    async def receive_piece(self) -> bytes | None:
        """The next body piece, or None once the response has ended (or the client disconnected)."""
        try:
            return await self._exchange.pieces_out.receive()
        except trio.EndOfChannel:
            return None

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        while (piece := await self.receive_piece()) is not None:
            yield piece

    async def disconnect(self) -> None:
        """The client goes away now: ``http.disconnect``, then the app must finish."""
        self._exchange.disconnect()
        self._exchange.pieces_in.close()
        with trio.fail_after(SETTLE_TIMEOUT_S):
            await self.app_done.wait()

    @property
    def ended(self) -> bool:
        return self._exchange.finished.is_set()


# -- SSE over a streaming response --------------------------------------------------


class AsyncSseReader:
    """Incremental SSE parsing (the WHATWG rules conftest.SseReader follows) over a ``StreamingResponse``."""

    def __init__(self, response: StreamingResponse) -> None:
        self.response = response
        self._buf = b""
        self.eof = False

    async def _more(self) -> None:
        piece = await self.response.receive_piece()
        if piece is None:
            self.eof = True
        else:
            self._buf += piece

    async def _next_line(self) -> bytes | None:
        while True:
            end = re.search(rb"\r\n|\r|\n", self._buf)
            # A lone \r at the end of the buffer may be the first half of \r\n.
            if end is not None and (end.group() != b"\r" or end.end() < len(self._buf) or self.eof):
                line, self._buf = self._buf[:end.start()], self._buf[end.end():]
                return line
            if self.eof:
                return None
            await self._more()

    async def next_event(self) -> SseEvent | None:
        """The next dispatched event, or None at the end of the response."""
        fields: dict[str, Any] = {"event": "message", "data_lines": [], "id": None}
        seen = False
        while (raw := await self._next_line()) is not None:
            line = raw.decode("utf-8")  # must be valid UTF-8 on its own
            if not line:
                if seen:
                    return SseEvent(**fields)
            elif not line.startswith(":"):
                seen = _sse_field(fields, line) or seen
        return None

    async def until(self, predicate: Any) -> list[SseEvent]:
        """Events up to and including the first one matching ``predicate``."""
        events: list[SseEvent] = []
        while (event := await self.next_event()) is not None:
            events.append(event)
            if predicate(event):
                return events
        raise AssertionError(f"SSE stream ended before the expected event; got {events}")

    async def rest(self) -> list[SseEvent]:
        """Every remaining event up to the end of the response (which must come)."""
        events = []
        while (event := await self.next_event()) is not None:
            events.append(event)
        return events


def _sse_field(fields: dict[str, Any], line: str) -> bool:
    """Applies one field line; True when it makes the pending event dispatchable."""
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name == "event":
        fields["event"] = value
        return True
    if name == "data":
        fields["data_lines"].append(value)
        return True
    if name == "id":
        fields["id"] = value
    return False


# -- the app's lifetime ----------------------------------------------------------------


@dataclass
class InprocServer:
    """A running in-process app: its settings, a client, and the observations tests make."""

    app: App
    settings: Settings
    client: InprocClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = InprocClient(self.app, f"{HOST}:{PORT}")

    @property
    def url(self) -> str:
        return f"http://{self.client.authority}"

    def stream_url(self, name: str) -> str:
        return f"{self.url}{self.settings.stream_prefix}{name}"

    async def metrics(self) -> dict[str, float]:
        return parse_metrics((await self.client.get("/metrics")).text)

    async def subscribers(self) -> int:
        return int((await self.metrics()).get("trio_streams_subscribers", 0))

    async def wait_subscribers(self, predicate: Any, what: str = "subscriber count", timeout: float = 10.0) -> int:
        """Polls the subscriber gauge once everything has settled; fails after ``timeout`` (trio time)."""
        seen: list[int] = []
        with trio.move_on_after(timeout):
            while True:
                await trio.testing.wait_all_tasks_blocked()
                seen.append(await self.subscribers())
                if predicate(seen[-1]):
                    return seen[-1]
                await _pause(0.01)
        raise AssertionError(f"timed out waiting for {what}; last subscriber counts {seen[-5:]}")

    async def wait_ready(self) -> None:
        # Real time: under an autojumping clock a trio deadline would pass in no time at all.
        end = time.monotonic() + READY_TIMEOUT_S
        while True:
            await trio.testing.wait_all_tasks_blocked()  # with inline threads, recovery is over by then
            if (await self.client.get("/healthz")).status_code == 200:
                return
            if time.monotonic() > end:
                raise AssertionError(f"app not ready after {READY_TIMEOUT_S}s")
            await _pause(0.005)


class _Lifespan:
    def __init__(self) -> None:
        self.shutdown_requested = trio.Event()
        self.started = trio.Event()
        self.stopped = trio.Event()
        self._sent_startup = False

    async def receive(self) -> dict[str, Any]:
        if not self._sent_startup:
            self._sent_startup = True
            return {"type": "lifespan.startup"}
        await self.shutdown_requested.wait()
        return {"type": "lifespan.shutdown"}

    async def send(self, message: Mapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        kind = message["type"]
        if kind == "lifespan.startup.complete" and not self.started.is_set():
            self.started.set()
        elif kind == "lifespan.shutdown.complete" and self.shutdown_requested.is_set():
            self.stopped.set()
        else:
            raise AsgiViolation(f"unexpected lifespan message {message!r}")


@contextlib.asynccontextmanager
async def running_app(settings: Settings, clock: Clock = SYSTEM_CLOCK,
                      auth: AuthConfig | None = None, ops: FileOps | None = None) -> AsyncIterator[InprocServer]:
    """The app with its lifespan running: ready on entry, shut down cleanly on exit.
    ``ops``: the storage's file calls go through it (faults injected)."""
    threads = inline_worker_threads() if on_mock_clock() else contextlib.nullcontext()
    with threads:
        app = App(settings, clock, auth)
        if ops is not None:
            app.service = Service(settings, ops, clock, observer=app.metrics.observer)
        lifespan = _Lifespan()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan.receive, lifespan.send)
            with trio.fail_after(SETTLE_TIMEOUT_S):
                await lifespan.started.wait()
            server = InprocServer(app, settings)
            await server.wait_ready()
            try:
                yield server
            finally:
                lifespan.shutdown_requested.set()
                with trio.fail_after(SETTLE_TIMEOUT_S):
                    await lifespan.stopped.wait()
