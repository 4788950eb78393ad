"""DurableView: read-only access to the durable stream table and stream data.

Owns: the questions the streams layer asks of storage — which stream a path
holds now, how many streams there are, bytes of a stream (stitched across
its fork chain) — so actors, fork resolution and readers never hold the
mutable ``StreamTable`` or the ``Store`` itself. Never: changes state; the
log writer alone applies events.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.state import StreamState, StreamTable
from ..storage.store import Store


class DurableView:
    def __init__(self, table: StreamTable, store: Store) -> None:
        self._table = table
        self._store = store

    def at(self, path: str) -> StreamState | None:
        """The durable stream at ``path``, exactly as the log left it (expired or not)."""
        return self._table.by_path.get(path)

    def by_id(self, stream_id: int) -> StreamState | None:
        """The durable stream with this id, wherever (and whether or not soft-deleted)."""
        return self._table.by_id.get(stream_id)

    def count(self) -> int:
        return len(self._table.by_id)

    def streams(self) -> list[StreamState]:
        """Every stream, as a snapshot: safe to iterate across checkpoints."""
        return list(self._table.by_id.values())

    def trim_limit(self, state: StreamState) -> int:
        """How far retention may trim ``state``: its tail, or less where forks still read it."""
        return self._table.trim_limit(state)

    def stream_ids(self) -> Iterable[int]:
        return self._table.by_id.keys()

    @property
    def next_stream_id(self) -> int:
        return self._table.next_stream_id

    def fenced_ids(self) -> dict[int, str]:
        """Stream ids recovery found records of but no stream for, and why."""
        return dict(self._table.fenced_ids)

    async def read(self, state: StreamState, start: int, end: int) -> bytes:
        return await self._store.read(self._table, state, start, end)

    async def read_messages(self, state: StreamState, start: int, tail: int, bytes_max: int) -> bytes:
        return await self._store.read_messages(self._table, state, start, tail, bytes_max)

    async def next_boundary(self, state: StreamState, position: int) -> int:
        return await self._store.next_boundary(self._table, state, position)
