"""Registry: owns the nursery of stream actors, expiry and the reader fan-out.

Owns: path → actor (started on demand, unregistered by the registry when
its run ends), stream expiry (TTL and Expires-At, evaluated at request time
and by a periodic sweep, turned into a delete), and the reader fan-out
(streams/fanout.py) that wakes live readers after each durable change.

Path lookups, one rule each:
* ``DurableView.at(path)``: the durable stream, exactly as the log left it
  (actors decide against it).
* ``visible(path)``: as clients see it now — an expired stream reads as
  what its delete will leave (nothing, or soft-deleted), and that delete is
  started in the background.
* ``addressed(path)``: ``visible`` for a request: 404 for nothing, 410 for
  soft-deleted (``protocol.rules.addressed``).

Never: writes the WAL (the log does) or decides protocol outcomes (actors
do, via protocol.rules). Readers never go through an actor, so a read never
queues behind writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..clock import Clock
from ..config import Settings
from ..protocol import rules
from ..protocol.errors import ProtocolError
from ..protocol.headers import AppendRequest, CreateRequest
from ..protocol.rules import Reply
from ..protocol.state import Deleted, Event, StreamState
from ..quick import send_soon
from .actor import Command, DeleteRequest, StreamActor, TrimRequest
from .context import ActorContext
from .fanout import FanOut, Wakeup
from .framing import JsonFraming
from .lifetimes import Lifetimes
from .retention import Retainer
from .view import DurableView


class Registry:
    def __init__(
        self,
        settings: Settings,
        view: DurableView,
        submit: Callable[[Sequence[Event]], Awaitable[None]],
        nursery: trio.Nursery,
        clock: Clock,
        release: Callable[[int], None] = lambda stream_id: None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.clock = clock
        self.lifetimes = Lifetimes(clock, view.stream_ids())
        self._nursery = nursery
        # Called with a stream id when no actor or reader uses it any more (drops its hot tail).
        self._release = release
        self._actors: dict[str, StreamActor] = {}
        self.fanout = FanOut(settings.subscribers_per_stream_max, settings.fanout_wakes_per_round)
        self._expiring: set[int] = set()
        self._trimming: set[int] = set()
        self.retainer = Retainer(settings, view, clock)
        self._next_stream_id = view.next_stream_id
        self.framing = JsonFraming(settings)
        self.context = ActorContext(
            view, submit, self._allocate_stream_id, self.lifetimes, settings, trio.Lock(), clock, self.retainer
        )

    # -- writes (through the path's actor) ------------------------------

    async def create(self, path: str, request: CreateRequest) -> Reply:
        request = await self.framing.create(request, self._expected_content_type(request))
        reply = await self._command(path, request)
        self._touch_path(path)
        return reply

    async def append(self, path: str, request: AppendRequest) -> Reply:
        request = await self.framing.append(request)
        reply = await self._command(path, request)
        state = self._touch_path(path)
        if state is not None and self.retainer.over_budget(state):
            self.start_trim(state)
        return reply

    def _expected_content_type(self, request: CreateRequest) -> str | None:
        """A new stream's content type: as given, or inherited from a fork's source (None if unknown)."""
        if request.fork is None or request.content_type_given:
            return request.content_type
        source = self.view.at(request.fork.source)
        return source.content_type if source is not None else None

    async def delete(self, path: str) -> Reply:
        return await self._command(path, DeleteRequest())

    async def _command(self, path: str, request: object) -> Reply:
        command = Command(request)  # type: ignore[arg-type]
        while True:
            actor = self._actors.get(path)
            if actor is None:
                actor = self._actors[path] = StreamActor(self.context, path)
                self._nursery.start_soon(self._run_actor, actor)
            try:
                await send_soon(actor.send_channel, command)  # beyond actor_queue_depth it waits
                break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # the actor ended between lookup and send; it is unregistered: start another
        return await command.wait()

    async def _run_actor(self, actor: StreamActor) -> None:
        try:
            await actor.run()
        finally:
            # No checkpoint between the actor closing its channel and this: no
            # sender can find a closed actor registered.
            self._unregister(actor)

    def _unregister(self, actor: StreamActor) -> None:
        if self._actors.get(actor.path) is actor:
            del self._actors[actor.path]
        state = self.view.at(actor.path)
        if state is not None and not self.fanout.has_subscribers(state.stream_id):
            self._release(state.stream_id)

    def _allocate_stream_id(self) -> int:
        self._next_stream_id = max(self._next_stream_id, self.view.next_stream_id)
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        return stream_id

    # -- lookups -----------------------------------------------------------

    def visible(self, path: str) -> StreamState | None:
        """The stream at ``path`` as clients see it; an expired one is deleted in the background.

        Expiry is a delete, so an expired stream reads as what the delete
        will leave, from the first request on: nothing (404), or, while forks
        still reference it, a soft-deleted stream (410 Gone, 4.2).
        """
        state = self.view.at(path)
        if state is not None and self.lifetimes.is_expired(state):
            self._start_expiry(path, state.stream_id)
            return rules.after_delete(state)
        return state

    def addressed(self, path: str) -> StreamState:
        """The stream a request addresses: 404 when there is none, 410 when soft-deleted."""
        return rules.addressed(self.visible(path))

    def refuse_if_damaged(self, path: str) -> None:
        rules.refuse_if_damaged(self.view.at(path))

    def fenced(self) -> list[dict[str, object]]:
        """The streams recovery fenced off, for /healthz."""
        fenced: list[dict[str, object]] = [
            {"path": s.path, "id": s.stream_id, "reason": s.damaged} for s in self.view.streams() if s.damaged is not None
        ]
        fenced += [{"path": None, "id": i, "reason": why} for i, why in self.view.fenced_ids().items()]
        return fenced

    def touch(self, state: StreamState) -> None:
        """A read or write resets the sliding TTL (HEAD does not call this)."""
        self.lifetimes.touch(state.stream_id)

    def _touch_path(self, path: str) -> StreamState | None:
        state = self.view.at(path)
        if state is not None:
            self.touch(state)
        return state

    # -- expiry ------------------------------------------------------------

    def _start_expiry(self, path: str, stream_id: int) -> None:
        # One delete per stream, however many requests find it expired meanwhile.
        if stream_id not in self._expiring:
            self._expiring.add(stream_id)
            self._nursery.start_soon(self._expire, path, stream_id)

    async def _expire(self, path: str, stream_id: int) -> None:
        try:
            with contextlib.suppress(ProtocolError):
                await self._command(path, DeleteRequest(only_stream_id=stream_id))
        finally:
            self._expiring.discard(stream_id)

    async def sweep_expired(self) -> None:
        """Starts the delete of every expired stream (requests find the others as they come).

        In slices of ``expiry_sweep_slice_streams``, letting other tasks run in
        between: one pass over a million streams would stall the event loop for
        a few hundred milliseconds. A stream deleted meanwhile is harmless: its
        expiry deletes only the incarnation it found.
        """
        streams = self.view.streams()
        step = self.settings.expiry_sweep_slice_streams
        for first in range(0, len(streams), step):
            if first:
                await trio.lowlevel.checkpoint()
            for state in streams[first : first + step]:
                if self.lifetimes.is_expired(state):
                    self._start_expiry(state.path, state.stream_id)

    async def sweep_expired_forever(self) -> None:
        while True:
            await trio.sleep(self.settings.expiry_sweep_interval_s)
            await self.sweep_expired()

    # -- retention -----------------------------------------------------------

    def start_trim(self, state: StreamState) -> None:
        """Asks the stream's actor for a trim (one at a time per stream), in the background."""
        if state.stream_id not in self._trimming:
            self._trimming.add(state.stream_id)
            self._nursery.start_soon(self._trim, state.path, state.stream_id)

    async def _trim(self, path: str, stream_id: int) -> None:
        try:
            with contextlib.suppress(ProtocolError):
                await self._command(path, TrimRequest(stream_id))
        finally:
            self._trimming.discard(stream_id)

    async def sweep_retention_forever(self) -> None:
        await self.retainer.sweep_forever(self.start_trim)

    # -- fan-out -----------------------------------------------------------

    def subscribe(self, stream_id: int) -> contextlib.AbstractContextManager[Wakeup]:
        """A ``Wakeup`` set after each durable change to the stream (``FanOut``)."""
        return self.fanout.subscribe(stream_id)

    def on_applied(self, state: StreamState | None, event: Event) -> None:
        if isinstance(event, Deleted):
            self.lifetimes.forget(event.stream_id)
        self.fanout.notify(event.stream_id)

    def statistics(self) -> dict[str, int]:
        return {
            "streams": self.view.count(),
            "actors": len(self._actors),
            **self.fanout.statistics(),
        }

