"""One small function per write/metadata operation: PUT, POST, DELETE, HEAD, OPTIONS.

Owns: wiring a parsed request to the registry and a reply to the wire.
Never: protocol decisions (protocol.rules) or storage (the actors/log).
"""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..protocol import headers as h
from ..protocol.errors import ProtocolError
from ..protocol.offsets import format_offset
from ..protocol.rules import Reply
from ..protocol.state import StreamState
from ..streams.registry import Registry
from .paths import fork_source_name, stream_url
from .asgi import ALLOWED_METHODS, ALLOWED_REQUEST_HEADERS, Headers, Request, Send, encode_headers, respond


async def put(req: Request, path: str, registry: Registry, base: Headers, send: Send) -> None:
    body = await req.body(registry.settings.append_bytes_max)
    request = h.parse_create(req.headers, body)
    if request.fork is not None:
        source = fork_source_name(request.fork.source, req, registry.settings)
        request = dataclasses.replace(request, fork=dataclasses.replace(request.fork, source=source))
    reply = await registry.create(path, request)
    extra = [("location", stream_url(req, path, registry.settings))] if reply.status == 201 else []
    await _reply(send, reply, base, extra)


async def post(req: Request, path: str, registry: Registry, base: Headers, send: Send) -> None:
    body = await req.body(registry.settings.append_bytes_max)
    request = h.parse_append(req.headers, body)
    registry.get(path)  # cheap early 404/410 (and expiry) before queueing on an actor
    await _reply(send, await registry.append(path, request), base)


async def delete(req: Request, path: str, registry: Registry, base: Headers, send: Send) -> None:
    registry.get(path)
    await _reply(send, await registry.delete(path), base)


async def head(req: Request, path: str, registry: Registry, base: Headers, send: Send) -> None:
    state = registry.get(path)  # HEAD never resets a sliding TTL
    await respond(send, 200, base + encode_headers(metadata_headers(state)), head=True)


def metadata_headers(state: StreamState) -> list[tuple[str, str]]:
    pairs = [
        ("content-type", state.content_type),
        ("stream-next-offset", format_offset(state.tail)),
        ("cache-control", "no-store"),
    ]
    if state.expiry.ttl_s is not None:
        pairs.append(("stream-ttl", str(state.expiry.ttl_s)))
    if state.expiry.expires_at is not None:
        pairs.append(("stream-expires-at", state.expiry.expires_at))
    if state.closed:
        pairs.append(("stream-closed", "true"))
    return pairs


async def options(req: Request, settings: Settings, base: Headers, send: Send) -> None:
    requested = req.headers.get("access-control-request-headers")
    allow = f"{ALLOWED_REQUEST_HEADERS}, {requested}" if requested else ALLOWED_REQUEST_HEADERS
    pairs = [
        ("access-control-allow-methods", ALLOWED_METHODS),
        ("access-control-allow-headers", allow),
        ("access-control-max-age", "86400"),
    ]
    await respond(send, 204, base + encode_headers(pairs))


async def _reply(send: Send, reply: Reply, base: Headers, extra: list[tuple[str, str]] | None = None) -> None:
    await respond(send, reply.status, base + encode_headers(list(reply.headers) + (extra or [])))
