"""Thin ASGI plumbing: request parsing and response writing.

Owns: turning an ASGI scope into a ``Request`` (lower-cased headers, query
parameters, bounded body) and writing responses with the headers every
response carries (browser security, CORS). Never: protocol decisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..protocol import urls
from ..membuf import BodyCollector
from ..protocol.errors import ProtocolError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
# Bodies up to this size are joined from their chunks; larger ones are received in place.
SMALL_BODY_BYTES_MAX = 64 * 1024

EXPOSED_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Stream-SSE-Data-Encoding, ETag, Location, Content-Type, "
    "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, X-Request-Id, "
    "Trio-Streams-Earliest-Offset"
)
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALLOWED_REQUEST_HEADERS = (
    "Content-Type, If-None-Match, Stream-TTL, Stream-Expires-At, Stream-Closed, Stream-Seq, "
    "Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset, "
    "Producer-Id, Producer-Epoch, Producer-Seq, Authorization, Last-Event-ID, X-Request-Id, "
    "Trio-Streams-Retention-Max-Age, Trio-Streams-Retention-Max-Bytes"
)


@dataclasses.dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    query: list[tuple[str, str]]
    scope: Scope
    receive: Receive

    def query_values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def query_one(self, name: str) -> str | None:
        """The parameter's value; 400 when it is repeated (ambiguous)."""
        values = self.query_values(name)
        if len(values) > 1:
            raise ProtocolError(400, "INVALID_QUERY", f"query parameter {name!r} given more than once")
        return values[0] if values else None

    async def body(self, limit: int) -> bytes | memoryview:
        """The whole body; a large one is received in place (no join of its chunks, see membuf)."""
        declared = self.headers.get("content-length")
        expected = int(declared) if declared is not None and declared.isdigit() else 0
        if expected > limit:
            raise ProtocolError(413, "PAYLOAD_TOO_LARGE", f"request body exceeds {limit} bytes")
        collected = BodyCollector(expected, SMALL_BODY_BYTES_MAX)
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if len(collected) + len(chunk) > limit:
                raise ProtocolError(413, "PAYLOAD_TOO_LARGE", f"request body exceeds {limit} bytes")
            collected.add(chunk)
            if not message.get("more_body", False):
                return collected.result()


class ClientGone(Exception):
    """The client disconnected before we could answer."""


def server_authority(scope: Scope) -> str:
    """``host[:port]`` of the address the request arrived on."""
    host, port = scope.get("server") or ("localhost", None)
    host = f"[{host}]" if ":" in host else host
    default_port = urls.DEFAULT_PORTS.get(scope.get("scheme", "http"))
    return host if port in (None, default_port) else f"{host}:{port}"


def decode_path(scope: Scope) -> str:
    """The request path, percent-decoded from the raw bytes as strict UTF-8.

    Hypercorn's ``scope["path"]`` replaces undecodable bytes with U+FFFD,
    which would make ``/x-%ff`` and ``/x-%fe`` the same stream; refuse them.
    """
    raw = scope.get("raw_path")
    if not raw:
        return scope["path"]
    return urls.decode_path(raw.split(b"?", 1)[0])


def parse_request(scope: Scope, receive: Receive) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return Request(scope["method"].upper(), decode_path(scope), headers, query, scope, receive)


# Stream data is whatever writers put there, served from our origin: a
# text/html or image/svg+xml stream would otherwise run its scripts as us.
# "sandbox" without allow-scripts gives the document an opaque origin and no
# scripts; default-src 'none' stops it loading anything either.
CONTENT_SECURITY_POLICY = "default-src 'none'; sandbox"


def common_headers(cors_origin: str = "") -> Headers:
    """The security headers; CORS ones only for a fixed ``cors_origin`` (the app adds
    them per request instead, from the request's Origin: auth/cors.py)."""
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"cross-origin-resource-policy", b"cross-origin"),
    ]
    if cors_origin:
        headers += [(b"access-control-allow-origin", cors_origin.encode()),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode())]
    return headers


def encode_headers(pairs: Iterable[tuple[str, str]]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


async def respond(
    send: Send, status: int, headers: Headers, body: bytes = b"", *, head: bool = False
) -> None:
    if not head and status not in (204, 304):
        headers = headers + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})
