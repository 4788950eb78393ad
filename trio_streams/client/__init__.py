"""The Durable Streams client: read and write streams from Trio or asyncio.

Owns the public names only; each lives in its module:

* ``stream(url, offset="-1", live=False)`` → ``StreamResponse`` (response.py):
  fetch-like reading, catch-up or live (long-poll / SSE), with ``json()``,
  ``text()``, ``body()``, iterators and subscribers.
* ``DurableStream`` (stream.py): a handle to create, HEAD, append (concurrent
  appends coalesce into one POST), close, delete and read one stream.
* ``IdempotentProducer`` (producer.py): exactly-once, batched, pipelined writes.
* Errors (errors.py): ``DurableStreamError`` (``.code``, ``.status``),
  ``StreamClosedError``, ``FetchError``, ``StaleEpochError``, ``SequenceGapError``,
  ``OffsetTrimmedError`` (a read below what retention kept; ``TrimmedGap``
  is what a reader with ``on_trimmed`` skipped instead).

Built on httpx over anyio, so the same code runs under ``trio.run`` and
``asyncio.run``. The names mirror the TypeScript ``@durable-streams/client``
in Python spelling; never does any server-side work (the server packages
are separate and not imported here).
"""

from ._protocol import Backoff, CloseResult, HeadResult, LiveMode, TrimmedGap
from .errors import (
    DurableStreamError, FetchError, OffsetTrimmedError, ProducerBufferFullError, SequenceGapError, StaleEpochError,
    StreamClosedError,
)
from .producer import IdempotentProducer, ProducerStatistics
from .response import ByteBatch, JsonBatch, StreamResponse, TextBatch, stream
from ._transport import RetryOpts
from .stream import DurableStream

__all__ = [
    "Backoff", "ByteBatch", "CloseResult", "DurableStream", "DurableStreamError", "FetchError", "HeadResult",
    "IdempotentProducer", "JsonBatch", "LiveMode", "OffsetTrimmedError", "ProducerBufferFullError", "ProducerStatistics",
    "RetryOpts", "SequenceGapError", "StaleEpochError", "StreamClosedError", "StreamResponse", "TextBatch", "TrimmedGap",
    "stream",
]
