"""StreamRegistry: owns the nursery of stream actors and the reader fan-out.

Owns: path → actor (started on demand, gone when idle), stream expiry (TTL
and Expires-At, evaluated at request time and by a periodic sweep), the
sliding-TTL access clock, and per-stream subscriber channels that wake
long-poll and SSE readers after each durable change.

Never: writes the WAL (the log does) or decides protocol outcomes (the
actors do, via protocol.rules). Readers never go through an actor, so a
read never queues behind writes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import trio

from ..config import Settings
from ..protocol.errors import ProtocolError
from ..protocol.headers import AppendRequest, CreateRequest
from ..protocol.rules import Reply
from ..protocol.state import Deleted, Event, StreamState, StreamTable
from ..storage.log import Log
from ..storage.store import Store
from .actor import Command, DeleteRequest, StreamActor, _after_delete
from .forks import damaged_error
from .framing import JsonFraming

EXPIRY_SWEEP_S = 10.0


class Registry:
    def __init__(self, settings: Settings, table: StreamTable, store: Store, log: Log, nursery: trio.Nursery) -> None:
        self.settings = settings
        self.table = table
        self.store = store
        self.log = log
        self._nursery = nursery
        self._actors: dict[str, StreamActor] = {}
        self._subscribers: dict[int, set[trio.MemorySendChannel[None]]] = {}
        self._last_access: dict[int, float] = {}
        self._expiring: set[int] = set()
        self._next_stream_id = table.next_stream_id
        self.topology_lock = trio.Lock()
        self.framing = JsonFraming(settings)
        now = time.time()
        for stream_id in table.by_id:  # restart counts as an access: nothing expires early
            self._last_access[stream_id] = now

    # -- writes (through the path's actor) ------------------------------

    async def create(self, path: str, request: CreateRequest) -> Reply:
        request = await self.framing.create(request, self._expected_content_type(request))
        reply = await self._command(path, request)
        self._touch_path(path)
        return reply

    async def append(self, path: str, request: AppendRequest) -> Reply:
        request = await self.framing.append(request)
        reply = await self._command(path, request)
        self._touch_path(path)
        return reply

    def _expected_content_type(self, request: CreateRequest) -> str | None:
        """A new stream's content type: as given, or inherited from a fork's source (None if unknown)."""
        if request.fork is None or request.content_type_given:
            return request.content_type
        source = self.table.by_path.get(request.fork.source)
        return source.content_type if source is not None else None

    async def delete(self, path: str) -> Reply:
        return await self._command(path, DeleteRequest())

    async def _command(self, path: str, request: object) -> Reply:
        command = Command(request)  # type: ignore[arg-type]
        while True:
            actor = self._actors.get(path)
            if actor is None:
                actor = self._actors[path] = StreamActor(self, path)
                self._nursery.start_soon(actor.run)
            try:
                await actor.send_channel.send(command)
                break
            except trio.ClosedResourceError:
                continue  # the actor went idle between lookup and send; start another
        return await command.wait()

    def actor_exited(self, actor: StreamActor) -> None:
        if self._actors.get(actor.path) is actor:
            del self._actors[actor.path]
        state = self.table.by_path.get(actor.path)
        if state is not None and not self._subscribers.get(state.stream_id):
            self.store.forget(state.stream_id)

    def allocate_stream_id(self) -> int:
        self._next_stream_id = max(self._next_stream_id, self.table.next_stream_id)
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        return stream_id

    def durable_state(self, path: str) -> StreamState | None:
        return self.table.by_path.get(path)

    # -- reads -----------------------------------------------------------

    def lookup(self, path: str) -> StreamState | None:
        """The stream at ``path`` as clients see it; an expired one is deleted in the background.

        Expiry is a delete, so an expired stream reads as what the delete
        will leave, from the first request on: nothing (404), or, while forks
        still reference it, a soft-deleted stream (410 Gone, 4.2).
        """
        state = self.table.by_path.get(path)
        if state is not None and self.is_expired(state, time.time()):
            self._start_expiry(path, state.stream_id)
            return _after_delete(state)
        return state

    def get(self, path: str) -> StreamState:
        """The stream a client addresses: 404 when there is none, 410 when soft-deleted."""
        state = self.lookup(path)
        if state is None:
            raise ProtocolError(404, "NOT_FOUND", "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "GONE", "stream has been deleted")
        return state

    def refuse_if_damaged(self, path: str) -> None:
        """Every request to a stream recovery fenced off is refused, reads and writes alike."""
        state = self.table.by_path.get(path)
        if state is not None and state.damaged is not None:
            raise damaged_error(state)

    def fenced(self) -> list[dict[str, object]]:
        """The streams recovery fenced off, for /healthz."""
        fenced: list[dict[str, object]] = [
            {"path": s.path, "id": s.stream_id, "reason": s.damaged} for s in self.table.by_id.values() if s.damaged is not None
        ]
        fenced += [{"path": None, "id": i, "reason": why} for i, why in self.table.fenced_ids.items()]
        return fenced

    def touch(self, state: StreamState) -> None:
        """A read or write resets the sliding TTL (HEAD does not call this)."""
        self._last_access[state.stream_id] = time.time()

    def _touch_path(self, path: str) -> None:
        state = self.table.by_path.get(path)
        if state is not None:
            self.touch(state)

    def is_expired(self, state: StreamState, now: float) -> bool:
        if state.soft_deleted:
            return False  # already deleted; kept only for its forks
        expiry = state.expiry
        if expiry.expires_at_s is not None and now >= expiry.expires_at_s:
            return True
        if expiry.ttl_s is not None:
            last = self._last_access.get(state.stream_id, state.created_at)
            return now - last >= expiry.ttl_s
        return False

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

    async def sweep_expired_forever(self) -> None:
        while True:
            await trio.sleep(EXPIRY_SWEEP_S)
            now = time.time()
            for state in list(self.table.by_id.values()):
                if self.is_expired(state, now):
                    self._start_expiry(state.path, state.stream_id)

    # -- fan-out -----------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, stream_id: int) -> Iterator[trio.MemoryReceiveChannel[None]]:
        """A channel that receives a wake-up after each durable change to the stream.

        Buffer 1 and ``send_nowait``: a reader that is busy simply finds one
        pending wake-up and re-reads from its own offset — nothing queues.
        """
        subscribers = self._subscribers.setdefault(stream_id, set())
        if len(subscribers) >= self.settings.subscribers_per_stream_max:
            raise ProtocolError(503, "TOO_MANY_SUBSCRIBERS", "too many live readers on this stream")
        send, receive = trio.open_memory_channel[None](1)
        subscribers.add(send)
        try:
            yield receive
        finally:
            subscribers.discard(send)
            if not subscribers:
                del self._subscribers[stream_id]

    def on_applied(self, state: StreamState | None, event: Event) -> None:
        if isinstance(event, Deleted):
            self._last_access.pop(event.stream_id, None)
        for send in self._subscribers.get(event.stream_id, ()):
            try:
                send.send_nowait(None)
            except trio.WouldBlock:
                pass

    def statistics(self) -> dict[str, object]:
        return {
            "streams": len(self.table.by_id),
            "actors": len(self._actors),
            "subscribed_streams": len(self._subscribers),
            "subscribers": sum(len(s) for s in self._subscribers.values()),
        }
