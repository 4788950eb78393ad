"""JSON framing of request bodies, before a command reaches its stream's actor.

Owns: when and where a JSON body is validated and turned into stored
messages (protocol.jsonmode), so that an actor, which serializes every
write to its stream, never spends time parsing. The outcome travels with
the request (``framed``); the actor only checks that the request's content
type matches the stream's and stores the framed bytes, or reports the
refusal in precedence order.

Never: decides anything about the stream itself.
"""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..protocol import jsonmode
from ..protocol.headers import AppendRequest, CreateRequest, is_json


class JsonFraming:
    def __init__(self, settings: Settings) -> None:
        self._limits = jsonmode.JsonLimits(depth_max=settings.json_depth_max)

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
        return jsonmode.frame(body, allow_empty=allow_empty, limits=self._limits)
