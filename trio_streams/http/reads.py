"""GET: catch-up reads, long-poll and SSE (PROTOCOL.md 5.6–5.8, 10).

Owns: turning a stream position into response bytes and headers, waiting
for new data through the registry's subscriber channels, and the SSE event
loop. Readers never queue behind writers: they read durable state and data
directly and only *wait* on a channel.

Never: changes stream state (beyond the sliding-TTL access clock).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator

import trio

from ..protocol import jsonmode, sse
from ..protocol.cursor import next_cursor
from ..protocol.errors import ProtocolError, bad_request, not_found
from ..protocol.headers import is_sse_text
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.state import StreamState
from ..streams.registry import Registry
from .asgi import Headers, Request, Send, encode_headers, respond

CACHE_MAX_AGE_S = 60
CACHE_STALE_WHILE_REVALIDATE_S = 300


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    next: int
    raw: bytes  # stored form
    body: bytes  # HTTP body form (a JSON array for JSON streams)
    up_to_date: bool
    closed: bool  # the stream is closed and this chunk reaches its final offset


class ChunkCache:
    """Encoded chunks by (stream, start, end): one read and encode serves every reader.

    Data at a position never changes and stream ids are never reused, so
    entries never go stale; the cache only needs a bound, in bytes.
    """

    def __init__(self, bytes_max: int) -> None:
        self._entries: collections.OrderedDict[tuple[int, int, int], tuple[bytes, bytes]] = collections.OrderedDict()
        self._bytes = 0
        self._bytes_max = bytes_max

    def get(self, key: tuple[int, int, int]) -> tuple[bytes, bytes] | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: tuple[int, int, int], value: tuple[bytes, bytes]) -> None:
        size = _size(value)
        if size > self._bytes_max // 8 or key in self._entries:
            return  # one huge chunk must not flush everything else
        self._entries[key] = value
        self._bytes += size
        while self._bytes > self._bytes_max:
            _, old = self._entries.popitem(last=False)
            self._bytes -= _size(old)


def _size(value: tuple[bytes, bytes]) -> int:
    raw, body = value
    return len(raw) + (0 if body is raw else len(body))


def resolve_start(req: Request, state: StreamState, *, required: bool) -> int | str:
    """The requested position, or NOW; 400 for malformed, missing or future offsets."""
    token = req.query_one("offset")
    if token is None:
        if required:
            raise bad_request("live reads require an offset parameter", "MISSING_OFFSET")
        return 0
    position = parse_offset(token)
    if position == START:
        return 0
    if position == NOW:
        return NOW
    assert isinstance(position, int)
    if position > state.tail:
        raise bad_request("offset is beyond the stream's tail", "INVALID_OFFSET")
    return position


def _etag(state: StreamState, chunk: Chunk) -> str:
    return f'"{state.stream_id}:{chunk.start}:{chunk.next}{":c" if chunk.closed else ""}"'


def cache_control(visibility: str, state: StreamState, chunk: Chunk, now: float) -> str:
    """Data chunks are immutable and cacheable (10.1); empty tail responses are not,
    so a cache can never hide new data or the closure signal. A stream that
    expires sooner than the usual max-age caps it."""
    if not chunk.raw:
        return "no-store"
    max_age = CACHE_MAX_AGE_S
    if state.expiry.expires_at_s is not None:
        max_age = max(0, min(max_age, int(state.expiry.expires_at_s - now)))
    return f"{visibility}, max-age={max_age}, stale-while-revalidate={CACHE_STALE_WHILE_REVALIDATE_S}"


def _chunk_headers(state: StreamState, chunk: Chunk, cursor: str | None, visibility: str) -> list[tuple[str, str]]:
    pairs = [
        ("content-type", state.content_type),
        ("stream-next-offset", format_offset(chunk.next)),
        ("etag", _etag(state, chunk)),
        ("cache-control", cache_control(visibility, state, chunk, time.time())),
    ]
    if chunk.up_to_date:
        pairs.append(("stream-up-to-date", "true"))
    if chunk.closed:
        pairs.append(("stream-closed", "true"))
    elif cursor is not None:
        pairs.append(("stream-cursor", cursor))
    return pairs


def _if_none_match(req: Request, etag: str) -> bool:
    header = req.headers.get("if-none-match")
    if header is None:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return etag in candidates or "*" in candidates


class Reads:
    """The GET side: one instance per app, shared by every reader.

    Holds what readers share — the registry, the chunk cache, the headers
    every response carries — so each operation takes just the request, the
    stream and ``send``.
    """

    def __init__(self, registry: Registry, base: Headers) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.cache = ChunkCache(self.settings.read_cache_bytes_max)
        self.base = base
        self._waits: set[trio.CancelScope] = set()
        self._draining = False

    def drain(self) -> None:
        """Shutdown: every live wait ends now (long-poll answers 204, SSE closes cleanly)."""
        self._draining = True
        for scope in self._waits:
            scope.cancel()

    @contextlib.contextmanager
    def _live_wait(self, seconds: float) -> Iterator[trio.CancelScope]:
        with trio.move_on_after(0 if self._draining else seconds) as scope:
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    async def read_chunk(self, state: StreamState, start: int) -> Chunk:
        tail, closed = state.tail, state.closed
        limit = self.settings.read_chunk_bytes_max
        key = (state.stream_id, start, min(tail, start + limit))
        hit = self.cache.get(key)
        if hit is None:
            store, table = self.registry.store, self.registry.table
            try:
                if state.json_mode:
                    raw = await store.read_messages(table, state, start, tail, limit)
                else:
                    raw = await store.read(table, state, start, key[2])
            except (FileNotFoundError, KeyError):
                raise not_found() from None  # deleted (with its fork chain) while we read
            hit = (raw, jsonmode.to_array(raw) if state.json_mode else raw)
            self.cache.put(key, hit)
        raw, body = hit
        end = start + len(raw)
        return Chunk(start, end, raw, body, end == tail, closed and end == tail)

    # -- catch-up ----------------------------------------------------------

    async def start_position(self, req: Request, state: StreamState, *, required: bool) -> int | str:
        """resolve_start, plus: a JSON stream's offset must fall between messages."""
        start = resolve_start(req, state, required=required)
        if isinstance(start, int) and state.json_mode and 0 < start < state.tail:
            try:
                before = await self.registry.store.read(self.registry.table, state, start - 1, start)
            except (FileNotFoundError, KeyError):
                raise not_found() from None  # deleted (with its fork chain) while we read
            if before != jsonmode.TERMINATOR:
                raise bad_request("offset is not at a message boundary of this JSON stream", "INVALID_OFFSET")
        return start

    async def catch_up(self, req: Request, state: StreamState, send: Send) -> None:
        start = await self.start_position(req, state, required=False)
        if start == NOW:
            await self._respond_now(state, send)
            return
        assert isinstance(start, int)
        await self._send_chunk(req, state, await self.read_chunk(state, start), None, send)

    async def _send_chunk(self, req: Request, state: StreamState, chunk: Chunk, cursor: str | None, send: Send) -> None:
        pairs = _chunk_headers(state, chunk, cursor, self.settings.cache_visibility)
        if _if_none_match(req, _etag(state, chunk)):
            await respond(send, 304, self.base + encode_headers(pairs))
            return
        await respond(send, 200, self.base + encode_headers(pairs), chunk.body)

    async def _respond_now(self, state: StreamState, send: Send) -> None:
        pairs = [
            ("content-type", state.content_type),
            ("stream-next-offset", format_offset(state.tail)),
            ("stream-up-to-date", "true"),
            ("cache-control", "no-store"),
        ]
        if state.closed:
            pairs.append(("stream-closed", "true"))
        body = jsonmode.EMPTY_ARRAY if state.json_mode else b""
        await respond(send, 200, self.base + encode_headers(pairs), body)

    # -- long-poll ---------------------------------------------------------

    async def long_poll(self, req: Request, state: StreamState, send: Send) -> None:
        start = await self.start_position(req, state, required=True)
        position = state.tail if start == NOW else start
        assert isinstance(position, int)
        cursor = next_cursor(time.time(), req.query_one("cursor"))
        current, chunk = state, None
        with self.registry.subscribe(state.stream_id) as wakeups:
            with self._live_wait(self.settings.long_poll_timeout_s):
                while True:
                    current = self.registry.get(state.path)
                    if current.stream_id != state.stream_id:
                        raise not_found()
                    if current.tail > position:
                        chunk = await self.read_chunk(current, position)
                        break
                    if current.closed:
                        break
                    await wakeups.receive()
        # Respond outside the timeout's scope: a deadline that fires mid-send must
        # not cancel a response that has already started.
        if chunk is not None:
            await self._send_chunk(req, current, chunk, cursor, send)
        else:
            await self._respond_no_content(current, position, cursor, send)

    async def _respond_no_content(self, state: StreamState, position: int, cursor: str, send: Send) -> None:
        pairs = [
            ("stream-next-offset", format_offset(position)),
            ("stream-up-to-date", "true"),
            ("cache-control", "no-store"),
        ]
        if state.closed and position == state.tail:
            pairs.append(("stream-closed", "true"))
        else:
            pairs.append(("stream-cursor", cursor))
        await respond(send, 204, self.base + encode_headers(pairs))

    # -- SSE ---------------------------------------------------------------

    async def server_sent_events(self, req: Request, state: StreamState, send: Send) -> None:
        start = await self.start_position(_resumed(req), state, required=True)
        position = state.tail if start == NOW else start
        assert isinstance(position, int)
        binary = not is_sse_text(state.content_type)
        pairs = [("content-type", sse.CONTENT_TYPE), ("cache-control", "no-cache")]
        if binary:
            pairs.append(("stream-sse-data-encoding", "base64"))
        await send({"type": "http.response.start", "status": 200, "headers": self.base + encode_headers(pairs)})
        session = _SseSession(self, state, position, binary, req.query_one("cursor"), send)
        with self.registry.subscribe(state.stream_id) as wakeups:
            with self._live_wait(self.settings.sse_connection_s):
                await session.run(wakeups)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _resumed(req: Request) -> Request:
    """The request as if its ``offset`` were the ``Last-Event-ID`` header, when it has one.

    A browser's EventSource reconnects to the URL it was opened with, so after
    every recycled connection its ``offset`` is where the reader *started*;
    ``Last-Event-ID`` echoes the id of the last event it received (the offset
    after it, see ``protocol/sse.py``) and is where it really stands. An empty
    value means no id was received and is no header at all, as in the SSE
    spec; anything else must be an offset (400 otherwise, like ``offset``).
    """
    token = req.headers.get("last-event-id")
    if not token:
        return req
    try:
        parse_offset(token)
    except ProtocolError:
        raise bad_request(f"malformed Last-Event-ID {token[:64]!r}: expected an offset", "INVALID_OFFSET") from None
    query = [(k, v) for k, v in req.query if k != "offset"] + [("offset", token)]
    return dataclasses.replace(req, query=query)


class _SseSession:
    """One SSE connection: every data event is followed by its control event."""

    def __init__(self, reads: Reads, state: StreamState, position: int, binary: bool,
                 client_cursor: str | None, send: Send) -> None:
        self.reads, self.state, self.position, self.binary = reads, state, position, binary
        self.client_cursor, self.send = client_cursor, send
        self.announced = False

    async def run(self, wakeups: trio.MemoryReceiveChannel[None]) -> None:
        while True:
            current = self.reads.registry.lookup(self.state.path)
            if current is None or current.stream_id != self.state.stream_id or current.soft_deleted:
                return  # deleted or expired: end the event stream
            cursor = next_cursor(time.time(), self.client_cursor)
            if current.tail > self.position:
                if await self._send_data(current, cursor):
                    return
                continue
            if current.closed or not self.announced:
                control = sse.control_event(format_offset(self.position), cursor=cursor, up_to_date=True,
                                            closed=current.closed)
                await self.send({"type": "http.response.body", "body": control, "more_body": True})
                self.announced = True
                if current.closed:
                    return
            await wakeups.receive()

    async def _send_data(self, current: StreamState, cursor: str) -> bool:
        """Sends the next chunk as a data+control pair; True once the final offset went out."""
        chunk = await self.reads.read_chunk(current, self.position)
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
