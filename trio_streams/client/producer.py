"""Exactly-once batched writes: the idempotent producer (PROTOCOL.md 5.2.1).

Owns: collecting appends into batches (closed after ``linger_ms`` or at
``max_batch_bytes``); numbering batches with (producer id, epoch, seq);
sending up to ``max_in_flight`` of them at once; and every producer answer:

* 200 is stored, 204 is a duplicate of something already stored — both
  success. A 204 whose ``Producer-Seq`` is beyond anything this session
  sent means another session wrote under the same epoch; that is treated
  like a stale epoch instead of silently dropping our data.
* 409 with ``Producer-Expected-Seq`` below our seq while earlier batches
  are still in flight is pipelining: requests overtook each other. The
  batch waits for the earlier ones and is resent. A gap with nothing in
  flight before it is real: SequenceGapError.
* 403 is a stale epoch: StaleEpochError, or with ``auto_claim`` the
  producer waits for its in-flight batches, takes the next epoch above the
  server's, renumbers everything unacknowledged from seq 0, and resends.

The first batch of each epoch travels alone: a new epoch must begin at
seq 0, and a later seq overtaking it would be refused.

Never retries one request itself (``_transport`` does — resending is safe
because the server deduplicates) and never decides what a status means
(``errors`` does).

``append()`` is a plain method, as in TypeScript: it queues the message at
once, so no message can hide in a coroutine that was never awaited. The
buffer is bounded: a full one makes ``append()`` raise (``drain()`` waits
for room), never drop. Sends run in a task group: under ``async with`` one
opened by ``__aenter__`` (batches leave as they fill or linger out);
without it, ``flush()``/``drain()``/``close()`` open one for their own
duration and send inline. Either way ``flush()`` returns only when every
message is acknowledged, and a producer dropped with unsent messages warns.
A failure that breaks the sequence (stale epoch, closed stream, bad
request) stops the producer: later calls and ``flush()`` raise it.
"""

from __future__ import annotations

import inspect
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import anyio
import httpx
from anyio.abc import TaskGroup

from ._protocol import (
    CLOSED, DEFAULT_CONTENT_TYPE, NEXT_OFFSET, PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, CloseResult, encode_message,
    frame_batch, is_json,
)
from ._transport import HeadersSpec, check
from .errors import DurableStreamError, ProducerBufferFullError, SequenceGapError, StaleEpochError
from .stream import DurableStream

LINGER_MS = 5
MAX_BATCH_BYTES = 1024 * 1024
MAX_IN_FLIGHT = 5
# What append() queues before refusing (ProducerBufferFullError): room for a
# TypeScript-style burst of appends before the first flush, bounded memory.
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
# A claim that is immediately fenced again means another producer is
# claiming too; two auto-claimers would leapfrog forever.
CLAIMS_WITHOUT_ACK_MAX = 3


class ProducerOptions(TypedDict, total=False):
    """The producer's keyword options, for wrappers that pass them on (the sync producer)."""

    epoch: int
    auto_claim: bool
    linger_ms: float
    max_batch_bytes: int
    max_in_flight: int
    max_buffered_bytes: int
    headers: HeadersSpec | None
    on_error: Callable[[BaseException], Any] | None


@dataclass(eq=False)
class _Batch:
    order: int
    pieces: list[bytes]
    size: int
    epoch: int = -1
    seq: int = -1


@dataclass(frozen=True)
class ProducerStatistics:
    epoch: int
    next_seq: int
    pending_messages: int
    pending_bytes: int
    in_flight_batches: int
    batches_acked: int
    duplicates: int
    gap_resends: int
    claims: int


@dataclass
class _Counters:
    batches_acked: int = 0
    duplicates: int = 0
    gap_resends: int = 0
    claims: int = 0
    claims_without_ack: int = 0


class IdempotentProducer:
    """Batched, pipelined, exactly-once appends to one stream under ``producer_id``."""

    def __init__(
        self,
        stream: DurableStream,
        producer_id: str,
        *,
        epoch: int = 0,
        auto_claim: bool = False,
        linger_ms: float = LINGER_MS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        headers: HeadersSpec | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        if not producer_id:
            raise ValueError("producer_id must be a non-empty string")
        if max_in_flight < 1 or max_batch_bytes < 1 or max_buffered_bytes < 1:
            raise ValueError("max_in_flight, max_batch_bytes and max_buffered_bytes must be positive")
        self.stream = stream
        self.producer_id = producer_id
        self.auto_claim = auto_claim
        self._transport = stream._transport.derive(headers=headers)
        self._linger_s = linger_ms / 1000
        self._max_batch_bytes = max_batch_bytes
        self._max_in_flight = max_in_flight
        self._max_buffered_bytes = max_buffered_bytes
        self._on_error = on_error
        self._epoch = epoch
        self._next_seq = 0
        self._acked_through = -1  # every seq up to this one is acknowledged, in this epoch
        self._acked: set[int] = set()
        self._established = False  # the server has acknowledged a batch in this epoch
        self._claiming = False
        self._claim_epoch = epoch
        self._returned: list[_Batch] = []  # fenced batches waiting to be renumbered by a claim
        self._open: list[bytes] = []
        self._open_bytes = 0
        self._open_generation = 0
        self._ready: deque[_Batch] = deque()
        self._in_flight: dict[int, _Batch] = {}
        self._orders = 0
        self._failure: BaseException | None = None
        self._failure_raised = False  # the caller has seen it; leaving the context need not raise it again
        self._finished = False
        self._last_offset: str | None = None
        self._counters = _Counters()
        self._changed: anyio.Event | None = None  # made on first wait: no event loop is needed to construct
        self._tg: TaskGroup | None = None  # the background one, under ``async with``
        self._inline_tg: TaskGroup | None = None  # a flush's own, without ``async with``
        self._stalled: list[_Batch] = []  # numbered batches whose send was cancelled: resent as they are

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> IdempotentProducer:
        if self.stream.content_type is None:
            await self.stream.head()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._pump()  # what was appended before entering
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None and not self._finished and not self._failure_raised:
                await self.flush()
        finally:
            # After a flush only linger timers are left; after an error nothing
            # is worth finishing. The body's own exception is not handed to the
            # task group, so it propagates as itself, not in an ExceptionGroup.
            tg, self._tg = self._tg, None
            assert tg is not None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    def __del__(self) -> None:
        if "_counters" not in self.__dict__:
            return  # __init__ refused its arguments
        if self._unsent_messages() and self._failure is None:
            warnings.warn(
                f"IdempotentProducer({self.producer_id!r}) dropped with {self._unsent_messages()} unacknowledged"
                " messages: await flush() or close() first", ResourceWarning, stacklevel=2,
            )

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def pending_count(self) -> int:
        """Messages queued and not yet sent (or whose send must be repeated)."""
        return len(self._open) + sum(len(b.pieces) for b in (*self._ready, *self._stalled))

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    @property
    def last_offset(self) -> str | None:
        """The greatest tail offset an acknowledged batch reported."""
        return self._last_offset

    def statistics(self) -> ProducerStatistics:
        c = self._counters
        return ProducerStatistics(
            self._epoch, self._next_seq, self.pending_count, self._buffered_bytes(), len(self._in_flight),
            c.batches_acked, c.duplicates, c.gap_resends, c.claims,
        )

    # -- writing -------------------------------------------------------------

    def append(self, value: Any) -> None:
        """Queues one message now (not a coroutine: nothing to forget to await); ``flush()`` confirms delivery.

        Raises ``ProducerBufferFullError`` (nothing queued) if the message
        does not fit in ``max_buffered_bytes``: ``await drain()`` makes room.
        """
        piece = self._encode(value)
        if not self._has_room(len(piece)):
            raise ProducerBufferFullError(self._buffered_bytes(), self._max_buffered_bytes)
        self._add(piece)

    async def drain(self) -> None:
        """Waits until the buffer is at most half full (sending inline without ``async with``).

        The backpressure half of ``append()``, as ``StreamWriter.drain()`` is
        for ``write()``: ``producer.append(x); await producer.drain()``.
        """
        await self._wait_for_room(self._max_buffered_bytes - self._max_buffered_bytes // 2)

    async def flush(self) -> None:
        """Sends what is buffered and waits until every batch is acknowledged; raises the producer's failure."""
        self._check_usable(allow_finished=True)
        if self._open:
            self._seal()
        if self._tg is not None or self._inline_tg is not None:
            await self._wait_idle()
        else:
            async with anyio.create_task_group() as tg:
                self._inline_tg = tg
                try:
                    self._pump()
                    await self._wait_idle()
                finally:
                    self._inline_tg = None
        self._check_usable(allow_finished=True)

    async def _wait_idle(self) -> None:
        while self._unsent_batches() and self._failure is None:
            await self._wait_changed()

    async def _wait_for_room(self, size: int) -> None:
        while not self._has_room(size):
            self._check_usable()
            if self._tg is None:
                await self.flush()  # nothing sends in the background: make room by sending now
            else:
                await self._wait_changed()
        self._check_usable()

    async def _append_when_room(self, value: Any) -> None:
        """``append`` that waits for room instead of raising (for callers that may block, like the sync producer)."""
        piece = self._encode(value)
        await self._wait_for_room(len(piece))
        self._add(piece)

    async def close(self, final: Any = None) -> CloseResult:
        """Flushes, then closes the stream (EOF), with ``final`` as a last message if given. Retry-safe."""
        await self.flush()
        piece = None if final is None else self._encode(final)
        self._finished = True
        while True:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            try:
                response = await self._post([piece] if piece is not None else [], self._epoch, seq, close=True)
            except StaleEpochError as stale:
                if not self._claim_allowed():
                    raise
                self._start_epoch(max(self._epoch, stale.current_epoch or 0) + 1)
                continue
            return CloseResult(response.headers.get(NEXT_OFFSET) or self._last_offset)

    async def detach(self) -> None:
        """Flushes and stops this producer, leaving the stream open."""
        await self.flush()
        self._finished = True

    async def restart(self) -> None:
        """Flushes, then begins the next epoch (a new session after a crash of the previous holder)."""
        await self.flush()
        self._start_epoch(self._epoch + 1)

    # -- batching ------------------------------------------------------------

    def _encode(self, value: Any) -> bytes:
        self._check_usable()
        if self.stream.content_type is None:
            raise DurableStreamError(
                "the stream's content type is unknown, so the message cannot be encoded: get the handle from"
                " DurableStream.create()/connect(), pass content_type=, or enter `async with producer` (it asks the"
                " server)", "CONTENT_TYPE_UNKNOWN", url=self.stream.url,
            )
        return encode_message(value, json_mode=self._json)

    @property
    def _json(self) -> bool:
        return is_json(self.stream.content_type)

    def _check_usable(self, *, allow_finished: bool = False) -> None:
        if self._failure is not None:
            self._failure_raised = True
            raise self._failure
        if self._finished and not allow_finished:
            raise DurableStreamError("the producer is closed or detached", "PRODUCER_FINISHED")

    def _buffered_bytes(self) -> int:
        return self._open_bytes + sum(b.size for b in (*self._ready, *self._stalled))

    def _has_room(self, size: int) -> bool:
        buffered = self._buffered_bytes()
        return buffered == 0 or buffered + size <= self._max_buffered_bytes  # an empty buffer takes any message

    def _unsent_batches(self) -> bool:
        return bool(self._ready or self._in_flight or self._claiming or self._stalled)

    def _unsent_messages(self) -> int:
        return self.pending_count + sum(len(b.pieces) for b in self._in_flight.values())

    def _task_group(self) -> TaskGroup | None:
        return self._tg or self._inline_tg

    def _add(self, piece: bytes) -> None:
        if self._open and self._open_bytes + len(piece) > self._max_batch_bytes:
            self._seal()
        self._open.append(piece)
        self._open_bytes += len(piece)
        if self._open_bytes >= self._max_batch_bytes:
            self._seal()
        elif len(self._open) == 1 and self._tg is not None:
            self._tg.start_soon(self._linger, self._open_generation)

    async def _linger(self, generation: int) -> None:
        await anyio.sleep(self._linger_s)
        if generation == self._open_generation and self._open:
            self._seal()

    def _seal(self) -> None:
        pieces, size = self._open, self._open_bytes
        self._open, self._open_bytes = [], 0
        self._open_generation += 1
        last = self._ready[-1] if self._ready else None
        if last is not None and last.size + size <= self._max_batch_bytes:
            last.pieces.extend(pieces)  # still unsent, so still growable: fewer, fuller POSTs
            last.size += size
        else:
            self._orders += 1
            self._ready.append(_Batch(self._orders, pieces, size))
        self._pump()

    def _pump(self) -> None:
        """Starts sends while the window allows (and a task group runs them); the first batch of an epoch goes alone."""
        tg = self._task_group()
        window = self._max_in_flight if self._established else 1
        while tg is not None and (self._stalled or self._ready) and self._may_send() and len(self._in_flight) < window:
            if self._stalled:
                batch = self._stalled.pop(0)  # same epoch and seq: the server deduplicates it if it arrived
            else:
                batch = self._ready.popleft()
                batch.epoch, batch.seq = self._epoch, self._next_seq
                self._next_seq += 1
            self._in_flight[batch.seq] = batch
            tg.start_soon(self._send, batch)
        self._notify()

    def _may_send(self) -> bool:
        return self._failure is None and not self._claiming

    # -- sending -------------------------------------------------------------

    async def _send(self, batch: _Batch) -> None:
        cancelled = False
        try:
            await self._deliver(batch)
        except Exception as exc:
            self._fail(exc)
        except BaseException:
            cancelled = True  # a cancelled inline flush: the batch is sent again by the next one
            raise
        finally:
            if self._in_flight.get(batch.seq) is batch:
                del self._in_flight[batch.seq]
                if cancelled:
                    self._stalled.append(batch)
                    self._stalled.sort(key=lambda b: b.seq)
            if cancelled:
                self._notify()
            else:
                self._finish_claim()
                self._pump()

    async def _deliver(self, batch: _Batch) -> None:
        while True:
            lower_acked = self._acked_through >= batch.seq - 1
            try:
                response = await self._post(batch.pieces, batch.epoch, batch.seq)
            except SequenceGapError as gap:
                # Only an overtaken request explains a gap: earlier seqs still in flight when it was sent.
                if lower_acked or gap.expected_seq is None or gap.expected_seq >= batch.seq:
                    raise
                self._counters.gap_resends += 1
                if await self._wait_lower_acked(batch):
                    continue
                self._return_for_claim(batch)
                return
            except StaleEpochError as stale:
                self._fenced(batch, stale)
                return
            if self._reused_epoch(response, batch):
                self._fenced(batch, StaleEpochError(batch.epoch, url=self.stream.url))
                return
            self._acked_one(batch, response)
            return

    async def _post(self, pieces: list[bytes], epoch: int, seq: int, *, close: bool = False) -> httpx.Response:
        headers = {PRODUCER_ID: self.producer_id, PRODUCER_EPOCH: str(epoch), PRODUCER_SEQ: str(seq)}
        content = None
        if pieces:
            headers["content-type"] = self.stream.content_type or DEFAULT_CONTENT_TYPE
            content = frame_batch(pieces, json_mode=self._json)
        if close:
            headers[CLOSED] = "true"
        response = await self._transport.request("POST", self.stream.url, headers=headers, content=content)
        return await check(response, "produce", self.stream.url)

    def _reused_epoch(self, response: httpx.Response, batch: _Batch) -> bool:
        """A duplicate of a seq we never sent: another session owns this epoch and our data was dropped."""
        if response.status_code != 204 or batch.epoch != self._epoch:
            return False
        try:
            server_seq = int(response.headers.get(PRODUCER_SEQ, "-1"))
        except ValueError:
            return False
        return server_seq >= self._next_seq

    def _acked_one(self, batch: _Batch, response: httpx.Response) -> None:
        c = self._counters
        c.batches_acked += 1
        c.claims_without_ack = 0
        if response.status_code == 204:
            c.duplicates += 1
        offset = response.headers.get(NEXT_OFFSET)
        if offset and (self._last_offset is None or offset > self._last_offset):
            self._last_offset = offset  # offsets are lexicographically ordered (PROTOCOL.md 8)
        if batch.epoch != self._epoch:
            return
        self._established = True
        self._acked.add(batch.seq)
        while self._acked_through + 1 in self._acked:
            self._acked_through += 1
            self._acked.discard(self._acked_through)

    async def _wait_lower_acked(self, batch: _Batch) -> bool:
        """Waits until every earlier seq of the batch's epoch is acknowledged; False if the epoch moved on."""
        while self._acked_through < batch.seq - 1:
            if self._failure is not None:
                raise self._failure
            if batch.epoch != self._epoch or self._claiming:
                return False
            await self._wait_changed()
        return batch.epoch == self._epoch and not self._claiming

    # -- fencing and claims ----------------------------------------------------

    def _claim_allowed(self) -> bool:
        if not self.auto_claim or self._counters.claims_without_ack >= CLAIMS_WITHOUT_ACK_MAX:
            return False
        self._counters.claims += 1
        self._counters.claims_without_ack += 1
        return True

    def _fenced(self, batch: _Batch, stale: StaleEpochError) -> None:
        if batch.epoch == self._epoch and not self._claiming:
            if not self._claim_allowed():
                raise stale
            self._claiming = True
            self._claim_epoch = max(self._epoch, stale.current_epoch or 0) + 1
        self._return_for_claim(batch)

    def _return_for_claim(self, batch: _Batch) -> None:
        if self._in_flight.get(batch.seq) is batch:
            del self._in_flight[batch.seq]
        self._returned.append(batch)

    def _finish_claim(self) -> None:
        """Once no old-epoch batch is in flight, renumbers everything unacknowledged under the new epoch."""
        if not self._claiming or self._in_flight:
            return
        unacked = sorted([*self._returned, *self._stalled, *self._ready], key=lambda b: b.order)
        self._returned.clear()
        self._stalled.clear()
        self._ready = deque(unacked)
        self._claiming = False
        self._start_epoch(self._claim_epoch)

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._next_seq = 0
        self._acked_through = -1
        self._acked.clear()
        self._established = False

    def _fail(self, exc: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = exc
        # Later batches cannot be stored in order any more; dropping them is
        # the only way to keep "exactly once, in order" honest.
        self._ready.clear()
        self._open, self._open_bytes = [], 0
        self._returned.clear()
        self._stalled.clear()
        if self._on_error is not None:
            result = self._on_error(exc)
            tg = self._task_group()
            if inspect.isawaitable(result) and tg is not None:
                tg.start_soon(_await, result)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()


async def _await(awaitable: Any) -> None:
    await awaitable
