"""Reading sessions for the sync client: ``stream()`` and its StreamResponse, blocking.

The same sessions as ``response.py`` — catch-up, long-poll, SSE with
reconnects, resumable positions — driven by plain loops on httpx's sync
client. Every decision is ``ResponseCore``'s; this module only does the IO
and offers the consumption methods as plain functions and iterators.

Iterators hold a connection while they run: leave them by exhausting them,
``break`` (the session ends when the iterator is closed or collected) or
``with``/``close()`` on the response.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from typing import Any, TypeVar

import httpx

from ._protocol import SSE, START, Backoff, Chunk, LiveMode, TrimmedGap, check_live, trimmed_gap
from ._sync_transport import SyncTransport
from ._transport import HeadersSpec, OnError, ParamsSpec
from .errors import OffsetTrimmedError
from .response import ByteBatch, JsonBatch, ResponseCore, Shape, TextBatch, _bytes, _NotSse

T = TypeVar("T")
O = TypeVar("O")
B = TypeVar("B")
OnTrimmed = Callable[[TrimmedGap], object]


def stream(
    url: str,
    offset: str = START,
    live: LiveMode = False,
    *,
    headers: HeadersSpec | None = None,
    params: ParamsSpec | None = None,
    client: httpx.Client | None = None,
    backoff: Backoff | None = None,
    on_error: OnError | None = None,
    on_trimmed: OnTrimmed | None = None,
) -> StreamResponse[Any]:
    """Starts reading ``url`` from ``offset``; returns after the first answer (see the async ``stream``).

    Header and param providers must be plain callables returning ``str``;
    ``on_error`` must return ``RetryOpts`` or None without awaiting, and
    ``on_trimmed`` is a plain callable too.
    """
    transport = SyncTransport(client=client, headers=headers, params=params, backoff=backoff, on_error=on_error)
    try:
        return open_response(transport, url, offset, live, owns_transport=True, on_trimmed=on_trimmed)
    except BaseException:
        transport.close()
        raise


def open_response(
    transport: SyncTransport, url: str, offset: str, live: LiveMode, *, owns_transport: bool,
    on_trimmed: OnTrimmed | None = None,
) -> StreamResponse[Any]:
    live = check_live(live)
    while True:
        try:
            first = transport.read(url, params=[("offset", offset)])
            break
        except OffsetTrimmedError as error:
            gap = trimmed_gap(error, offset, resume=on_trimmed is not None)
            if on_trimmed:
                on_trimmed(gap)
            offset = gap.to_offset
    return StreamResponse(transport, url, live, offset, first, owns_transport=owns_transport, on_trimmed=on_trimmed)


class StreamResponse(ResponseCore[T, SyncTransport]):
    """One blocking reading session. Consume it once, by one of its methods; ``close()`` (or ``with``) ends it."""

    def close(self) -> None:
        """Ends the session and releases its connections (the client too, if ``stream()`` made it)."""
        self._consumed = True
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> StreamResponse[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- whole-session helpers: read until up to date (even in live mode) -------

    def body(self) -> bytes:
        """All bytes up to the first up-to-date answer."""
        pieces: Iterator[bytes] = self._shaped(_bytes, stop_at_up_to_date=True)
        return b"".join(pieces)

    def text(self) -> str:
        """All text up to the first up-to-date answer (UTF-8)."""
        return self.body().decode("utf-8")

    def json(self) -> list[T]:
        """All messages of a JSON stream up to the first up-to-date answer."""
        return list(self._shaped(self._json_items(), stop_at_up_to_date=True))

    # -- iterators: follow the session (live modes until EOF) --------------------

    def byte_stream(self) -> Iterator[bytes]:
        return self._shaped(_bytes)

    def text_stream(self) -> Iterator[str]:
        return self._shaped(self._texts())

    def json_stream(self) -> Iterator[T]:
        """One message at a time. ``offset`` moves past a batch as its last message is handed out."""
        return self._shaped(self._json_items())

    def json_batches(self) -> Iterator[JsonBatch[T]]:
        return self._shaped(self._json_batches())

    def byte_batches(self) -> Iterator[ByteBatch]:
        return self._shaped(self._byte_batches())

    def text_batches(self) -> Iterator[TextBatch]:
        return self._shaped(self._text_batches())

    # -- subscribers: a callback per batch; returns when the session ends --------

    def subscribe_json(self, callback: Callable[[JsonBatch[T]], object]) -> None:
        """Calls ``callback(JsonBatch)`` per batch until EOF (or up to date with live=False); raise to stop."""
        _drive(self.json_batches(), callback)

    def subscribe_bytes(self, callback: Callable[[ByteBatch], object]) -> None:
        _drive(self.byte_batches(), callback)

    def subscribe_text(self, callback: Callable[[TextBatch], object]) -> None:
        _drive(self.text_batches(), callback)

    # -- the session ---------------------------------------------------------

    def _shaped(self, shape: Shape[O], *, stop_at_up_to_date: bool = False) -> Iterator[O]:
        # Shapes are built (and a non-JSON stream refused) now, not at the first next().
        return self._handed_all(shape, stop_at_up_to_date)

    def _handed_all(self, shape: Shape[O], stop_at_up_to_date: bool) -> Generator[O, None, None]:
        with closing(self._chunks(stop_at_up_to_date)) as chunks:
            for chunk in chunks:
                yield from self._handed(chunk, shape(chunk))

    def _chunks(self, stop_at_up_to_date: bool) -> Generator[Chunk, None, None]:
        self._start_consuming()
        first = True
        try:
            with closing(self._fetched(stop_at_up_to_date)) as fetched:
                for chunk in fetched:
                    if self._is_news(chunk, first):
                        yield chunk
                    else:
                        self._deliver(chunk)
                    first = False
        finally:
            self.close()

    def _fetched(self, stop_at_up_to_date: bool) -> Generator[Chunk, None, None]:
        state = self._state
        chunk, self._first = self._first, None
        if chunk is not None:
            state.apply(chunk)
            yield chunk
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            mode = state.next_mode()
            try:
                if mode == SSE:
                    yield from self._sse(stop_at_up_to_date)
                else:
                    params, timeout = self._poll_request(mode)
                    yield self._polled(self._transport.read(self.url, params=params, timeout=timeout))
            except OffsetTrimmedError as error:
                self._skip_trimmed(error)

    def _sse(self, stop_at_up_to_date: bool) -> Generator[Chunk, None, None]:
        """SSE connections, one after another, until the session is over or SSE is given up on."""
        state = self._state
        while not state.finished(stop_at_up_to_date=stop_at_up_to_date):
            delivered = False
            failure: httpx.TransportError | None = None
            try:
                with self._transport.stream(self.url, params=state.params(SSE)) as response:
                    feed = self._sse_parser(response)
                    for data in response.iter_bytes():
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
                time.sleep(pause)


def _drive(batches: Iterator[B], callback: Callable[[B], object]) -> None:
    with closing(batches):  # type: ignore[type-var]
        for batch in batches:
            callback(batch)
