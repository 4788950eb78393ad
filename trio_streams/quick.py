"""Trio operations without a scheduler round of their own when they need not wait.

A Trio lock taken with ``async with`` and a channel ``send`` each yield to
the scheduler even when they could complete at once. On the paths every
request takes (an append reaching its actor and the log writer, a response
write) that is one more round behind every other runnable task, and with a
thousand live readers a round is long. Used only where the caller reaches a
real checkpoint soon after (a worker-thread call, a socket write, a wait
for the answer), so cancellation and fairness are still served there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import trio

T = TypeVar("T")


@contextlib.asynccontextmanager
async def taken(lock: trio.Lock) -> AsyncIterator[None]:
    """``async with lock``, without its scheduler round when the lock is free."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        yield
    finally:
        lock.release()


async def send_soon(channel: trio.MemorySendChannel[T], value: T) -> None:
    """``channel.send(value)``, without its scheduler round when the buffer has room;
    cancelled before, it sends nothing, as a send would."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:  # the buffer is full: wait, as backpressure
        await channel.send(value)
