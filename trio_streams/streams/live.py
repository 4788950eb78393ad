"""Live waits: the one primitive long-poll and SSE (and, later, subscriptions) wait with.

Owns: ``Watch.wait_for_data(position, deadline)`` — park until the watched
stream holds data past ``position``, is closed there, is gone, or the
deadline passes — and the shutdown drain that ends every wait at once.
What counts as data, closed or gone is ``protocol.reads.live_outcome``;
the stream is looked up as clients see it (``Registry.visible``), so an
expired stream is gone from the first wait that notices.

A watch subscribes *before* it first looks at the tail, so no wake-up is
lost between a look and a wait. Never: reads data or sends anything: a
caller answers after the wait returns, outside its cancel scope, so a
deadline can never cut a response that has started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import trio

from ..protocol.reads import Outcome, live_outcome
from ..protocol.state import StreamState
from .fanout import Wakeup
from .registry import Registry


@dataclasses.dataclass(frozen=True, slots=True)
class Waited:
    outcome: Outcome
    # The stream as it stood when the wait ended (None when the path holds nothing).
    state: StreamState | None


class LiveWaits:
    """Every wait in progress, so shutdown can end them all at once."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._scopes: set[trio.CancelScope] = set()
        self._draining = False

    def drain(self) -> None:
        """Shutdown: every wait ends now with TIMEOUT, and later ones end at once."""
        self._draining = True
        for scope in self._scopes:
            scope.cancel()

    @contextlib.contextmanager
    def watch(self, stream: StreamState) -> Iterator[Watch]:
        """Waits on ``stream`` (this incarnation); 503 over ``subscribers_per_stream_max``."""
        with self._registry.subscribe(stream.stream_id) as wakeup:
            yield Watch(self._registry, self._bounded, stream, wakeup)

    @contextlib.contextmanager
    def _bounded(self, deadline: float) -> Iterator[None]:
        with trio.move_on_at(-math.inf if self._draining else deadline) as scope:
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)


class Watch:
    def __init__(
        self,
        registry: Registry,
        bounded: Callable[[float], contextlib.AbstractContextManager[None]],
        stream: StreamState,
        wakeup: Wakeup,
    ) -> None:
        self._registry = registry
        self._bounded = bounded
        self._stream = stream
        self._wakeup = wakeup

    async def wait_for_data(self, position: int, deadline: float) -> Waited:
        """Until the stream has data past ``position``, is closed there or gone, or ``deadline``
        (trio time; ``-math.inf`` only looks) passes."""
        current: StreamState | None = self._stream
        with self._bounded(deadline):
            while True:
                current = self._registry.visible(self._stream.path)
                outcome = live_outcome(self._stream.stream_id, current, position)
                if outcome is not None:
                    return Waited(outcome, current)
                await self._wakeup.wait()
        return Waited(Outcome.TIMEOUT, current)
