"""Reading sessions: ``stream()`` and the StreamResponse it returns (async).

Owns: the session loop that issues catch-up, long-poll and SSE requests as
``ReadState`` says; reconnecting SSE from the last control offset (the
server closes SSE connections every minute or so, and networks break
them); and every way to consume a session — whole-body helpers (``body``,
``text``, ``json``), iterators (``byte_stream``, ``text_stream``,
``json_stream``, the ``*_batches`` forms) and subscribers. Also the batch
types subscribers receive.

``ResponseCore`` holds everything a session decides without IO — what a
consumer has been handed, how each answer becomes items, batches or text,
when SSE is given up on — and is shared with the sync client's
``_sync_response.py``; this module adds the async IO loops.

Never makes a protocol decision itself (``_protocol`` and ``_sse`` do),
and never retries one request (``_transport`` does). Each request starts
from the offset the previous answer gave, so a retried or reconnected read
neither loses nor repeats a message.

Positions: ``offset``, ``cursor``, ``up_to_date`` and ``closed`` describe
what the *consumer* has been handed, not what was fetched — ``offset`` is
always a safe place to resume from.
"""

from __future__ import annotations

import codecs
import inspect
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

import anyio
import httpx

from ._protocol import (
    CATCH_UP, SSE, SSE_ENCODING, START, Backoff, Chunk, LiveMode, Mode, ReadState, TrimmedGap, check_live,
    chunk_from_response, decode_json_parts, is_json, media_type, trimmed_gap,
)
from ._sse import SseChunker, SseDecoder
from ._transport import LIVE_TIMEOUT, HeadersSpec, OnError, ParamsSpec, Transport, TransportCore
from .errors import ALREADY_CONSUMED, NETWORK, DurableStreamError, FetchError, OffsetTrimmedError

# After this many SSE connections in a row that broke or ended without a
# single event, live=True gives up on SSE (a buffering proxy) for long-poll.
SSE_FAILURES_BEFORE_LONG_POLL = 3

T = TypeVar("T")
O = TypeVar("O")
TransportT = TypeVar("TransportT", bound=TransportCore[Any])


@dataclass(frozen=True)
class JsonBatch(Generic[T]):
    """Messages from one answer, and the position after them."""

    items: list[T]
    offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None


@dataclass(frozen=True)
class ByteBatch:
    """Bytes from one answer, and the position after them."""

    data: bytes
    offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None

    @property
    def items(self) -> list[bytes]:
        """The data as a one-element list (empty if no data), for symmetry with JsonBatch."""
        return [self.data] if self.data else []


@dataclass(frozen=True)
class TextBatch:
    """Text from one answer, and the position after it."""

    text: str
    offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None


B = TypeVar("B")
Callback = Callable[[B], Union[None, Awaitable[None]]]
OnTrimmed = Callback[TrimmedGap]
Shape = Callable[[Chunk], list[O]]


async def stream(
    url: str,
    offset: str = START,
    live: LiveMode = False,
    *,
    headers: HeadersSpec | None = None,
    params: ParamsSpec | None = None,
    client: httpx.AsyncClient | None = None,
    backoff: Backoff | None = None,
    on_error: OnError | None = None,
    on_trimmed: OnTrimmed | None = None,
) -> StreamResponse[Any]:
    """Starts reading ``url`` from ``offset`` (``"-1"`` start, ``"now"`` tail); returns after the first answer.

    ``live``: False reads until up to date; ``"long-poll"`` or ``"sse"``
    then keep following; True picks SSE for JSON/text and long-poll for
    binary streams. Errors such as NOT_FOUND are raised here. Header and
    param values may be callables (sync or async), called per request.
    ``on_error(error)`` is asked about 401/403 answers and failures with no
    protocol answer (after the automatic retries): return ``RetryOpts`` with
    new headers/params to try again, or None to raise. Annotate the result
    (``res: StreamResponse[Event]``) to type the JSON items.

    A read below the stream's earliest retained offset (retention removed
    that data) raises ``OffsetTrimmedError``, at the start or at any later
    request of the session. With ``on_trimmed(gap)`` the session instead
    calls it with the ``TrimmedGap`` skipped (awaited if async; raise in it
    to stop) and goes on from the earliest offset.
    """
    transport = Transport(client=client, headers=headers, params=params, backoff=backoff, on_error=on_error)
    try:
        return await open_response(transport, url, offset, live, owns_transport=True, on_trimmed=on_trimmed)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await transport.aclose()
        raise


async def open_response(
    transport: Transport, url: str, offset: str, live: LiveMode, *, owns_transport: bool, on_trimmed: OnTrimmed | None = None
) -> StreamResponse[Any]:
    live = check_live(live)
    while True:
        try:
            first = await transport.read(url, params=[("offset", offset)])
            break
        except OffsetTrimmedError as error:
            gap = trimmed_gap(error, offset, resume=on_trimmed is not None)
            await _settled(on_trimmed(gap) if on_trimmed else None)
            offset = gap.to_offset
    return StreamResponse(transport, url, live, offset, first, owns_transport=owns_transport, on_trimmed=on_trimmed)


class ResponseCore(Generic[T, TransportT]):
    """A session's position and every decision about it that needs no IO."""

    def __init__(
        self, transport: TransportT, url: str, live: LiveMode, start_offset: str, first: httpx.Response, *,
        owns_transport: bool, on_trimmed: Callable[[TrimmedGap], object] | None = None,
    ) -> None:
        self.url = url
        self.live = live
        self.start_offset = start_offset
        self.content_type: str | None = first.headers.get("content-type")
        self.status = first.status_code
        self.headers: Mapping[str, str] = first.headers
        self.offset = start_offset
        self.cursor: str | None = None
        self.up_to_date = False
        self.closed = False
        self._transport = transport
        self._owns_transport = owns_transport
        self._state = ReadState(live, start_offset, content_type=self.content_type)
        self._first: Chunk | None = chunk_from_response(
            first.status_code, first.headers, first.content, offset=start_offset, cursor=None
        )
        if not self._first.parts:
            # Nothing to hand out, so the position is safe to show now: "now" resolves to the tail at once.
            self._deliver(self._first)
        self._consumed = False
        self._sse_failures = 0
        self._on_trimmed = on_trimmed

    @property
    def is_json(self) -> bool:
        return is_json(self.content_type)

    def _require_json(self) -> None:
        if not self.is_json:
            raise TypeError(f"not a JSON stream (content type {self.content_type!r}); use bytes or text")

    def _start_consuming(self) -> None:
        if self._consumed:
            raise DurableStreamError("this StreamResponse has already been consumed", ALREADY_CONSUMED)
        self._consumed = True

    def _deliver(self, chunk: Chunk) -> None:
        self.offset = chunk.offset
        self.cursor = chunk.cursor or self.cursor
        self.up_to_date = chunk.up_to_date
        self.closed = self.closed or chunk.closed

    def _is_news(self, chunk: Chunk, first: bool) -> bool:
        """Whether a consumer should see the chunk; silent ones (keep-alives, long-poll timeouts) only move the position."""
        return first or bool(chunk.parts) or chunk.closed or (chunk.up_to_date and not self.up_to_date)

    def _handed(self, chunk: Chunk, outputs: list[O]) -> Iterator[O]:
        """Hands out one chunk's outputs; the position moves past the chunk as its last output is handed out."""
        if not outputs:
            self._deliver(chunk)
        for i, output in enumerate(outputs):
            if i == len(outputs) - 1:
                self._deliver(chunk)
            yield output

    # -- shapes: what a chunk becomes for each way of consuming ------------------

    def _json_items(self) -> Shape[T]:
        self._require_json()
        return lambda chunk: decode_json_parts(chunk.parts)

    def _json_batches(self) -> Shape[JsonBatch[T]]:
        self._require_json()
        return lambda c: [JsonBatch(decode_json_parts(c.parts), c.offset, c.up_to_date, c.closed, c.cursor)]

    def _byte_batches(self) -> Shape[ByteBatch]:
        return lambda c: [ByteBatch(c.data, c.offset, c.up_to_date, c.closed, c.cursor)]

    def _text_batches(self) -> Shape[TextBatch]:
        decode = _text_decoder()
        return lambda c: [TextBatch(decode(c), c.offset, c.up_to_date, c.closed, c.cursor)]

    def _texts(self) -> Shape[str]:
        decode = _text_decoder()
        return lambda c: [text] if (text := decode(c)) else []

    # -- the session: which request next ----------------------------------------

    def _poll_request(self, mode: Mode) -> tuple[list[tuple[str, str]], Any]:
        timeout = httpx.USE_CLIENT_DEFAULT if mode == CATCH_UP else LIVE_TIMEOUT
        return self._state.params(mode), timeout

    def _polled(self, response: httpx.Response) -> Chunk:
        self._note(response)
        state = self._state
        chunk = chunk_from_response(response.status_code, response.headers, response.content, offset=state.offset, cursor=state.cursor)
        state.apply(chunk)
        return chunk

    def _sse_parser(self, response: httpx.Response) -> Callable[[bytes], list[Chunk]]:
        """What turns this SSE connection's bytes into Chunks (raises _NotSse if it is no event stream)."""
        self._note(response)
        if media_type(response.headers.get("content-type")) != "text/event-stream":
            raise _NotSse(f"live=sse answered with {response.headers.get('content-type')!r}, not an event stream")
        decoder = SseDecoder()
        base64_data = response.headers.get(SSE_ENCODING, "").strip().lower() == "base64"
        chunker = SseChunker(base64_data=base64_data, cursor=self._state.cursor)

        def feed(data: bytes) -> list[Chunk]:
            return [chunk for event in decoder.feed(data) if (chunk := chunker.on_event(event)) is not None]

        return feed

    def _sse_delivered(self, chunk: Chunk) -> None:
        self._state.apply(chunk)
        self._sse_failures = 0

    def _sse_not_supported(self, exc: _NotSse) -> None:
        if self._state.live is not True:
            raise DurableStreamError(str(exc), "SSE_NOT_SUPPORTED", self.status, url=self.url) from None
        self._state.sse_failed = True  # the server (or a proxy) does not do SSE: poll instead

    def _sse_pause(self, delivered: bool, failure: httpx.TransportError | None) -> float | None:
        """After an SSE connection ended: seconds to wait before the next, or None to give up SSE for long-poll."""
        if delivered and failure is None:
            return 0.0  # the server's periodic close: reconnect at once from the last offset
        self._sse_failures += 1
        backoff = self._transport.backoff
        if self._state.live is True and self._sse_failures >= SSE_FAILURES_BEFORE_LONG_POLL:
            self._state.sse_failed = True
            return None
        if not backoff.may_retry(self._sse_failures - 1):
            raise FetchError(f"SSE connection keeps failing: {failure!r}", NETWORK, None, url=self.url) from failure
        return backoff.delay_s(self._sse_failures - 1, random.random())

    def _skip_trimmed(self, error: OffsetTrimmedError) -> object:
        """Retention removed data past the session's position: re-raises ``error``
        (the default), or reports the gap to ``on_trimmed`` and goes on from the
        earliest offset. Returns what the callback returned (async loops await it)."""
        gap = trimmed_gap(error, self._state.offset, resume=self._on_trimmed is not None)
        assert self._on_trimmed is not None
        self._state.offset = gap.to_offset
        return self._on_trimmed(gap)

    def _note(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers


class StreamResponse(ResponseCore[T, Transport]):
    """One reading session. Consume it once, by one of its methods; ``aclose()`` (or ``async with``) ends it."""

    async def aclose(self) -> None:
        """Ends the session and releases its connections (the client too, if ``stream()`` made it)."""
        self._consumed = True
        if self._owns_transport:
            with anyio.CancelScope(shield=True):
                await self._transport.aclose()

    async def __aenter__(self) -> StreamResponse[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- whole-session helpers: read until up to date (even in live mode) -------

    async def body(self) -> bytes:
        """All bytes up to the first up-to-date answer."""
        pieces: AsyncIterator[bytes] = self._shaped(_bytes, stop_at_up_to_date=True)
        return b"".join([data async for data in pieces])

    async def text(self) -> str:
        """All text up to the first up-to-date answer (UTF-8)."""
        return (await self.body()).decode("utf-8")

    async def json(self) -> list[T]:
        """All messages of a JSON stream up to the first up-to-date answer."""
        return [item async for item in self._shaped(self._json_items(), stop_at_up_to_date=True)]

    # -- iterators: follow the session (live modes until EOF) --------------------

    def byte_stream(self) -> AsyncIterator[bytes]:
        return self._shaped(_bytes)

    def text_stream(self) -> AsyncIterator[str]:
        """Text as it arrives; an answer ending inside a UTF-8 character keeps it for the next."""
        return self._shaped(self._texts())

    def json_stream(self) -> AsyncIterator[T]:
        """One message at a time. ``offset`` moves past a batch as its last message is handed out."""
        return self._shaped(self._json_items())

    def json_batches(self) -> AsyncIterator[JsonBatch[T]]:
        return self._shaped(self._json_batches())

    def byte_batches(self) -> AsyncIterator[ByteBatch]:
        return self._shaped(self._byte_batches())

    def text_batches(self) -> AsyncIterator[TextBatch]:
        return self._shaped(self._text_batches())

    # -- subscribers: a callback per batch; returns when the session ends --------

    async def subscribe_json(self, callback: Callback[JsonBatch[T]]) -> None:
        """Calls ``callback(JsonBatch)`` per batch; an async callback is awaited (backpressure).

        Returns at EOF (or when up to date with live=False). Run it in a
        task group and cancel that to unsubscribe.
        """
        await _drive(self.json_batches(), callback)

    async def subscribe_bytes(self, callback: Callback[ByteBatch]) -> None:
        await _drive(self.byte_batches(), callback)

    async def subscribe_text(self, callback: Callback[TextBatch]) -> None:
        await _drive(self.text_batches(), callback)

    # -- the session ---------------------------------------------------------

    async def _shaped(self, shape: Shape[O], *, stop_at_up_to_date: bool = False) -> AsyncGenerator[O, None]:
        async with aclosing(self._chunks(stop_at_up_to_date)) as chunks:
            async for chunk in chunks:
                for output in self._handed(chunk, shape(chunk)):
                    yield output

    async def _chunks(self, stop_at_up_to_date: bool) -> AsyncGenerator[Chunk, None]:
        self._start_consuming()
        first = True
        try:
            async with aclosing(self._fetched(stop_at_up_to_date)) as fetched:
                async for chunk in fetched:
                    if self._is_news(chunk, first):
                        yield chunk
                    else:
                        self._deliver(chunk)
                    first = False
        finally:
            await self.aclose()

    async def _fetched(self, stop_at_up_to_date: bool) -> AsyncGenerator[Chunk, None]:
        state = self._state
        chunk, self._first = self._first, None
        if chunk is not None:
            state.apply(chunk)
            yield chunk
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            mode = state.next_mode()
            try:
                if mode == SSE:
                    async with aclosing(self._sse(stop_at_up_to_date)) as chunks:
                        async for chunk in chunks:
                            yield chunk
                else:
                    params, timeout = self._poll_request(mode)
                    yield self._polled(await self._transport.read(self.url, params=params, timeout=timeout))
            except OffsetTrimmedError as error:
                await _settled(self._skip_trimmed(error))

    async def _sse(self, stop_at_up_to_date: bool) -> AsyncGenerator[Chunk, None]:
        """SSE connections, one after another, until the session is over or SSE is given up on."""
        state = self._state
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            delivered = False
            failure: httpx.TransportError | None = None
            try:
                async with self._transport.stream(self.url, params=state.params(SSE)) as response:
                    feed = self._sse_parser(response)
                    async for data in response.aiter_bytes():
                        for chunk in feed(data):
                            self._sse_delivered(chunk)
                            delivered = True
                            yield chunk
                            if state.finished(stop_at_up_to_date=stop_at_up_to_date):
                                return
            except _NotSse as exc:
                self._sse_not_supported(exc)
                return
            except httpx.TransportError as exc:
                failure = exc
            pause = self._sse_pause(delivered, failure)
            if pause is None:
                return
            if pause:
                await anyio.sleep(pause)


class _NotSse(Exception):
    """A live=sse request answered with something other than an event stream."""


def _bytes(chunk: Chunk) -> list[bytes]:
    return [chunk.data] if chunk.parts else []


def _text_decoder() -> Callable[[Chunk], str]:
    # Answers may end inside a multi-byte character; the decoder holds it over.
    decoder = codecs.getincrementaldecoder("utf-8")()
    return lambda chunk: decoder.decode(chunk.data, final=chunk.closed)


async def _drive(batches: AsyncIterator[B], callback: Callback[B]) -> None:
    async with aclosing(batches) as it:  # type: ignore[type-var]
        async for batch in it:
            await _settled(callback(batch))


async def _settled(result: object) -> None:
    """Awaits what a user callback returned if it is awaitable (callbacks may be sync or async)."""
    if inspect.isawaitable(result):
        await result
