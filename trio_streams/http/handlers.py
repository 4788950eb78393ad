"""One small function per write or metadata operation: PUT, POST, DELETE, HEAD, OPTIONS.

Owns: wiring a parsed request to the streams layer and a reply to the wire.
Never: protocol decisions (protocol.rules, protocol.reads) or storage.
"""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..protocol import headers as h
from ..protocol import shards
from ..protocol.reads import metadata_headers
from ..protocol.rules import Reply
from ..streams.facade import Streams
from .paths import fork_source_name, stream_url
from .asgi import ALLOWED_METHODS, ALLOWED_REQUEST_HEADERS, Headers, Request, Send, encode_headers, respond


async def put(req: Request, path: str, streams: Streams, settings: Settings, base: Headers, send: Send) -> None:
    body = await req.body(settings.append_bytes_max)
    request = h.parse_create(req.headers, body)
    if request.fork is not None:
        source = fork_source_name(request.fork.source, req, settings)
        shards.check_fork(path, source, settings.shard_key_rule)
        request = dataclasses.replace(request, fork=dataclasses.replace(request.fork, source=source))
    reply = await streams.create(path, request)
    extra = [("location", stream_url(req, path, settings))] if reply.status == 201 else []
    await _reply(send, reply, base, extra)


async def post(req: Request, path: str, streams: Streams, settings: Settings, base: Headers, send: Send) -> None:
    body = await req.body(settings.append_bytes_max)
    request = h.parse_append(req.headers, body)
    await _reply(send, await streams.append(path, request), base)


async def delete(req: Request, path: str, streams: Streams, settings: Settings, base: Headers, send: Send) -> None:
    await _reply(send, await streams.delete(path), base)


async def head(req: Request, path: str, streams: Streams, settings: Settings, base: Headers, send: Send) -> None:
    state = streams.head(path)
    await respond(send, 200, base + encode_headers(metadata_headers(state)), head=True)


async def options(req: Request, settings: Settings, base: Headers, send: Send) -> None:
    # The protocol's headers only, never an echo of what was asked: a page may
    # send nothing else. Allow-Origin (or its absence) is added per request by the app.
    pairs = [
        ("access-control-allow-methods", ALLOWED_METHODS),
        ("access-control-allow-headers", ALLOWED_REQUEST_HEADERS),
        ("access-control-max-age", "86400"),
    ]
    await respond(send, 204, base + encode_headers(pairs))


async def _reply(send: Send, reply: Reply, base: Headers, extra: list[tuple[str, str]] | None = None) -> None:
    await respond(send, reply.status, base + encode_headers(list(reply.headers) + (extra or [])))
