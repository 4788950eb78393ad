"""GET: catch-up reads, long-poll and SSE (PROTOCOL.md 5.6–5.8, 10) — the I/O only.

Owns: turning a request into calls on the streams layer (open, read a
chunk, wait for data) and the answers ``protocol.reads`` decides into ASGI
messages, including the SSE event loop. Readers never queue behind
writers: they read durable data directly and only *wait* for more.

Never: status or header decisions (protocol.reads), stream state or storage.
"""

from __future__ import annotations

import dataclasses
import math
import random

from ..clock import Clock
from ..config import Settings
from ..protocol import reads as rules
from ..protocol import sse
from ..protocol.cursor import next_cursor
from ..protocol.offsets import NOW, format_offset
from ..protocol.errors import ProtocolError
from ..protocol.reads import Chunk, Outcome
from ..protocol.retention import TRIMMED_CODE
from ..protocol.state import StreamState
from ..streams.facade import Streams
from ..streams.live import Watch
from .asgi import Headers, Request, Send, encode_headers, respond


class Reads:
    """The GET side: one instance per app, shared by every reader.

    Holds what readers share — the streams, the clock, the headers every
    response carries — so each operation takes just the request, the stream
    and ``send``.
    """

    def __init__(self, streams: Streams, settings: Settings, clock: Clock, base: Headers,
                 rng: random.Random | None = None, *, authenticated: bool = False) -> None:
        self.streams = streams
        self.rng = rng or random.Random()
        self.settings = settings
        self.clock = clock
        self.base = base
        self.cache_policy = rules.cache_policy(settings.cache_visibility, settings.cache_max_age_s,
                                               settings.cache_stale_while_revalidate_s, authenticated=authenticated)

    async def start_position(self, req: Request, state: StreamState, *, required: bool,
                             token: str | None = None) -> int | str:
        """The read's start (``offset``, or ``token`` when given), checked; a JSON offset must fall between messages."""
        start = rules.resolve_start(token or req.query_one("offset"), state, required=required)
        if rules.needs_boundary_check(state, start):
            assert isinstance(start, int)
            rules.require_message_boundary(await self.streams.byte_before(state, start))
        return start

    # -- catch-up ----------------------------------------------------------

    async def catch_up(self, req: Request, state: StreamState, send: Send) -> None:
        start = await self.start_position(req, state, required=False)
        if start == NOW:
            status, pairs, body = rules.now_response(state)
            await respond(send, status, self.base + encode_headers(pairs), body)
            return
        assert isinstance(start, int)
        await self._send_chunk(req, state, await self.streams.read_chunk(state, start), None, send)

    async def _send_chunk(self, req: Request, state: StreamState, chunk: Chunk, cursor: str | None, send: Send) -> None:
        status, pairs = rules.chunk_response(
            state, chunk, cursor, self.cache_policy, self.clock.wall(), req.headers.get("if-none-match")
        )
        await respond(send, status, self.base + encode_headers(pairs), chunk.body if status == 200 else b"")

    # -- long-poll ---------------------------------------------------------

    async def long_poll(self, req: Request, state: StreamState, send: Send) -> None:
        start = await self.start_position(req, state, required=True)
        position = state.tail if start == NOW else start
        assert isinstance(position, int)
        cursor = next_cursor(self.clock.wall(), req.query_one("cursor"))
        with self.streams.watch(state) as watch:
            waited = await watch.wait_for_data(position, self.clock.monotonic() + self.settings.long_poll_timeout_s)
        # Answer outside the wait: a deadline must not cancel a response that has started.
        if waited.outcome is Outcome.GONE:
            raise rules.gone_error(waited.state)
        current = waited.state
        assert current is not None
        if waited.outcome is Outcome.DATA:
            await self._send_chunk(req, current, await self.streams.read_chunk(current, position), cursor, send)
            return
        status, pairs = rules.no_content_response(current, position, cursor)
        await respond(send, status, self.base + encode_headers(pairs))

    # -- SSE ---------------------------------------------------------------

    async def server_sent_events(self, req: Request, state: StreamState, send: Send) -> None:
        resumed = rules.resumed_offset(req.headers.get("last-event-id"))
        start = await self.start_position(req, state, required=True, token=resumed)
        position = state.tail if start == NOW else start
        assert isinstance(position, int)
        binary = rules.sse_binary(state)
        with self.streams.watch(state) as watch:  # before the response starts: its 503 is still an answer
            headers = self.base + encode_headers(rules.sse_response_headers(binary))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            session = _SseSession(self, position, binary, req.query_one("cursor"), send)
            await session.run(watch, self.clock.monotonic() + self._sse_lifetime_s())
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _sse_lifetime_s(self) -> float:
        cut = self.rng.uniform(0.0, self.settings.sse_connection_jitter_fraction)
        return self.settings.sse_connection_s * (1.0 - cut)


class _SseSession:
    """One SSE connection: every data event is followed by its control event."""

    def __init__(self, reads: Reads, position: int, binary: bool, client_cursor: str | None, send: Send) -> None:
        self.reads, self.position, self.binary = reads, position, binary
        self.client_cursor, self.send = client_cursor, send
        self.announced = False

    async def run(self, watch: Watch, deadline: float) -> None:
        """Until the stream ends (closed, gone) or the connection's lifetime does.

        Until the reader is told it is up to date, a wait only looks (deadline
        -inf), so the first control event goes out at once.
        """
        while True:
            waited = await watch.wait_for_data(self.position, deadline if self.announced else -math.inf)
            current = waited.state
            if waited.outcome is Outcome.GONE or (waited.outcome is Outcome.TIMEOUT and self.announced):
                return  # deleted, expired or re-created; or the connection's lifetime is over
            assert current is not None
            cursor = next_cursor(self.reads.clock.wall(), self.client_cursor)
            if waited.outcome is Outcome.DATA:
                if await self._send_trimmable(current, cursor):
                    return
                continue
            await self._send_control(cursor, closed=waited.outcome is Outcome.CLOSED)
            if waited.outcome is Outcome.CLOSED:
                return

    async def _send_control(self, cursor: str, *, closed: bool) -> None:
        control = sse.control_event(format_offset(self.position), cursor=cursor, up_to_date=True, closed=closed)
        await self.send({"type": "http.response.body", "body": control, "more_body": True})
        self.announced = True

    async def _send_trimmable(self, current: StreamState, cursor: str) -> bool:
        """``_send_data``, or True (the event stream ends) once retention trimmed the
        reader's position: its reconnect from that offset is answered 410 with the
        earliest offset, which an event stream already under way cannot say."""
        try:
            return await self._send_data(current, cursor)
        except ProtocolError as error:
            if error.code != TRIMMED_CODE:
                raise
            return True

    async def _send_data(self, current: StreamState, cursor: str) -> bool:
        """Sends the next chunk as a data+control pair; True once the final offset went out."""
        chunk = await self.reads.streams.read_chunk(current, self.position)
        if not (current.json_mode or self.binary or chunk.up_to_date):
            chunk = _text_safe(chunk)
        next_offset = format_offset(chunk.next)
        event = sse.data_event(chunk.body, binary=self.binary, next_offset=next_offset) + sse.control_event(
            next_offset, cursor=cursor, up_to_date=chunk.up_to_date, closed=chunk.closed)
        await self.send({"type": "http.response.body", "body": event, "more_body": True})
        self.position, self.announced = chunk.next, True
        return chunk.closed


def _text_safe(chunk: Chunk) -> Chunk:
    cut = sse.text_cut(chunk.raw)
    raw = chunk.raw[:cut]
    return dataclasses.replace(chunk, next=chunk.start + cut, raw=raw, body=raw)
