"""One request as the operator sees it: request id, bytes, status, duration, the access line.

Owns: the request id (an incoming ``X-Request-Id`` if short and printable,
else a new one; echoed on the response), counting body bytes in and out,
the route kind a request is counted under, and the access-log line (logger
``trio_streams.access``, written when the request ends: for long-poll and
SSE, once, when the live read ends). ``access_token`` query values are
redacted (auth/redact.py) and the ``Authorization`` header is never looked at.
Never: decides anything about the request.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import MutableMapping
from typing import Any

from ..auth.redact import redact_query
from .asgi import Receive, Scope, Send

Message = MutableMapping[str, Any]

access_log = logging.getLogger("trio_streams.access")

REQUEST_ID_HEADER = b"x-request-id"
# Paths outside the stream prefix, each its own kind (the others are "other").
OPERATIONS_KINDS = {"/healthz": "health", "/healthz/live": "health", "/healthz/ready": "health", "/metrics": "metrics"}
_STREAM_KINDS = {"PUT": "create", "POST": "append", "DELETE": "delete", "HEAD": "head", "OPTIONS": "options"}
_LIVE_KINDS = {None: "catch_up", "long-poll": "long_poll", "sse": "sse"}
# Methods counted under their own name; anything a client invents is "OTHER" (bounded labels).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"})
# Status recorded when no response was sent: the client went away first (nginx's convention).
CLIENT_CLOSED = 499
# Bytes 0x21..0x7e: what a request id may hold.
_PRINTABLE = frozenset(range(0x21, 0x7F))
# Control characters and DEL: escaped, so that a logged target stays one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def route_kind(method: str, path: str, stream_prefix: str, live: str | None) -> str:
    """The kind a request is counted and timed under: never the path itself."""
    if path in OPERATIONS_KINDS:
        return OPERATIONS_KINDS[path]
    if path.startswith("/admin/"):
        return "admin"
    if not path.startswith(stream_prefix):
        return "other"
    if method == "GET":
        return _LIVE_KINDS.get(live, "other")
    return _STREAM_KINDS.get(method, "other")


def request_id(scope: Scope, length_max: int) -> bytes:
    for name, value in scope.get("headers", ()):
        if name.lower() == REQUEST_ID_HEADER:
            if 0 < len(value) <= length_max and _PRINTABLE.issuperset(value):
                return bytes(value)
            break
    return secrets.token_hex(16).encode()


def logged_target(scope: Scope) -> str:
    """Path with query as the client sent it, with secret parameters' values redacted."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("latin-1", "replace")
    target: str = raw_path.split(b"?", 1)[0].decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        target += "?" + redact_query(query)
    return _escaped(target)


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Observed:
    """Wraps one request's receive and send: counts bytes both ways, notes the
    status and adds the request id to the response head."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, request_id_bytes_max: int) -> None:
        self.scope = scope
        self.started = time.perf_counter()  # a measurement for the log and histograms, not the clock
        self.request_id = request_id(scope, request_id_bytes_max)
        self.kind = "invalid"  # until the request parses
        self.status = CLIENT_CLOSED
        self.bytes_in = 0
        self.bytes_out = 0
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        message = await self._receive()
        self.bytes_in += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, self.request_id)]}
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
        await self._send(message)

    @property
    def method(self) -> str:
        method = str(self.scope.get("method", "")).upper()
        return method if method in KNOWN_METHODS else "OTHER"

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def log_line(self, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        client = self.scope.get("client")
        fields = {
            "method": _escaped(str(self.scope.get("method", ""))[:16]),
            "target": logged_target(self.scope),
            "status": self.status,
            "bytes_out": self.bytes_out,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": self.request_id.decode("ascii"),
            "remote": f"{client[0]}:{client[1]}" if client else "-",
        }
        access_log.info("%(remote)s %(method)s %(target)s %(status)d %(bytes_out)dB %(duration_ms).1fms id=%(request_id)s",
                        fields, extra=fields)
