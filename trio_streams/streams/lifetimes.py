"""Lifetimes: when each stream was last accessed, for sliding TTLs.

Owns: the last-access time of every stream (reads and writes reset it,
HEAD does not) and the question "is this stream expired now". The rule
itself is ``protocol.rules.is_expired``. Never: deletes anything; the
registry turns an expiry into a delete.

The map is reached only through these methods, so it can be snapshotted
(``last_access``) and restored (``restore``) as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..clock import Clock
from ..protocol.rules import is_expired
from ..protocol.state import StreamState


class Lifetimes:
    def __init__(self, clock: Clock, stream_ids: Iterable[int]) -> None:
        self._clock = clock
        now = clock.wall()
        # A restart counts as an access: nothing expires early.
        self._last_access: dict[int, float] = dict.fromkeys(stream_ids, now)

    def touch(self, stream_id: int) -> None:
        self._last_access[stream_id] = self._clock.wall()

    def forget(self, stream_id: int) -> None:
        self._last_access.pop(stream_id, None)

    def is_expired(self, state: StreamState) -> bool:
        return is_expired(state, self._last_access.get(state.stream_id), self._clock.wall())

    def last_access(self) -> dict[int, float]:
        """A copy of the whole map (UNIX seconds by stream id), e.g. for a checkpoint."""
        return dict(self._last_access)

    def restore(self, last_access: Mapping[int, float]) -> None:
        """Takes saved times back (a clean restart: storage/lastaccess.py)."""
        self._last_access.update(last_access)
