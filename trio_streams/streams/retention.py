"""Retention on the streams side: which policy a stream has, where it may be trimmed, and the sweep.

Owns: the operator's policies (``retention_*`` settings) resolved per stream
with ``protocol.retention``, the trim target of a stream (the reads it
needs: a JSON stream is cut at a message boundary, found in its index), and
the periodic sweep that asks the streams' actors to trim. Never: writes
anything — a trim is a ``Trimmed`` event its stream's actor decides and the
log writer makes durable, then frees the disk space below it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..clock import Clock
from ..config import Settings
from ..protocol.retention import Retention, age_target, bytes_target, parse_rules, policy_for
from ..protocol.state import StreamState
from .view import DurableView


class Retainer:
    def __init__(self, settings: Settings, view: DurableView, clock: Clock) -> None:
        self._rules = parse_rules(settings.retention_rules)
        self._default = Retention(settings.retention_max_age_s, settings.retention_max_bytes)
        self._step_bytes = settings.retention_trim_step_bytes
        self._settings = settings
        self._view = view
        self._clock = clock

    def policy(self, state: StreamState) -> Retention:
        return policy_for(state.path, state.retention, self._rules, self._default)

    def dates_appends(self, state: StreamState) -> bool:
        """Whether the stream's appends carry their time (only an age policy needs it)."""
        return self.policy(state).max_age_s > 0

    def over_budget(self, state: StreamState) -> bool:
        """A cheap look (no reads) after an append: is a byte budget's trim due?"""
        return self._due(state, self.policy(state), by_age=False)

    def _due(self, state: StreamState, policy: Retention, *, by_age: bool) -> bool:
        if state.damaged is not None or not policy.limited:
            return False
        if bytes_target(state.head, state.tail, policy.max_bytes, self._step_bytes) is not None:
            return True
        return by_age and (age_target(state.marks, policy.max_age_s, self._clock.wall()) or 0) > state.head

    async def target(self, state: StreamState) -> int | None:
        """Where the stream may be trimmed to now (a new head), or None: nothing to trim.

        The byte budget's cut is moved up to a message boundary in a JSON
        stream; an age cut is an append boundary already. Never past what the
        stream's forks still read (the table's apply holds it there too)."""
        policy = self.policy(state)
        if not self._due(state, policy, by_age=True):
            return None
        cuts = [age_target(state.marks, policy.max_age_s, self._clock.wall()) or 0]
        by_bytes = bytes_target(state.head, state.tail, policy.max_bytes, self._step_bytes)
        if by_bytes is not None:
            if state.json_mode and by_bytes < state.tail:
                by_bytes = await self._view.next_boundary(state, by_bytes - 1)
            cuts.append(by_bytes)
        target = min(max(cuts), self._view.trim_limit(state))
        return target if target > state.head else None

    async def sweep(self, trim: Callable[[StreamState], None]) -> None:
        """Calls ``trim`` for every stream whose policy wants a trim, at most
        ``retention_sweep_trims_max`` per pass, looking at
        ``retention_sweep_slice_streams`` streams between yields: a backlog of
        trims is spread over passes instead of stalling the event loop."""
        streams = self._view.streams()
        step, budget = self._settings.retention_sweep_slice_streams, self._settings.retention_sweep_trims_max
        for first in range(0, len(streams), step):
            if first:
                await trio.lowlevel.checkpoint()
            for state in streams[first : first + step]:
                if self._due(state, self.policy(state), by_age=True):
                    trim(state)
                    budget -= 1
                    if not budget:
                        return

    async def sweep_forever(self, trim: Callable[[StreamState], None]) -> None:
        while True:
            await trio.sleep(self._settings.retention_sweep_interval_s)
            await self.sweep(trim)

