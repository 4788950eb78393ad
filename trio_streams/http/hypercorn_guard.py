"""Hardening of Hypercorn's Trio worker: no connection can end the process or wedge others.

Written against Hypercorn 0.18.0 and h11 0.16.0; both versions are asserted
at import, because the classes below override private methods whose
behaviour they rely on. When a pin changes, re-read
``hypercorn/trio/tcp_server.py`` and ``hypercorn/protocol/h11.py`` and
re-run ``tests/test_http_connections.py`` before moving the pin here.

Defects worked around (all reproducible with raw sockets):

* ``TCPServer.run`` catches only ``OSError``. Anything else raised while
  serving one connection escapes ``trio.serve_listeners`` and ends the
  process. Upstream: pgjones/hypercorn#203 ("H11 Got data when expected
  EOF", open: a scanner kills the Trio worker), #225 (trailing data after
  a websocket upgrade crashes the server, open), #177; PR #228 ("Don't
  completely crash server on uncaught exception") was merged upstream but
  0.18.0's Trio ``TCPServer.run`` still catches only ``OSError``.
  ``GuardedTCPServer.run`` logs such an exception at WARNING with the peer
  address and closes that one connection.
* ``TCPServer._close`` sends EOF without the send lock, so a concurrent
  locked ``send_all`` raises ``trio.BusyResourceError`` (not caught by
  ``protocol_send``). The lock cannot be taken there: ``_close`` is also
  what unblocks a ``send_all`` stuck on a client that stopped reading. The
  colliding send belongs to a connection being closed, so it is dropped.
* On any h11 ``RemoteProtocolError`` Hypercorn answers with an error
  response if ours has not started. Bytes after a final request
  (HTTP/1.0, ``Connection: close``) raise one, so a valid request got a 400
  while the application was still answering it — and the two raced on the
  socket. RFC 9112 section 9.6: such bytes are not processed; they are
  now discarded and the request gets its own answer.
* h11 checks ``max_incomplete_event_size`` only when a head is still
  incomplete (python-hyper/h11#182), so a head of any size that arrives in
  one read is accepted. ``GuardedConnection`` measures the whole head.
* h11 lets ``Transfer-Encoding`` win over ``Content-Length`` silently;
  RFC 9112 section 6.1 asks for such requests to be refused or the
  connection closed (request smuggling). Both present is now a 400.
* ``read_timeout`` applies to every read, so it would also cut long-polls
  and SSE streams, whose clients legitimately send nothing. Only a client
  that is mid-request is timed out here (408).
* Websocket upgrades reach a websocket path the application does not
  serve (500s, and #225); the Upgrade header is ignored instead.
* ``protocol_send`` writes with a shielded ``send_all`` and no timeout, so a
  client that stops reading holds its connection, its task and shutdown
  forever. Writes go through ``send_timeout.SendDeadlines`` instead: each
  256 KiB piece must be accepted within ``send_timeout_s``, and shutdown
  caps them all at the grace period.
* Not a defect, a cost: the head and the body of a response were two
  socket writes; the head now goes out with the body's first bytes.
* Not a defect, a priority: the next request on a connection whose last
  request was a long-poll is read only when the readers' wake-ups queued
  before it have been given (``streams/fanout.py``, admission), so 1,000
  re-polls are not parsed in the rounds that the rest of a fan-out needs.
* There is no connection limit. ``install`` adds one: a connection over
  ``connections_max`` is answered 503 and closed at once.

``install`` replaces the classes Hypercorn looks up when it serves, so it
works under ``trio-streams serve`` and under ``hypercorn -k trio``
(``create_app`` calls it). Error responses written here carry the same
JSON body and headers as the application's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from importlib.metadata import version
from typing import Any

import h11
import hypercorn.protocol
import hypercorn.trio.run
import trio
from h11._receivebuffer import blank_line_regex
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent, Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from ..config import Settings
from ..auth.cors import static_origin
from ..quick import taken
from .asgi import common_headers, error_body
from .send_timeout import SendDeadlines

HYPERCORN_VERSION = "0.18.0"
H11_VERSION = "0.16.0"

for _name, _pinned in (("hypercorn", HYPERCORN_VERSION), ("h11", H11_VERSION)):
    if version(_name) != _pinned:
        raise RuntimeError(
            f"trio_streams.http.hypercorn_guard is written against {_name} {_pinned}, "
            f"found {version(_name)}: review the guard before changing the pin"
        )

log = logging.getLogger("trio_streams.connections")

# The statuses h11 hints at, plus our 408.
_ERROR_CODES = {400: "BAD_REQUEST", 408: "REQUEST_TIMEOUT", 431: "HEADERS_TOO_LARGE", 501: "NOT_IMPLEMENTED"}


@dataclasses.dataclass
class _Guard:
    settings: Settings
    open_connections: int = 0
    shed_connections: int = 0
    failed_connections: int = 0


_guard: _Guard | None = None


def install(settings: Settings) -> None:
    """Makes Hypercorn's Trio worker serve every connection through the classes below."""
    global _guard
    _guard = _Guard(settings)
    hypercorn.trio.run.TCPServer = GuardedTCPServer  # type: ignore[misc]
    hypercorn.protocol.H11Protocol = GuardedH11Protocol  # type: ignore[misc]


def statistics() -> dict[str, int]:
    """Connection counters for /metrics; empty when the guard is not installed."""
    if _guard is None:
        return {}
    return {
        "connections_open": _guard.open_connections,
        "connections_shed_total": _guard.shed_connections,
        "connections_failed_total": _guard.failed_connections,
    }


def _settings() -> Settings:
    assert _guard is not None, "hypercorn_guard.install() was not called"
    return _guard.settings


# -- h11: what the parser leaves to its user ----------------------------------


class GuardedConnection(h11.Connection):
    """h11's server side, plus the framing rules of RFC 9112 that h11 leaves out.

    Rules raise ``LocalProtocolError`` from inside the event extraction, so
    h11 itself marks the client ERROR and re-raises a ``RemoteProtocolError``
    with the status hint, exactly as for its own parse errors.
    """

    def __init__(self, header_bytes_max: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=header_bytes_max)
        self._header_bytes_max = header_bytes_max
        self.error: h11.RemoteProtocolError | None = None  # the reason for an error response
        self.failed_mid_response = False

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            self.failed_mid_response = self.our_state is h11.SEND_BODY
            raise

    def mid_request(self) -> bool:
        """True while the client owes us bytes of a request it has begun."""
        state = self.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self._receive_buffer))

    def fail(self, error: h11.RemoteProtocolError) -> None:
        """Gives up on the client's request, as h11 does after a parse error."""
        self.error = error
        self._process_error(self.their_role)

    def _extract_next_receive_event(self) -> Any:
        state = self.their_state
        if state is h11.MUST_CLOSE and self._receive_buffer:
            buffered = self._receive_buffer
            buffered.maybe_extract_at_most(len(buffered))  # RFC 9112 9.6: never processed
        elif state is h11.IDLE and self._head_too_large():
            raise h11.LocalProtocolError(
                f"request header block exceeds {self._header_bytes_max} bytes", error_status_hint=431
            )
        event = super()._extract_next_receive_event()
        if isinstance(event, h11.Request):
            _check_framing(event)
        return event

    def _head_too_large(self) -> bool:
        # The head ends with the first blank line; it fits if that line ends
        # within the limit, however the bytes were split across reads.
        buffered = self._receive_buffer
        if len(buffered) <= self._header_bytes_max:
            return False
        return blank_line_regex.search(buffered._data, 0, self._header_bytes_max) is None


def _check_framing(request: h11.Request) -> None:
    names = {name for name, _ in request.headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise h11.LocalProtocolError(
            "a request must not carry both Content-Length and Transfer-Encoding", error_status_hint=400
        )
    if b"transfer-encoding" in names and request.http_version == b"1.0":
        raise h11.LocalProtocolError("Transfer-Encoding is not allowed in HTTP/1.0", error_status_hint=400)


class GuardedH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol on a ``GuardedConnection``, with JSON error bodies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = GuardedConnection(_settings().request_header_bytes_max)
        self._answered_with_error = False
        self.after_long_poll = False
        # A response head, held until the first bytes of its body (or its end) go out with it.
        self._hold_head = False
        self._held_head = b""
        self._transport_send, self.send = self.send, self._send

    # Two tasks drive one h11 connection: the reader, which answers parse
    # errors, and the app, which answers the request. Hypercorn lets both
    # write and both close, so one could cut the other's response anywhere
    # (even between head and body), and the app's body could be spliced into
    # the error response. Here each response finishes before anyone closes.

    async def stream_send(self, event: StreamEvent) -> None:
        if self._answered_with_error and not isinstance(event, StreamClosed):
            return  # the request was already answered with an error
        if isinstance(event, Response) and event.status_code >= 200:
            self._hold_head = True  # the head's bytes are written by super(), synchronously, into _send
            try:
                await super().stream_send(event)
            finally:
                self._hold_head = False
            return
        await super().stream_send(event)

    async def _send(self, event: Event) -> None:
        # Hypercorn writes a response head when the app sends http.response.start,
        # and the body with the next message: two socket writes (and scheduler
        # rounds) for every response. The head waits here for the body's first
        # bytes instead; the app always sends them at once (an SSE stream starts
        # with a control event), and a close or anything else flushes it.
        if isinstance(event, RawData):
            if self._hold_head:
                self._held_head = event.data
                return
            if self._held_head:
                event = RawData(data=self._held_head + event.data)
                self._held_head = b""
        elif self._held_head:
            held, self._held_head = self._held_head, b""
            await self._transport_send(RawData(data=held))
        if isinstance(event, Closed) and self._close_is_premature():
            return
        await self._transport_send(event)

    def _close_is_premature(self) -> bool:
        if self._answered_with_error:  # _send_error_response closes once it is written
            return True
        connection = self.connection
        if isinstance(connection, GuardedConnection) and connection.failed_mid_response:
            connection.failed_mid_response = False  # the app's response is on the wire; _maybe_recycle closes after it
            return True
        return False

    def mid_request(self) -> bool:
        connection = self.connection
        return isinstance(connection, GuardedConnection) and connection.mid_request()

    async def _create_stream(self, request: h11.Request) -> None:
        # The application serves no websockets, and Hypercorn's websocket
        # path answered them 500, or crashed on bytes after the upgrade
        # request (pgjones/hypercorn#225). A server may ignore Upgrade (RFC
        # 9110 section 7.8): the request is answered as plain HTTP.
        headers = [(name, value) for name, value in request.headers if name != b"upgrade"]
        if len(headers) < len(request.headers):
            request = h11.Request(
                method=request.method, target=request.target, headers=headers, http_version=request.http_version
            )
        self.after_long_poll = b"live=long-poll" in request.target
        await super()._create_stream(request)

    def idle_after_long_poll(self) -> bool:
        """The last request was a long-poll and its answer is complete: next comes a re-poll."""
        return self.after_long_poll and self.connection.our_state in (h11.IDLE, h11.DONE)

    async def time_out(self) -> None:
        """Answers 408 to a client that stalled mid-request, then closes (as Hypercorn does for parse errors)."""
        assert isinstance(self.connection, GuardedConnection)
        seconds = _settings().request_read_timeout_s
        self.connection.fail(h11.RemoteProtocolError(f"no request bytes for {seconds:g} s", error_status_hint=408))
        if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            await self._send_error_response(408)
        await self.send(Closed())

    async def _send_error_response(self, status_code: int) -> None:
        error = getattr(self.connection, "error", None)
        message = str(error) if error is not None else "malformed HTTP/1.1 request"
        body = error_body(_ERROR_CODES.get(status_code, "BAD_REQUEST"), message)
        headers = common_headers(static_origin(_settings().cors_allow_origins)) + [
            (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        self._answered_with_error = True
        try:
            await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
            await self._send_h11_event(h11.Data(data=body))
            await self._send_h11_event(h11.EndOfMessage())
        finally:
            await self._transport_send(Closed())


# -- the Trio connection handler ---------------------------------------------


@functools.cache
def _shed_response(settings: Settings) -> bytes:
    body = error_body("TOO_MANY_CONNECTIONS", "the server has too many open connections; retry shortly")
    headers = common_headers(static_origin(settings.cors_allow_origins)) + [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"retry-after", b"1"),
        (b"connection", b"close"), (b"content-length", str(len(body)).encode()),
    ]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"HTTP/1.1 503 Service Unavailable\r\n" + head + b"\r\n" + body


class GuardedTCPServer(TCPServer):
    """Hypercorn's per-connection handler, contained: whatever happens ends only this connection."""

    async def run(self) -> None:
        guard = _guard
        assert guard is not None, "hypercorn_guard.install() was not called"
        if guard.open_connections >= guard.settings.connections_max:
            guard.shed_connections += 1
            await self._shed()
            return
        guard.open_connections += 1
        peer = _peer(self.stream)
        try:
            await super().run()
        except* Exception as group:
            guard.failed_connections += 1
            first = _first_leaf(group)
            log.warning("connection from %s failed (%s: %s); closed it", peer, type(first).__name__, first)
            log.debug("connection from %s failed", peer, exc_info=group)
            await trio.aclose_forcefully(self.stream)
        finally:
            guard.open_connections -= 1

    async def _shed(self) -> None:
        # No handshake and no read: a shed connection must cost nothing.
        # TLS clients just see the connection close.
        if isinstance(self.stream, trio.SocketStream):  # the 503 fits any empty send buffer
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(_shed_response(_settings()))
        await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Event) -> None:
        try:
            deadlines = _deadlines_of(self)
            if isinstance(event, RawData) and not event.data:
                # h11's end of a Content-Length body: nothing to write, and a write
                # of nothing would still cost the response a scheduler round.
                return
            if isinstance(event, RawData) and deadlines is not None:
                await self._bounded_send(event.data, deadlines)
            else:
                await super().protocol_send(event)
        except trio.BusyResourceError:
            # Only _close's unlocked send_eof collides with a locked send (for
            # HTTP/1.1 GuardedH11Protocol orders them; HTTP/2 still can): the
            # connection is closing, so this data has nowhere to go.
            await self.protocol.handle(Closed())

    async def _bounded_send(self, data: bytes, deadlines: SendDeadlines) -> None:
        # Hypercorn's RawData branch, with the shielded write bounded by progress.
        # The write has a scheduler round anyway, and a fan-out makes many writes.
        async with taken(self.send_lock):
            try:
                with trio.CancelScope(shield=True):
                    sent = await deadlines.send_all(self.stream, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
            if not sent:
                why = ("the shutdown grace period ended" if deadlines.draining
                       else f"a response write made no progress for {deadlines.send_timeout_s:g} s")
                log.warning("closed the connection of %s: %s", _peer(self.stream), why)
                await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        # Hypercorn's loop, with the read timeout applied only mid-request.
        while True:
            try:
                with trio.fail_after(self._read_timeout_s()):
                    data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            except trio.TooSlowError:
                await self._time_out()
                break
            if data and self._repoll():
                await _admit_after_long_poll(self)
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())
        # Nothing more will be read, so there is nothing to keep alive: without
        # this a connection the client closed held its descriptor (and its
        # place under connections_max) until the keep-alive timer ran out.
        await self.idle_task.stop()

    def _repoll(self) -> bool:
        protocol = self.protocol.protocol
        return isinstance(protocol, GuardedH11Protocol) and protocol.idle_after_long_poll()

    def _read_timeout_s(self) -> float:
        protocol = self.protocol.protocol
        if isinstance(protocol, GuardedH11Protocol) and protocol.mid_request():
            return _settings().request_read_timeout_s
        return math.inf

    async def _time_out(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, GuardedH11Protocol):
            await protocol.time_out()


def _deadlines_of(server: TCPServer) -> SendDeadlines | None:
    app = getattr(server.app, "app", None)  # Hypercorn's ASGIWrapper around our App
    deadlines = getattr(app, "send_deadlines", None)
    return deadlines if isinstance(deadlines, SendDeadlines) else None


async def _admit_after_long_poll(server: TCPServer) -> None:
    admit = getattr(getattr(server.app, "app", None), "admit_after_long_poll", None)
    if admit is not None:
        await admit()


def _peer(stream: Any) -> str:
    sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
    try:
        return repr(sock.getpeername()) if sock is not None else "unknown peer"
    except OSError:
        return "a disconnected peer"


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
