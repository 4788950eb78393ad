"""FanOut: every live reader's wake-up channel, and the paced wake-ups that keep writers first.

Owns: per-stream readers' ``Wakeup``s (at most one pending, so a busy
reader finds one wake-up and re-reads from its own offset — nothing
queues), and the order and pace in which they are woken after a durable
change.

Why paced: Trio runs every runnable task once per scheduler round, in no
particular order. Woken all at once, 1,000 readers of one stream would make
each round that long, and a writer's reply — which needs several rounds
(request, actor, log, answer) — would wait behind every one of them. Here
the log writer's hook only queues the readers; one task wakes at most
``wakes_per_round`` of them per round, so a round holds a bounded amount of
reader work and appends (to this stream or any other) keep their latency
while the fan-out proceeds at the same total speed. A reader queued twice
before its turn is woken once, and reads everything new when it runs.

Admission: a long-poll reader's next request, sent the moment its answer
arrives, is not even parsed while wake-ups are queued: the connection
guard (http/hypercorn_guard.py) holds its bytes and calls ``admit``, which
joins the same queue and returns when the pacer reaches it. Read at once,
each early reader's re-poll would take a share of every round the later
readers' deliveries need, and the last delivery of a 1,000-reader fan-out
would wait behind ~1,000 re-polls; released all together after the last
wake-up, they would make one long round that the last deliveries wait
behind. Queued, they are paced like the deliveries, behind them. The wait
is bounded by the queue ahead, and costs nothing when the queue is empty.

Never: reads data or sends anything (readers do, after their wait).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import trio

from ..protocol.errors import ProtocolError


class Wakeup:
    """One reader's wake-up, for one waiting task: set wakes it, or is kept until its next wait.

    What a memory channel of buffer 1 would do, in a few slots instead of
    about two kilobytes of channel state per parked reader.
    """

    __slots__ = ("_pending", "_task")

    def __init__(self) -> None:
        self._pending = False
        self._task: trio.lowlevel.Task | None = None

    @property
    def pending(self) -> bool:
        return self._pending

    def set(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)
        else:
            self._pending = True

    async def wait(self) -> None:
        """Returns at once (after a checkpoint) if a wake-up is pending, else at the next ``set``."""
        assert self._task is None, "one waiting task per Wakeup"
        if self._pending:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._pending = False
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class FanOut:
    def __init__(self, subscribers_per_stream_max: int, wakes_per_round: int) -> None:
        self._subscribers_max = subscribers_per_stream_max
        self._wakes_per_round = wakes_per_round
        self._subscribers: dict[int, set[Wakeup]] = {}
        # Wake-ups to give, oldest first, as an ordered set (a reader queued twice is
        # woken once): parked readers and re-polls waiting for admission alike.
        self._pending: collections.OrderedDict[Wakeup, None] = collections.OrderedDict()
        self._admissions_waiting = 0
        self._queued = trio.Event()

    @contextlib.contextmanager
    def subscribe(self, stream_id: int) -> Iterator[Wakeup]:
        """A ``Wakeup`` set after each durable change to the stream."""
        subscribers = self._subscribers.setdefault(stream_id, set())
        if len(subscribers) >= self._subscribers_max:
            if not subscribers:
                del self._subscribers[stream_id]
            raise ProtocolError(503, "TOO_MANY_SUBSCRIBERS", "too many live readers on this stream")
        wakeup = Wakeup()
        subscribers.add(wakeup)
        try:
            yield wakeup
        finally:
            subscribers.discard(wakeup)
            self._pending.pop(wakeup, None)
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

    async def admit(self) -> None:
        """A long-poll's next request: returns when the wake-ups queued before it are given.

        At once (no checkpoint) when nothing is queued.
        """
        if not self._pending:
            return
        gate = Wakeup()
        self._pending[gate] = None
        self._queued.set()
        self._admissions_waiting += 1
        try:
            await gate.wait()
        finally:
            self._admissions_waiting -= 1
            self._pending.pop(gate, None)  # still there when cancelled before its turn

    async def run(self) -> None:
        """Wakes queued readers, at most ``wakes_per_round`` per scheduler round, forever."""
        try:
            while True:
                await self._queued.wait()
                self._queued = trio.Event()
                while self._pending:
                    self._wake_some()
                    # One round: the readers just woken run in it, beside whatever else is runnable.
                    await trio.lowlevel.checkpoint()
        finally:  # shutdown: nobody is left waiting for a turn that would never come
            while self._pending:
                self._pending.popitem(last=False)[0].set()

    def _wake_some(self) -> None:
        pending = self._pending
        for _ in range(min(self._wakes_per_round, len(pending))):
            wakeup, _ = pending.popitem(last=False)
            wakeup.set()

    def statistics(self) -> dict[str, int]:
        return {
            "subscribed_streams": len(self._subscribers),
            "subscribers": sum(len(s) for s in self._subscribers.values()),
            "fanout_pending": len(self._pending),
            "fanout_admissions_waiting": self._admissions_waiting,
        }
