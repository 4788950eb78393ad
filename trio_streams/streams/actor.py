"""StreamActor: the one task that serializes every write to one stream path.

Owns: the order of creates, appends, closes and deletes for its path. It
drains its bounded command channel in batches, decides each command with
protocol.rules against a speculative copy of the stream's state (so later
commands in the batch see earlier ones), hands all resulting events to the
log in one submission, and answers every command once they are durable.

Never: reads data (beyond fork resolution), talks HTTP, knows the
registry, or exits while commands are queued. An idle actor (no command
for ``actor_idle_s``) closes its channel and returns; the registry, which
runs it, unregisters it in the same step and starts a new one on demand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Union

import trio

from ..protocol.errors import ProtocolError, internal, not_found
from ..protocol.headers import AppendRequest, CreateRequest
from ..protocol.rules import (
    Reply, ResolvedFork, after_delete, check_stream_limit, decide_append, decide_create, decide_delete,
)
from ..protocol.state import Deleted, Event, StreamState, Trimmed, apply_append, state_from_created
from ..storage.log import StorageFailed
from .context import ActorContext
from .forks import resolve_fork, with_default_offset

log = logging.getLogger("trio_streams.actor")


@dataclasses.dataclass(slots=True)
class Command:
    request: Union[CreateRequest, AppendRequest, "DeleteRequest", "TrimRequest"]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    reply: Reply | None = None
    error: Exception | None = None

    async def wait(self) -> Reply:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteRequest:
    only_stream_id: int | None = None  # expiry sweeps delete one incarnation, never a newer one


@dataclasses.dataclass(frozen=True, slots=True)
class TrimRequest:
    """Retention asks for a trim of this incarnation (never a newer one at the path)."""

    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class ActorStatistics:
    path: str
    commands: int
    batches: int
    queue_depth: int


class StreamActor:
    def __init__(self, context: ActorContext, path: str) -> None:
        self.path = path
        self._context = context
        settings = context.settings
        self.send_channel, self._receive = trio.open_memory_channel[Command](settings.actor_queue_depth)
        self._idle_s = settings.actor_idle_s
        self._batch_max = settings.actor_batch_max
        self._commands = 0
        self._batches = 0

    def statistics(self) -> ActorStatistics:
        depth = self.send_channel.statistics().current_buffer_used
        return ActorStatistics(self.path, self._commands, self._batches, depth)

    async def run(self) -> None:
        """Serves commands until idle (returns) or cancelled (answers what is left with 503).

        The channel is closed on the way out without a checkpoint, and the
        caller unregisters the actor before its next checkpoint, so no
        command can slip into the channel unseen.
        """
        batch: list[Command] = []
        try:
            # One idle scope for the actor's life, not one per batch: with a stream
            # per connection every append is a batch, and a scope costs more than deciding.
            with trio.CancelScope() as idle:
                while True:
                    batch = self._drain(await self._next(idle))
                    await self._process_safely(batch)
        finally:
            self._abandon(batch)
            self._receive.close()

    async def _next(self, idle: trio.CancelScope) -> Command:
        """The next command; waiting for one, at most ``actor_idle_s`` (then ``idle`` is cancelled)."""
        try:
            return self._receive.receive_nowait()  # the batch before yielded while it was durable
        except trio.WouldBlock:
            pass
        idle.deadline = trio.current_time() + self._idle_s
        command = await self._receive.receive()
        idle.deadline = math.inf  # a batch is never cut short for idleness
        return command

    def _abandon(self, batch: list[Command]) -> None:
        """Cancelled (the service stops): answer what is left, or its callers wait forever.

        A command the log already made durable was answered; one still queued
        was never submitted; one in a batch cut before its answer is in doubt.
        Either way 503: the caller may retry once the server is back.
        """
        left = [c for c in batch if not c.done.is_set()]
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        _fail_unanswered(left, ProtocolError(503, "SHUTTING_DOWN", "the server is stopping; retry shortly"))
        for command in left:
            command.done.set()

    def _drain(self, first: Command) -> list[Command]:
        batch = [first]
        while len(batch) < self._batch_max:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _process_safely(self, batch: list[Command]) -> None:
        """Processes a batch; a bug there fails the batch's unanswered commands, never the actor.

        One request must not be able to end the process: an exception that
        escaped this task would cancel every actor and the service with it.
        """
        try:
            await self._process(batch)
        except Exception:
            log.exception("processing a batch of %d commands for stream %r failed", len(batch), self.path)
            _fail_unanswered(batch, internal())
            for command in batch:
                command.done.set()

    async def _process(self, batch: list[Command]) -> None:
        self._commands += len(batch)
        self._batches += 1
        view = self._context.view.at(self.path)
        expired = view is not None and self._context.lifetimes.is_expired(view)
        if expired or any(_changes_topology(c.request) for c in batch):
            # Forks and deletes touch two streams (source refcounts): they are
            # decided and made durable one batch at a time, server-wide.
            async with self._context.topology_lock:
                await self._decide_and_commit(batch)
        else:
            await self._decide_and_commit(batch)

    async def _decide_and_commit(self, batch: list[Command]) -> None:
        events: list[Event] = []
        view = self._context.view.at(self.path)
        if view is not None and self._context.lifetimes.is_expired(view):
            events.append(Deleted(view.stream_id))
            view = after_delete(view)
        now = self._context.clock.wall()
        for command in batch:
            view = await self._decide(command, view, events, now)
        if events:
            try:
                # Once submitted, it waits for the outcome even if cancelled: answers must
                # match what became durable (Log.submit).
                await self._context.submit(events)
            except StorageFailed as exc:
                _fail_unanswered(batch, exc.protocol_error())
            except Exception:
                # Whether the events became durable is unknown: no command may claim success.
                log.exception("submitting %d events for stream %r failed", len(events), self.path)
                _fail_unanswered(batch, internal())
        for command in batch:
            command.done.set()

    async def _decide(self, command: Command, view: StreamState | None, events: list[Event], now: float) -> StreamState | None:
        try:
            fork = None
            request = command.request
            if isinstance(request, TrimRequest):
                trim, command.reply = await self._decide_trim(request, view)
                if trim is not None:
                    events.append(trim)
                return view
            if isinstance(request, CreateRequest) and request.fork is not None:
                if view is None:
                    fork = await resolve_fork(self._context, request.fork)
                else:
                    request = dataclasses.replace(request, fork=with_default_offset(self._context, request.fork))
            event, view, command.reply = self._decide_one(request, view, now, fork)
        except ProtocolError as exc:
            command.error = exc
            return view
        except Exception:
            # A bug triggered by this one command: it alone fails, with the
            # view as the previous command left it, so the rest of the batch
            # is decided exactly as if it had never arrived.
            log.exception("deciding a %s for stream %r failed", type(command.request).__name__, self.path)
            command.error = internal()
            return view
        if event is not None:
            events.append(event)
        return view

    async def _decide_trim(self, request: TrimRequest, view: StreamState | None) -> tuple[Trimmed | None, Reply]:
        """A trim decided against the durable stream: its index says where a JSON stream's
        messages end, and the batch's own appends only move the tail further."""
        durable = self._context.view.at(self.path)
        if view is None or durable is None or not view.stream_id == durable.stream_id == request.stream_id:
            return None, Reply(204)  # deleted or re-created meanwhile: nothing of it to trim
        target = await self._context.retainer.target(durable)
        return (None if target is None else Trimmed(durable.stream_id, target)), Reply(204)

    def _decide_one(
        self, request: object, view: StreamState | None, now: float, fork: ResolvedFork | None
    ) -> tuple[Event | None, StreamState | None, Reply]:
        if isinstance(request, AppendRequest):
            if view is None:
                raise not_found()
            event, reply = decide_append(view, request)
            if event is not None and self._context.retainer.dates_appends(view):
                event = dataclasses.replace(event, at=now)  # dates the data for trims by age
            if event is not None:
                view = view.speculative_copy()
                apply_append(view, event)
            return event, view, reply
        if isinstance(request, CreateRequest):
            check_stream_limit(view, self._context.view.count(), self._context.settings.streams_max)
            stream_id = self._context.allocate_stream_id() if view is None else 0
            event, reply = decide_create(view, self.path, request, stream_id, now, fork)
            if event is not None:
                view = state_from_created(event)
            return event, view, reply
        assert isinstance(request, DeleteRequest)
        return decide_delete(view, request.only_stream_id)


def _fail_unanswered(batch: list[Command], error: ProtocolError) -> None:
    for command in batch:
        if command.error is None:
            command.error = error


def _changes_topology(request: object) -> bool:
    return isinstance(request, DeleteRequest) or (isinstance(request, CreateRequest) and request.fork is not None)

