"""Reading sessions: ``stream()`` and the StreamResponse it returns.

Owns: the session loop that issues catch-up, long-poll and SSE requests as
``ReadState`` says; reconnecting SSE from the last control offset (the
server closes SSE connections every minute or so, and networks break
them); and every way to consume a session — whole-body helpers (``body``,
``text``, ``json``), iterators (``byte_stream``, ``text_stream``,
``json_stream``, the ``*_batches`` forms) and subscribers. Also the batch
types subscribers receive.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Union

import anyio
import httpx

from ._protocol import (
    CATCH_UP, SSE, SSE_ENCODING, START, Backoff, Chunk, LiveMode, Mode, ReadState, check_live, chunk_from_response,
    decode_json_parts, is_json, media_type,
)
from ._sse import SseChunker, SseDecoder
from ._transport import LIVE_TIMEOUT, HeadersSpec, ParamsSpec, Transport, check
from .errors import ALREADY_CONSUMED, NETWORK, DurableStreamError, FetchError

# After this many SSE connections in a row that broke or ended without a
# single event, live=True gives up on SSE (a buffering proxy) for long-poll.
SSE_FAILURES_BEFORE_LONG_POLL = 3


@dataclass(frozen=True)
class JsonBatch:
    """Messages from one answer, and the position after them."""

    items: list[Any]
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


Callback = Callable[[Any], Union[None, Awaitable[None]]]


async def stream(
    url: str,
    offset: str = START,
    live: LiveMode = False,
    *,
    headers: HeadersSpec | None = None,
    params: ParamsSpec | None = None,
    client: httpx.AsyncClient | None = None,
    backoff: Backoff | None = None,
) -> StreamResponse:
    """Starts reading ``url`` from ``offset`` (``"-1"`` start, ``"now"`` tail); returns after the first answer.

    ``live``: False reads until up to date; ``"long-poll"`` or ``"sse"``
    then keep following; True picks SSE for JSON/text and long-poll for
    binary streams. Errors such as NOT_FOUND are raised here. Header and
    param values may be callables (sync or async), called per request.
    """
    transport = Transport(client=client, headers=headers, params=params, backoff=backoff)
    try:
        return await open_response(transport, url, offset, live, owns_transport=True)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await transport.aclose()
        raise


async def open_response(transport: Transport, url: str, offset: str, live: LiveMode, *, owns_transport: bool) -> StreamResponse:
    live = check_live(live)
    first = await transport.request("GET", url, params=[("offset", offset)])
    await check(first, "read", url)
    return StreamResponse(transport, url, live, offset, first, owns_transport=owns_transport)


class StreamResponse:
    """One reading session. Consume it once, by one of its methods; ``aclose()`` (or ``async with``) ends it."""

    def __init__(
        self, transport: Transport, url: str, live: LiveMode, start_offset: str, first: httpx.Response, *, owns_transport: bool
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

    @property
    def is_json(self) -> bool:
        return is_json(self.content_type)

    async def aclose(self) -> None:
        """Ends the session and releases its connections (the client too, if ``stream()`` made it)."""
        self._consumed = True
        if self._owns_transport:
            with anyio.CancelScope(shield=True):
                await self._transport.aclose()

    async def __aenter__(self) -> StreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- whole-session helpers: read until up to date (even in live mode) -------

    async def body(self) -> bytes:
        """All bytes up to the first up-to-date answer."""
        out = bytearray()
        async with aclosing(self._chunks(stop_at_up_to_date=True)) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                out += chunk.data
        return bytes(out)

    async def text(self) -> str:
        """All text up to the first up-to-date answer (UTF-8)."""
        return (await self.body()).decode("utf-8")

    async def json(self) -> list[Any]:
        """All messages of a JSON stream up to the first up-to-date answer."""
        self._require_json()
        items: list[Any] = []
        async with aclosing(self._chunks(stop_at_up_to_date=True)) as chunks:
            async for chunk in chunks:
                items.extend(decode_json_parts(chunk.parts))
                self._deliver(chunk)
        return items

    # -- iterators: follow the session (live modes until EOF) --------------------

    async def byte_stream(self) -> AsyncIterator[bytes]:
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                if chunk.parts:
                    yield chunk.data

    async def text_stream(self) -> AsyncIterator[str]:
        # Answers may end inside a multi-byte character; the decoder holds it over.
        decoder = codecs.getincrementaldecoder("utf-8")()
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                text = decoder.decode(chunk.data, final=chunk.closed)
                if text:
                    yield text

    async def json_stream(self) -> AsyncIterator[Any]:
        """One message at a time. ``offset`` moves past a batch as its last message is handed out."""
        self._require_json()
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                items = decode_json_parts(chunk.parts)
                if not items:
                    self._deliver(chunk)
                for i, item in enumerate(items):
                    if i == len(items) - 1:
                        self._deliver(chunk)
                    yield item

    async def json_batches(self) -> AsyncIterator[JsonBatch]:
        self._require_json()
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                yield JsonBatch(decode_json_parts(chunk.parts), chunk.offset, chunk.up_to_date, chunk.closed, chunk.cursor)

    async def byte_batches(self) -> AsyncIterator[ByteBatch]:
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                yield ByteBatch(chunk.data, chunk.offset, chunk.up_to_date, chunk.closed, chunk.cursor)

    async def text_batches(self) -> AsyncIterator[TextBatch]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                self._deliver(chunk)
                text = decoder.decode(chunk.data, final=chunk.closed)
                yield TextBatch(text, chunk.offset, chunk.up_to_date, chunk.closed, chunk.cursor)

    # -- subscribers: a callback per batch; returns when the session ends --------

    async def subscribe_json(self, callback: Callback) -> None:
        """Calls ``callback(JsonBatch)`` per batch; an async callback is awaited (backpressure).

        Returns at EOF (or when up to date with live=False). Run it in a
        task group and cancel that to unsubscribe.
        """
        await _drive(self.json_batches(), callback)

    async def subscribe_bytes(self, callback: Callback) -> None:
        await _drive(self.byte_batches(), callback)

    async def subscribe_text(self, callback: Callback) -> None:
        await _drive(self.text_batches(), callback)

    # -- the session ---------------------------------------------------------

    def _require_json(self) -> None:
        if not self.is_json:
            raise TypeError(f"not a JSON stream (content type {self.content_type!r}); use bytes or text")

    def _deliver(self, chunk: Chunk) -> None:
        self.offset = chunk.offset
        self.cursor = chunk.cursor or self.cursor
        self.up_to_date = chunk.up_to_date
        self.closed = self.closed or chunk.closed

    async def _chunks(self, *, stop_at_up_to_date: bool = False) -> AsyncIterator[Chunk]:
        """Chunks a consumer should see; silent ones (keep-alives, long-poll timeouts) only move the position."""
        if self._consumed:
            raise DurableStreamError("this StreamResponse has already been consumed", ALREADY_CONSUMED)
        self._consumed = True
        first = True
        try:
            async with aclosing(self._fetched(stop_at_up_to_date)) as fetched:
                async for chunk in fetched:
                    news = first or chunk.parts or chunk.closed or (chunk.up_to_date and not self.up_to_date)
                    first = False
                    if news:
                        yield chunk
                    else:
                        self._deliver(chunk)
        finally:
            await self.aclose()

    async def _fetched(self, stop_at_up_to_date: bool) -> AsyncIterator[Chunk]:
        state = self._state
        chunk, self._first = self._first, None
        if chunk is not None:
            state.apply(chunk)
            yield chunk
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            mode = state.next_mode()
            if mode == SSE:
                async with aclosing(self._sse(stop_at_up_to_date)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            else:
                yield await self._poll(mode)

    async def _poll(self, mode: Mode) -> Chunk:
        state = self._state
        timeout = httpx.USE_CLIENT_DEFAULT if mode == CATCH_UP else LIVE_TIMEOUT
        response = await self._transport.request("GET", self.url, params=state.params(mode), timeout=timeout)
        await check(response, "read", self.url)
        self._note(response)
        chunk = chunk_from_response(response.status_code, response.headers, response.content, offset=state.offset, cursor=state.cursor)
        state.apply(chunk)
        return chunk

    async def _sse(self, stop_at_up_to_date: bool) -> AsyncIterator[Chunk]:
        """SSE connections, one after another, until the session is over or SSE is given up on."""
        state, backoff = self._state, self._transport.backoff
        failures = 0
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            delivered = False
            failure: httpx.TransportError | None = None
            try:
                async with aclosing(self._sse_connection()) as chunks:
                    async for chunk in chunks:
                        state.apply(chunk)
                        delivered, failures = True, 0
                        yield chunk
                        if state.finished(stop_at_up_to_date=stop_at_up_to_date):
                            return
            except _NotSse as exc:
                if state.live is True:  # the server (or a proxy) does not do SSE: poll instead
                    state.sse_failed = True
                    return
                raise DurableStreamError(str(exc), "SSE_NOT_SUPPORTED", self.status, url=self.url) from None
            except httpx.TransportError as exc:
                failure = exc
            if delivered and failure is None:
                continue  # the server's periodic close: reconnect at once from the last offset
            failures += 1
            if state.live is True and failures >= SSE_FAILURES_BEFORE_LONG_POLL:
                state.sse_failed = True
                return
            if not backoff.may_retry(failures - 1):
                raise FetchError(f"SSE connection keeps failing: {failure!r}", NETWORK, None, url=self.url) from failure
            await anyio.sleep(backoff.delay_s(failures - 1, random.random()))

    async def _sse_connection(self) -> AsyncIterator[Chunk]:
        async with self._transport.stream(self.url, params=self._state.params(SSE)) as response:
            await check(response, "read", self.url)
            self._note(response)
            if media_type(response.headers.get("content-type")) != "text/event-stream":
                raise _NotSse(f"live=sse answered with {response.headers.get('content-type')!r}, not an event stream")
            decoder = SseDecoder()
            base64_data = response.headers.get(SSE_ENCODING, "").strip().lower() == "base64"
            chunker = SseChunker(base64_data=base64_data, cursor=self._state.cursor)
            async for data in response.aiter_bytes():
                for event in decoder.feed(data):
                    chunk = chunker.on_event(event)
                    if chunk is not None:
                        yield chunk

    def _note(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers


class _NotSse(Exception):
    """A live=sse request answered with something other than an event stream."""


async def _drive(batches: AsyncIterator[Any], callback: Callback) -> None:
    async with aclosing(batches) as it:  # type: ignore[type-var]
        async for batch in it:
            result = callback(batch)
            if inspect.isawaitable(result):
                await result
