"""Streams: the one interface above the streams layer (HTTP, and next, subscriptions).

Owns: the operations a client-facing layer may perform on streams —
create (forks included), append, delete, head (metadata of a path), open
for reading (an access: resets a sliding TTL), read a chunk, wait for data
after a position, the fenced streams and plain statistics. Everything
below it — the registry and its actors, the table, the store, the log — is
reachable only through these methods.

Never: HTTP, or any status decision (protocol.rules and protocol.reads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..protocol.headers import AppendRequest, CreateRequest
from ..protocol.reads import Chunk
from ..protocol.rules import Reply
from ..protocol.state import StreamState
from .chunks import ChunkReader
from .live import LiveWaits, Watch
from .registry import Registry


class Streams:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        settings = registry.settings
        self._chunks = ChunkReader(registry.view, settings.read_chunk_bytes_max, settings.read_cache_bytes_max)
        self._waits = LiveWaits(registry)

    # -- writes ------------------------------------------------------------

    async def create(self, path: str, request: CreateRequest) -> Reply:
        return await self._registry.create(path, request)

    async def append(self, path: str, request: AppendRequest) -> Reply:
        self._registry.addressed(path)  # cheap early 404/410 (and expiry) before queueing on an actor
        return await self._registry.append(path, request)

    async def delete(self, path: str) -> Reply:
        self._registry.addressed(path)
        return await self._registry.delete(path)

    # -- reads -------------------------------------------------------------

    def refuse_if_damaged(self, path: str) -> None:
        """503 STREAM_DAMAGED for a stream recovery fenced off, whatever the request."""
        self._registry.refuse_if_damaged(path)

    def head(self, path: str) -> StreamState:
        """The addressed stream's metadata (404/410); not an access: HEAD never resets a sliding TTL."""
        return self._registry.addressed(path)

    def open(self, path: str) -> StreamState:
        """The addressed stream for a read (404/410); an access, so it resets a sliding TTL."""
        state = self._registry.addressed(path)
        self._registry.touch(state)
        return state

    async def read_chunk(self, state: StreamState, start: int) -> Chunk:
        """The bytes from ``start``: at most ``read_chunk_bytes_max``, JSON cut between messages."""
        return await self._chunks.read_chunk(state, start)

    async def byte_before(self, state: StreamState, position: int) -> bytes:
        """The stored byte at ``position - 1`` (a JSON message ends there if it is a newline)."""
        return await self._chunks.byte_before(state, position)

    @contextlib.contextmanager
    def watch(self, state: StreamState) -> Iterator[Watch]:
        """A live wait on ``state``'s stream: ``wait_for_data(position, deadline)`` inside."""
        with self._waits.watch(state) as watch:
            yield watch

    def drain(self) -> None:
        """Shutdown: every live wait ends now (and every later one at once)."""
        self._waits.drain()

    # -- operations ----------------------------------------------------------

    def fenced(self) -> list[dict[str, object]]:
        return self._registry.fenced()

    def statistics(self) -> dict[str, int]:
        return self._registry.statistics()
