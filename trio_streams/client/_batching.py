"""Coalescing concurrent writes to one stream into as few POSTs as possible, in call order.

Owns: the queue of writes waiting for a POST, and the hand-off of the
sending role. Theory of operation: the write that finds no POST in flight
sends one, carrying itself and every append queued behind it (up to a
byte limit); appends that arrive meanwhile wait. When the POST is
answered, every write it carried gets the answer, and the oldest waiting
write is woken to send the next POST. There is no background task: each
POST runs in the task of one of the writes it carries, so cancellation and
errors stay with the callers, and the same code runs on Trio and asyncio.

Closes and streamed uploads queue too (so they never overtake appends that
were submitted before them) but always travel alone, as do appends that
carry their own ``Stream-Seq``.

Never builds requests: it hands lists of ``Write`` to the ``send`` function
it was given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .errors import NETWORK, FetchError

APPEND = "append"
CLOSE = "close"
UPLOAD = "upload"


@dataclass(eq=False)
class Write:
    kind: str
    payload: Any  # bytes for appends; bytes or None for closes; an async iterable for uploads
    seq: str | None = None
    size: int = 0
    woken: anyio.Event | None = field(default=None, repr=False)
    leads: bool = False
    taken: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def joinable(self) -> bool:
        return self.kind == APPEND and self.seq is None


class WriteQueue:
    """FIFO of writes to one stream; ``submit`` returns that write's answer."""

    def __init__(self, send: Callable[[list[Write]], Awaitable[Any]], *, batch_bytes_max: int) -> None:
        self._send = send
        self._batch_bytes_max = batch_bytes_max
        self._queue: deque[Write] = deque()
        self._busy = False  # invariant: the queue is non-empty only while busy

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def submit(self, write: Write) -> Any:
        write.woken = anyio.Event()
        self._queue.append(write)
        if self._busy:
            try:
                await write.woken.wait()
            except BaseException:
                self._abandon(write)
                raise
        else:
            self._busy = True
            write.leads = True
        if write.leads and not write.done:
            await self._lead()
        if write.error is not None:
            raise write.error
        return write.result

    async def _lead(self) -> None:
        batch = self._take()
        try:
            result = await self._send(batch)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._settle(batch, error=exc)
            else:
                # Cancelled (or interrupted) mid-POST: nobody knows whether the
                # server applied it, and the other writers must hear so.
                self._settle(batch, error=FetchError(
                    "the POST carrying this write was cancelled; it may or may not have been applied", NETWORK))
                raise
        else:
            self._settle(batch, result=result)
        finally:
            self._hand_over()

    def _take(self) -> list[Write]:
        first = self._queue.popleft()
        first.taken = True
        batch, size = [first], first.size
        if not first.joinable() or self._batch_bytes_max <= 0:  # a limit of 0 turns batching off
            return batch
        while self._queue:
            nxt = self._queue[0]
            if not nxt.joinable() or size + nxt.size > self._batch_bytes_max:
                break
            self._queue.popleft()
            nxt.taken = True
            batch.append(nxt)
            size += nxt.size
        return batch

    def _settle(self, batch: list[Write], *, result: Any = None, error: BaseException | None = None) -> None:
        for write in batch:
            write.done, write.result, write.error = True, result, error
            if write.woken is not None:
                write.woken.set()

    def _hand_over(self) -> None:
        self._busy = False
        if self._queue:
            nxt = self._queue[0]
            nxt.leads = True
            self._busy = True
            assert nxt.woken is not None
            nxt.woken.set()

    def _abandon(self, write: Write) -> None:
        """A waiting writer was cancelled: drop its write if it was not sent, and pass on a sending role."""
        if write.done or write.taken:
            return  # already answered, or travelling in another writer's POST
        self._queue.remove(write)
        if write.leads:
            self._hand_over()
