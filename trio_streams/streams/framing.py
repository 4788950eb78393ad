"""JSON framing of request bodies, before a command reaches its stream's actor.

Owns: when and where a JSON body is validated and turned into stored
messages (protocol.jsonmode), so that an actor, which serializes every
write to its stream, never spends time parsing. The outcome travels with
the request (``framed``); the actor only checks that the request's content
type matches the stream's and stores the framed bytes, or reports the
refusal in precedence order.

Small bodies are framed on the event loop in one call. Larger ones are
framed in a worker thread (at most ``json_workers_max`` at once), by
bounded steps: between steps the worker gives the GIL up whenever it has
held it for ``GIL_SLICE_S``, so the event loop never waits long for it.

Never: decides anything about the stream itself.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Final

import trio

from ..config import Settings
from ..protocol import jsonmode
from ..protocol.errors import ProtocolError
from ..protocol.headers import AppendRequest, CreateRequest, is_json

# The longest a framing worker keeps the GIL between two chances for the
# event loop to take it (the interpreter alone would wait 5 ms, per handoff).
GIL_SLICE_S: Final = 0.001


class JsonFraming:
    def __init__(self, settings: Settings) -> None:
        self._limits = jsonmode.JsonLimits(
            depth_max=settings.json_depth_max,
            messages_max=settings.json_messages_per_append_max,
            message_bytes_max=settings.json_message_bytes_max,
        )
        self._inline_bytes_max = settings.json_inline_bytes_max
        self._workers = trio.CapacityLimiter(settings.json_workers_max)

    async def append(self, request: AppendRequest) -> AppendRequest:
        if not request.body or not is_json(request.content_type or ""):
            return request
        framed = await self._frame(request.body, allow_empty=False)
        return dataclasses.replace(request, framed=framed)

    async def create(self, request: CreateRequest, content_type: str | None) -> CreateRequest:
        """``content_type``: the stream's, as far as it is known before its actor decides."""
        if not request.body or content_type is None or not is_json(content_type):
            return request
        framed = await self._frame(request.body, allow_empty=True)
        return dataclasses.replace(request, framed=framed)

    async def _frame(self, body: bytes, *, allow_empty: bool) -> jsonmode.Framed:
        if len(body) <= self._inline_bytes_max:
            return jsonmode.frame(body, allow_empty=allow_empty, limits=self._limits)
        framer = jsonmode.WindowedFramer(body, allow_empty=allow_empty, limits=self._limits)
        return await trio.to_thread.run_sync(_frame_in_worker, framer, limiter=self._workers)


def _frame_in_worker(framer: jsonmode.WindowedFramer) -> jsonmode.Framed:
    try:
        held_since = time.monotonic()
        for _ in framer.steps():
            if time.monotonic() - held_since >= GIL_SLICE_S:
                time.sleep(0)  # releases the GIL: a waiting event loop takes it now
                held_since = time.monotonic()
    except ProtocolError as exc:
        return jsonmode.Framed(error=exc)
    return jsonmode.Framed(framer.result())
