"""Chunks: a stream's bytes at a position in stored and HTTP body form, cached.

Owns: reading one chunk (at most ``read_chunk_bytes_max``; JSON streams cut
after the last whole message) and the cache of encoded chunks. Never:
decides statuses or headers (protocol.reads does).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from ..protocol import jsonmode
from ..protocol.errors import not_found
from ..protocol.reads import Chunk, check_retained, chunk_of
from ..protocol.state import StreamState
from .view import DurableView


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


class ChunkReader:
    def __init__(self, view: DurableView, chunk_bytes_max: int, cache_bytes_max: int) -> None:
        self._view = view
        self._limit = chunk_bytes_max
        self.cache = ChunkCache(cache_bytes_max)

    async def read_chunk(self, state: StreamState, start: int) -> Chunk:
        check_retained(state, start)  # a live reader may have fallen behind a trim while it waited
        tail, closed = state.tail, state.closed  # the table may move on while we read
        key = (state.stream_id, start, min(tail, start + self._limit))
        hit = self.cache.get(key)
        if hit is None:
            with _deleted_while_reading():
                if state.json_mode:
                    raw = await self._view.read_messages(state, start, tail, self._limit)
                else:
                    raw = await self._view.read(state, start, key[2])
            hit = (raw, jsonmode.to_array(raw) if state.json_mode else raw)
            self.cache.put(key, hit)
        raw, body = hit
        return chunk_of(start, raw, body, tail, closed)

    async def byte_before(self, state: StreamState, position: int) -> bytes:
        with _deleted_while_reading():
            return await self._view.read(state, position - 1, position)


@contextlib.contextmanager
def _deleted_while_reading() -> Iterator[None]:
    """A stream deleted (with its fork chain) while we read it is a 404, not a 500."""
    try:
        yield
    except (FileNotFoundError, KeyError):
        raise not_found() from None
