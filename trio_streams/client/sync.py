"""The blocking client: the async client's API on httpx's sync client.

``from trio_streams.client.sync import DurableStream, IdempotentProducer, stream``

* ``stream(url, ...)`` → ``StreamResponse`` (``_sync_response.py``): the
  same reading sessions, consumed by plain methods and iterators.
* ``DurableStream``: create, connect, head, append, append_stream (from
  any iterable or file object), close (EOF), delete, read, stream, fork.
  Its requests and answers are ``StreamCore``'s, shared with the async
  handle; only the IO differs. ``release()`` or ``with`` frees its
  connections (``close()`` closes the *stream*, as in the async API).
* ``IdempotentProducer``: the async producer, unchanged, running on a
  background thread with its own event loop. Its requests go through the
  handle's ``httpx.Client`` (auth, TLS, proxies and event hooks apply), on
  worker threads. ``append()`` queues at once and blocks only while the
  buffer is full; ``flush()``/``close()`` block until everything is
  acknowledged, or raise. An unclosed producer is flushed at interpreter
  exit, with a warning, rather than dropping what it holds.

Appends on one sync handle are serialized (one POST each, in call order);
for many small writes use the producer, which batches and pipelines.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Union, Unpack

import anyio
import anyio.from_thread
import httpx

from ._batching import APPEND, UPLOAD, Write
from ._protocol import (
    DEFAULT_CONTENT_TYPE, NEXT_OFFSET, START, Backoff, CloseResult, HeadResult, LiveMode, TrimmedGap, encode_message,
    is_json,
)
from ._sync_response import OnTrimmed, StreamResponse, open_response, stream
from ._sync_transport import SyncTransport, check
from ._transport import HeadersSpec, OnError, ParamsSpec, RetryOpts
from .errors import (
    DurableStreamError, FetchError, OffsetTrimmedError, ProducerBufferFullError, SequenceGapError, StaleEpochError,
    StreamClosedError,
)
from .producer import IdempotentProducer as AsyncIdempotentProducer
from .producer import ProducerOptions, ProducerStatistics
from .response import ByteBatch, JsonBatch, TextBatch
from .stream import DurableStream as AsyncDurableStream
from .stream import Post, StreamCore

__all__ = [
    "Backoff", "ByteBatch", "CloseResult", "DurableStream", "DurableStreamError", "FetchError", "HeadResult",
    "IdempotentProducer", "JsonBatch", "LiveMode", "OffsetTrimmedError", "ProducerBufferFullError", "ProducerStatistics",
    "RetryOpts", "SequenceGapError", "StaleEpochError", "StreamClosedError", "StreamResponse", "TextBatch", "TrimmedGap",
    "stream",
]

# Pieces a file object is read in by append_stream (one chunked POST either way).
UPLOAD_CHUNK_BYTES = 64 * 1024

UploadSource = Union[Iterable[Union[bytes, str]], IO[bytes], IO[str]]


class DurableStream(StreamCore[SyncTransport]):
    """A blocking handle on one stream URL; ``headers``/``params`` values may be callables returning str."""

    def __init__(
        self,
        url: str,
        *,
        headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None,
        content_type: str | None = None,
        client: httpx.Client | None = None,
        backoff: Backoff | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self.url = url
        self.content_type = content_type
        self._transport = SyncTransport(client=client, headers=headers, params=params, backoff=backoff, on_error=on_error)
        self._writing = threading.Lock()  # one POST at a time, in call order

    @classmethod
    def create(
        cls,
        url: str,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        ttl: int | None = None,
        expires_at: str | _dt.datetime | None = None,
        body: Any = None,
        closed: bool = False,
        **handle_options: Any,
    ) -> DurableStream:
        """Creates the stream (or finds it with this configuration) and returns its handle; see the async ``create``."""
        handle = cls(url, content_type=content_type, **handle_options)
        handle._put(handle._create_request(content_type, ttl, expires_at, body, closed), content_type)
        return handle

    @classmethod
    def connect(cls, url: str, **handle_options: Any) -> DurableStream:
        """A handle on an existing stream, checked (and its content type learnt) with HEAD."""
        handle = cls(url, **handle_options)
        try:
            handle.head()
        except BaseException:
            handle.release()
            raise
        return handle

    def fork(
        self,
        new_url: str,
        offset: str | None = None,
        sub_offset: int | None = None,
        *,
        content_type: str | None = None,
        ttl: int | None = None,
        expires_at: str | _dt.datetime | None = None,
    ) -> DurableStream:
        """Creates ``new_url`` as a fork of this stream (see the async ``fork``); its handle shares these connections."""
        fork = DurableStream(new_url, content_type=content_type)
        fork._transport = self._transport.derive()
        fork._put(self._fork_request(new_url, offset, sub_offset, content_type, ttl, expires_at), content_type)
        return fork

    def release(self) -> None:
        """Releases the handle's connections (and its httpx client, if it made it)."""
        self._transport.close()

    def __enter__(self) -> DurableStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def head(self) -> HeadResult:
        """Metadata: tail offset, content type, closed, TTL or expiry."""
        return self._headed(check(self._transport.request("HEAD", self.url), "head", self.url))

    def delete(self) -> None:
        check(self._transport.request("DELETE", self.url), "delete", self.url)

    def append(self, data: Any, *, seq: str | None = None) -> str | None:
        """Appends one message and returns the tail offset after it (encoding as the async ``append``)."""
        piece = encode_message(data, json_mode=self._json_mode())
        tail: str | None = self._post(self._append_request([Write(APPEND, piece, seq, len(piece))])).headers.get(NEXT_OFFSET)
        return tail

    def append_stream(self, source: UploadSource, *, seq: str | None = None) -> str | None:
        """Uploads an iterable of bytes/str, or a file object, as one chunked POST (one append); never retried."""
        self._json_mode()
        tail: str | None = self._post(self._append_request([Write(UPLOAD, _chunks(source), seq)])).headers.get(NEXT_OFFSET)
        return tail

    def close(self, body: Any = None) -> CloseResult:
        """Closes the stream (EOF), with ``body`` as a final message appended atomically if given."""
        piece = None if body is None else encode_message(body, json_mode=self._json_mode())
        return CloseResult(self._post(self._close_request(piece)).headers.get(NEXT_OFFSET))

    def stream(
        self, offset: str = START, live: LiveMode = False, *, headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None, on_trimmed: OnTrimmed | None = None,
    ) -> StreamResponse[Any]:
        """Reads this stream (see ``stream()``), on this handle's connections."""
        transport = self._transport.derive(headers=headers, params=params)
        response = open_response(transport, self.url, offset, live, owns_transport=False, on_trimmed=on_trimmed)
        self.content_type = response.content_type or self.content_type
        return response

    def read(self, offset: str = START, live: LiveMode = False) -> str:
        """The stream's text from ``offset`` up to its current end (UTF-8); ``read_json``/``read_bytes`` for the rest."""
        return self.stream(offset, live).text()

    def read_bytes(self, offset: str = START, live: LiveMode = False) -> bytes:
        return self.stream(offset, live).body()

    def read_json(self, offset: str = START, live: LiveMode = False) -> list[Any]:
        return self.stream(offset, live).json()

    def _put(self, post: Post, content_type: str | None) -> None:
        try:
            response = check(self._transport.request("PUT", self.url, headers=post.headers, content=post.content), post.op, self.url)
        except BaseException:
            self.release()
            raise
        self._created(response, content_type)

    def _json_mode(self) -> bool:
        if self.content_type is None:
            self.head()
        return is_json(self.content_type)

    def _post(self, post: Post) -> httpx.Response:
        with self._writing:
            response = self._transport.request(
                "POST", self.url, headers=post.headers, content=post.content, idempotent=post.idempotent, retry=post.retry
            )
            return check(response, post.op, self.url, seq_sent=post.seq_sent)


def _chunks(source: UploadSource) -> Iterator[bytes]:
    if hasattr(source, "read"):
        read = source.read
        iterable: Iterable[bytes | str] = iter(lambda: read(UPLOAD_CHUNK_BYTES), source.read(0))
    else:
        iterable = source
    for chunk in iterable:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        if data:  # an empty chunk would end a chunked body early
            yield data


# -- the producer ------------------------------------------------------------------


class IdempotentProducer:
    """Exactly-once, batched, pipelined appends from blocking code (see the async ``IdempotentProducer``).

    Usable with or without ``with``: ``append()`` queues at once (blocking
    only while ``max_buffered_bytes`` are waiting), ``flush()`` waits until
    everything is acknowledged, ``close()`` flushes and closes the stream,
    ``detach()`` flushes and leaves it open. Failures are raised by the next
    ``append``/``flush``/``close``; ``on_error`` runs on the producer's thread.
    Options (``epoch``, ``auto_claim``, ``linger_ms``, ``max_batch_bytes``,
    ``max_in_flight``, ``max_buffered_bytes``, ``headers``, ``on_error``)
    are the async producer's.
    """

    def __init__(self, stream: DurableStream, producer_id: str, **options: Unpack[ProducerOptions]) -> None:
        self.stream = stream
        self.producer_id = producer_id
        self._done = False
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio", name=f"producer-{producer_id}")
        self._portal = self._portal_cm.__enter__()
        try:
            sync_client = stream._transport.client
            self._client = httpx.AsyncClient(transport=_ThreadedTransport(sync_client), timeout=sync_client.timeout)
            transport = stream._transport
            handle = AsyncDurableStream(
                stream.url, headers=transport.headers, params=transport.params, content_type=stream.content_type,
                client=self._client, backoff=transport.backoff,
            )
            self._producer = AsyncIdempotentProducer(handle, producer_id, **options)
            self._running = self._portal.wrap_async_context_manager(self._producer)
            self._running.__enter__()  # asks for the content type if unknown; starts the background sends
        except BaseException:
            self._stop_thread()
            raise
        stream.content_type = stream.content_type or handle.content_type
        _LIVE.add(self)

    def __enter__(self) -> IdempotentProducer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leaving normally flushes (unless closed or detached); leaving with an exception abandons unsent messages."""
        self._shut_down(exc_type, exc, tb)

    def append(self, value: Any) -> None:
        """Queues one message; blocks while the buffer is full. ``flush()`` confirms delivery."""
        try:
            self._portal.call(self._producer.append, value)
        except ProducerBufferFullError:
            self._portal.call(self._producer._append_when_room, value)

    def flush(self) -> None:
        """Blocks until every queued message is acknowledged; raises the producer's failure."""
        self._portal.call(self._producer.flush)

    def close(self, final: Any = None) -> CloseResult:
        """Flushes, then closes the stream (EOF) with ``final`` as a last message if given; stops the producer."""
        try:
            result: CloseResult = self._portal.call(self._producer.close, final)
        except BaseException as exc:
            self._shut_down(type(exc), exc, exc.__traceback__)
            raise
        self._shut_down(None, None, None)
        return result

    def detach(self) -> None:
        """Flushes and stops the producer, leaving the stream open."""
        self._shut_down(None, None, None)

    def restart(self) -> None:
        """Flushes, then begins the next epoch."""
        self._portal.call(self._producer.restart)

    @property
    def epoch(self) -> int:
        return self._producer.epoch

    @property
    def next_seq(self) -> int:
        return self._producer.next_seq

    @property
    def pending_count(self) -> int:
        return self._portal.call(lambda: self._producer.pending_count) if not self._done else self._producer.pending_count

    @property
    def last_offset(self) -> str | None:
        return self._producer.last_offset

    def statistics(self) -> ProducerStatistics:
        return self._portal.call(self._producer.statistics) if not self._done else self._producer.statistics()

    def _shut_down(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._done:
            return
        self._done = True
        _LIVE.discard(self)
        try:
            self._running.__exit__(exc_type, exc, tb)  # flushes unless exc_type is set
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        try:
            if hasattr(self, "_client"):
                self._portal.call(self._client.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)


class _ThreadedTransport(httpx.AsyncBaseTransport):
    """Sends the producer's requests through the handle's sync client, on worker threads."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await anyio.to_thread.run_sync(self._send, request)

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self._client.send(request)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content, request=request)


_LIVE: weakref.WeakSet[IdempotentProducer] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """A producer still open at exit is flushed, loudly, instead of dying with its thread and its messages."""
    for producer in list(_LIVE):
        count = producer.pending_count + producer._producer.in_flight_count
        if not count:
            continue
        print(f"trio_streams: IdempotentProducer({producer.producer_id!r}) was not closed; flushing {count} messages at exit",
              file=sys.stderr)
        try:
            producer.detach()
        except Exception as exc:
            print(f"trio_streams: IdempotentProducer({producer.producer_id!r}) could not deliver: {exc!r}", file=sys.stderr)
