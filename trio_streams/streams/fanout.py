"""FanOut: every live reader's wake-up channel, and the paced wake-ups that keep writers first.

Owns: per-stream subscriber channels (buffer 1, so a busy reader finds one
pending wake-up and re-reads from its own offset — nothing queues), and the
order and pace in which they are woken after a durable change.

Why paced: Trio runs every runnable task once per scheduler round, in no
particular order. Woken all at once, 1,000 readers of one stream would make
each round that long, and a writer's reply — which needs several rounds
(request, actor, log, answer) — would wait behind every one of them. Here
the log writer's hook only queues the readers; one task wakes at most
``wakes_per_round`` of them per round, so a round holds a bounded amount of
reader work and appends (to this stream or any other) keep their latency
while the fan-out proceeds at the same total speed. A reader queued twice
before its turn is woken once, and reads everything new when it runs.

Never: reads data or sends anything (readers do, after their wait).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import trio

from ..protocol.errors import ProtocolError


class FanOut:
    def __init__(self, subscribers_per_stream_max: int, wakes_per_round: int) -> None:
        self._subscribers_max = subscribers_per_stream_max
        self._wakes_per_round = wakes_per_round
        self._subscribers: dict[int, set[trio.MemorySendChannel[None]]] = {}
        # Readers to wake, oldest first, as an ordered set: a reader queued twice is woken once.
        self._pending: collections.OrderedDict[trio.MemorySendChannel[None], None] = collections.OrderedDict()
        self._queued = trio.Event()

    @contextlib.contextmanager
    def subscribe(self, stream_id: int) -> Iterator[trio.MemoryReceiveChannel[None]]:
        """A channel that receives a wake-up after each durable change to the stream."""
        subscribers = self._subscribers.setdefault(stream_id, set())
        if len(subscribers) >= self._subscribers_max:
            if not subscribers:
                del self._subscribers[stream_id]
            raise ProtocolError(503, "TOO_MANY_SUBSCRIBERS", "too many live readers on this stream")
        send, receive = trio.open_memory_channel[None](1)
        subscribers.add(send)
        try:
            yield receive
        finally:
            subscribers.discard(send)
            self._pending.pop(send, None)
            if not subscribers:
                del self._subscribers[stream_id]

    def has_subscribers(self, stream_id: int) -> bool:
        return bool(self._subscribers.get(stream_id))

    def notify(self, stream_id: int) -> None:
        """The stream changed durably: queue each of its readers (synchronous; the log writer's hook)."""
        subscribers = self._subscribers.get(stream_id)
        if not subscribers:
            return
        self._pending.update(dict.fromkeys(subscribers))
        self._queued.set()

    async def run(self) -> None:
        """Wakes queued readers, at most ``wakes_per_round`` per scheduler round, forever."""
        while True:
            await self._queued.wait()
            self._queued = trio.Event()
            while self._pending:
                self._wake_some()
                # One round: the readers just woken run in it, beside whatever else is runnable.
                await trio.lowlevel.checkpoint()

    def _wake_some(self) -> None:
        pending = self._pending
        for _ in range(min(self._wakes_per_round, len(pending))):
            send, _ = pending.popitem(last=False)
            try:
                send.send_nowait(None)
            except trio.WouldBlock:
                pass  # a wake-up is already waiting for this reader

    def statistics(self) -> dict[str, int]:
        return {
            "subscribed_streams": len(self._subscribers),
            "subscribers": sum(len(s) for s in self._subscribers.values()),
            "fanout_pending": len(self._pending),
        }
