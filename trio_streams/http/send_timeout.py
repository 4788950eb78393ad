"""Bounded response writes: a client that stops reading cannot hold the server.

Hypercorn 0.18.0's Trio ``TCPServer.protocol_send`` writes every response
byte with a *shielded* ``send_all`` and no timeout. A client that stops
reading fills its socket buffers, the write blocks forever, and because it is
shielded neither the SSE recycle, nor the shutdown drain, nor Hypercorn's own
graceful deadline can end it: one such reader kept the server running long
after SIGTERM. (HTTP/2 has the same shape one level up: the app's ``send``
waits for flow-control credit the client never grants.)

``SendDeadlines`` bounds every write by *progress*: data goes out in pieces of
``SEND_PIECE_BYTES``, each of which must be accepted by the kernel within
``send_timeout_s`` — a slow but live reader is never cut off, a stalled one is
dropped (logged at WARNING, counted, its connection closed). On shutdown
``drain`` caps every write, in flight or future, at the grace deadline, so the
process exits in bounded time whatever clients do.

The socket write itself is ``hypercorn_guard.GuardedTCPServer.protocol_send``,
which finds these deadlines through the ASGI app it serves (Hypercorn wraps
the app object, ``self.app.app``), so they apply under ``trio-streams serve``
and under a plain ``hypercorn -k trio 'trio_streams.http.app:create_app()'``
alike.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import trio

from .asgi import ClientGone
# A write must make progress at this granularity: big enough that a fast
# reader costs few extra system calls, small enough that a slow but live one
# (a phone on a bad network) moves a piece well within the timeout.
SEND_PIECE_BYTES: Final = 256 * 1024


class SendDeadlines:
    """Every bounded write in progress, so that shutdown can cut them all short."""

    def __init__(self, send_timeout_s: float) -> None:
        self.send_timeout_s = send_timeout_s
        self.stalled = 0  # connections dropped because a write made no progress
        self._cap = math.inf  # absolute trio time no write may outlive (set by drain)
        self._scopes: set[trio.CancelScope] = set()

    def drain(self, grace_s: float) -> None:
        """Shutdown: writes in flight and to come must finish within ``grace_s``."""
        self._cap = min(self._cap, trio.current_time() + grace_s)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._cap)

    @property
    def draining(self) -> bool:
        return self._cap != math.inf

    def _deadline(self) -> float:
        return min(trio.current_time() + self.send_timeout_s, self._cap)

    async def send_all(self, stream: trio.abc.SendStream, data: bytes) -> bool:
        """Writes ``data``; False when a piece was not accepted in time (the
        stream is then in an unknown state and must be closed)."""
        view = memoryview(data)
        for start in range(0, max(len(view), 1), SEND_PIECE_BYTES):
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._scopes.add(scope)
                try:
                    await stream.send_all(view[start:start + SEND_PIECE_BYTES])
                finally:
                    self._scopes.discard(scope)
            if scope.cancelled_caught:
                self.stalled += 1
                return False
        return True

    def bounded_app_send(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
                         http_version: str) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
        """The app-level ``send`` of a live read: never interrupted half-way by
        the caller's cancellation (Hypercorn re-arms the keep-alive timer inside
        the final send), but bounded for HTTP/2, whose flow-control wait happens
        here rather than in the socket write. Raises ClientGone on a timeout."""
        bounded = http_version == "2"

        async def send_shielded(message: MutableMapping[str, Any]) -> None:
            with trio.CancelScope(shield=True):
                if not bounded:
                    await send(message)
                    return
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._scopes.add(scope)
                    try:
                        await send(message)
                    finally:
                        self._scopes.discard(scope)
            if scope.cancelled_caught:
                self.stalled += 1
                raise ClientGone()

        return send_shielded
