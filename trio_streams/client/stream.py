"""The DurableStream handle: create, inspect, write, close, delete and read one stream URL.

Owns: the write operations (create PUT, append and close POSTs, DELETE,
HEAD) and their request headers; feeding appends through the
``WriteQueue`` so concurrent appends coalesce into one POST; learning the
stream's content type (from create, HEAD or a read) because it decides how
appends are encoded.

Never reads data itself (``response.py`` does, on this handle's connection
pool) and never resends an append that may have been applied: plain
appends are retried only when the failure proves the request never took
effect (connect errors, 429, 503). For retry-safe writes use
``IdempotentProducer``.

A handle is cheap and does no IO until used. It owns an httpx client unless
given one; ``aclose()`` or ``async with`` releases it.

``StreamCore`` holds what every request of a handle is made of (headers,
bodies, which failures may be retried) and what its answers mean; the sync
handle (``sync.py``) shares it and differs only in doing the IO.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from ._batching import APPEND, CLOSE, UPLOAD, Write, WriteQueue
from ._protocol import (
    CLOSED, DEFAULT_CONTENT_TYPE, NEXT_OFFSET, SEQ, START, Backoff, CloseResult, HeadResult, LiveMode, create_body,
    create_headers, encode_message, fork_headers, frame_batch, head_result, is_json,
)
from ._transport import HeadersSpec, OnError, ParamsSpec, Transport, TransportCore, check
from .response import OnTrimmed, StreamResponse, open_response

# Appends coalesced into one POST stay below this: well under the 64 MiB
# default request limit of servers, and small enough to retry cheaply.
APPEND_BATCH_BYTES_MAX = 1024 * 1024

TransportT = TypeVar("TransportT", bound=TransportCore[Any])


@dataclass(frozen=True)
class Post:
    """One write request of a handle, ready to send: ``op`` names it for error messages."""

    op: str
    headers: dict[str, str]
    content: Any
    idempotent: bool
    retry: bool = True
    seq_sent: bool = False


class StreamCore(Generic[TransportT]):
    """A handle's URL, content type and transport, and how its requests are made; no IO."""

    url: str
    content_type: str | None
    _transport: TransportT

    def _create_request(
        self, content_type: str, ttl: int | None, expires_at: str | _dt.datetime | None, body: Any, closed: bool,
        extra: dict[str, str] | None = None,
    ) -> Post:
        headers = {**create_headers(content_type, ttl, expires_at, closed), **(extra or {})}
        return Post("create", headers, create_body(body, json_mode=is_json(content_type)), idempotent=True)

    def _fork_request(
        self, new_url: str, offset: str | None, sub_offset: int | None, content_type: str | None,
        ttl: int | None, expires_at: str | _dt.datetime | None,
    ) -> Post:
        headers = {**create_headers("", ttl, expires_at, False), **fork_headers(self.url, new_url, offset, sub_offset)}
        if content_type is None:
            del headers["content-type"]  # a fork inherits its source's
        else:
            headers["content-type"] = content_type
        return Post("create", headers, None, idempotent=True)

    def _created(self, response: httpx.Response, content_type: str | None) -> None:
        self.content_type = response.headers.get("content-type") or content_type

    def _headed(self, response: httpx.Response) -> HeadResult:
        result = head_result(response.headers)
        self.content_type = result.content_type or self.content_type
        return result

    def _append_request(self, batch: list[Write]) -> Post:
        first = batch[0]
        headers = {"content-type": self.content_type or DEFAULT_CONTENT_TYPE}
        if first.seq is not None:
            headers[SEQ] = first.seq
        if first.kind == UPLOAD:
            content = first.payload
        else:
            content = frame_batch([w.payload for w in batch], json_mode=is_json(self.content_type))
        # Never resent once it may have been applied; an upload cannot be replayed at all.
        return Post("append", headers, content, idempotent=False, retry=first.kind != UPLOAD, seq_sent=first.seq is not None)

    def _close_request(self, piece: bytes | None) -> Post:
        headers = {CLOSED: "true"}
        content = None
        if piece is not None:
            headers["content-type"] = self.content_type or DEFAULT_CONTENT_TYPE
            content = frame_batch([piece], json_mode=is_json(self.content_type))
        # A bare close is idempotent (an already closed stream answers 204); one with a final message is not.
        return Post("close", headers, content, idempotent=piece is None)


class DurableStream(StreamCore[Transport]):
    """A handle on one stream URL. ``headers``/``params`` values may be callables (fresh tokens per request)."""

    def __init__(
        self,
        url: str,
        *,
        headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None,
        content_type: str | None = None,
        client: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        batching: bool = True,
        batch_bytes_max: int = APPEND_BATCH_BYTES_MAX,
        on_error: OnError | None = None,
    ) -> None:
        self.url = url
        self.content_type = content_type
        self._transport = Transport(client=client, headers=headers, params=params, backoff=backoff, on_error=on_error)
        self._writes = WriteQueue(self._send, batch_bytes_max=batch_bytes_max if batching else 0)

    @classmethod
    async def create(
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
        """Creates the stream (201, or 200 if it exists with this configuration) and returns its handle.

        ``body`` is the initial content: bytes or str as they are, or for a
        JSON stream a list of messages. ``closed=True`` creates it closed
        (a one-shot stream). A different existing configuration raises
        CONFLICT_EXISTS.
        """
        handle = cls(url, content_type=content_type, **handle_options)
        await handle._put(handle._create_request(content_type, ttl, expires_at, body, closed), content_type)
        return handle

    @classmethod
    async def connect(cls, url: str, **handle_options: Any) -> DurableStream:
        """A handle on an existing stream, checked (and its content type learnt) with HEAD."""
        handle = cls(url, **handle_options)
        try:
            await handle.head()
        except BaseException:
            await handle.aclose()
            raise
        return handle

    async def fork(
        self,
        new_url: str,
        offset: str | None = None,
        sub_offset: int | None = None,
        *,
        content_type: str | None = None,
        ttl: int | None = None,
        expires_at: str | _dt.datetime | None = None,
    ) -> DurableStream:
        """Creates ``new_url`` as a fork of this stream and returns its handle (on this handle's connections).

        The fork holds this stream's data before ``offset`` (default: all of
        it now) plus ``sub_offset`` more messages (JSON) or bytes, then goes
        its own way. Re-forking with the same arguments is fine; other ones
        raise CONFLICT_EXISTS.
        """
        fork = DurableStream(new_url, content_type=content_type)
        fork._transport = self._transport.derive()
        await fork._put(self._fork_request(new_url, offset, sub_offset, content_type, ttl, expires_at), content_type)
        return fork

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> DurableStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def head(self) -> HeadResult:
        """Metadata: tail offset, content type, closed, TTL or expiry."""
        response = await self._transport.request("HEAD", self.url)
        return self._headed(await check(response, "head", self.url))

    async def delete(self) -> None:
        response = await self._transport.request("DELETE", self.url)
        await check(response, "delete", self.url)

    async def append(self, data: Any, *, seq: str | None = None) -> str | None:
        """Appends one message; returns the tail offset after the POST that carried it.

        JSON streams take any JSON-encodable value (bytes: one value already
        encoded); other streams take bytes or str. Appends made while a POST
        is in flight are sent together in the next one (a JSON array for
        JSON streams). ``seq`` is sent as ``Stream-Seq``; such appends
        travel alone.
        """
        piece = encode_message(data, json_mode=await self._json_mode())
        result: str | None = await self._writes.submit(Write(APPEND, piece, seq, len(piece)))
        return result

    async def append_stream(self, source: AsyncIterable[bytes | str], *, seq: str | None = None) -> str | None:
        """Uploads ``source`` as one chunked POST (one append); never retried, as it cannot be replayed."""
        await self._json_mode()
        result: str | None = await self._writes.submit(Write(UPLOAD, _encoded(source), seq))
        return result

    async def close(self, body: Any = None) -> CloseResult:
        """Closes the stream (EOF), with ``body`` as a final message appended atomically if given.

        Closing without a body is idempotent; with a body it raises
        StreamClosedError if the stream is already closed.
        """
        piece = None if body is None else encode_message(body, json_mode=await self._json_mode())
        result: CloseResult = await self._writes.submit(Write(CLOSE, piece))
        return result

    async def stream(
        self, offset: str = START, live: LiveMode = False, *, headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None, on_trimmed: OnTrimmed | None = None,
    ) -> StreamResponse[Any]:
        """Reads this stream (see ``trio_streams.client.stream``), on this handle's connections."""
        transport = self._transport.derive(headers=headers, params=params)
        response = await open_response(transport, self.url, offset, live, owns_transport=False, on_trimmed=on_trimmed)
        self.content_type = response.content_type or self.content_type
        return response

    async def read(self, offset: str = START, live: LiveMode = False) -> str:
        """The stream's text from ``offset`` up to its current end (UTF-8); ``read_json``/``read_bytes`` for the rest."""
        return await (await self.stream(offset, live)).text()

    async def read_bytes(self, offset: str = START, live: LiveMode = False) -> bytes:
        return await (await self.stream(offset, live)).body()

    async def read_json(self, offset: str = START, live: LiveMode = False) -> list[Any]:
        return await (await self.stream(offset, live)).json()

    async def _put(self, post: Post, content_type: str | None) -> None:
        """A create (or fork) PUT; the handle is closed if it fails, as nobody else will have it."""
        try:
            response = await self._transport.request("PUT", self.url, headers=post.headers, content=post.content)
            await check(response, post.op, self.url)
        except BaseException:
            await self.aclose()
            raise
        self._created(response, content_type)

    async def _json_mode(self) -> bool:
        if self.content_type is None:
            await self.head()
        return is_json(self.content_type)

    async def _send(self, batch: list[Write]) -> Any:
        if batch[0].kind == CLOSE:
            post = self._close_request(batch[0].payload)
        else:
            post = self._append_request(batch)
        response = await self._post(post)
        if post.op == "close":
            return CloseResult(response.headers.get(NEXT_OFFSET))
        return response.headers.get(NEXT_OFFSET)

    async def _post(self, post: Post) -> httpx.Response:
        response = await self._transport.request(
            "POST", self.url, headers=post.headers, content=post.content, idempotent=post.idempotent, retry=post.retry
        )
        return await check(response, post.op, self.url, seq_sent=post.seq_sent)


async def _encoded(source: AsyncIterable[bytes | str]) -> AsyncIterator[bytes]:
    async for chunk in source:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        if data:  # an empty chunk would end a chunked body early
            yield data
