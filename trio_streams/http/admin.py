"""The admin endpoints: ``POST /admin/checkpoint``, ``GET /admin/backup``, ``POST /admin/webhook-key/rotate``.

Owns: their methods and their answers (who may call them is the guard's
rule, auth/guard.py: the admin scope, or a local operator without auth): the checkpoint's position and duration as JSON; the backup as a
streamed tar (ops/online.py, ops/backup.py), one at a time. Never: storage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..config import Settings
from ..ops import online
from ..protocol.errors import ProtocolError, not_found
from ..service import Service
from . import admin_webhooks
from .asgi import Headers, Request, Send, respond
from .send_timeout import SendDeadlines

log = logging.getLogger("trio_streams.http")

PREFIX = "/admin/"


class Admin:
    def __init__(self, service: Service, settings: Settings, base_headers: Headers,
                 send_deadlines: SendDeadlines, until_disconnect: Callable[[Any, Awaitable[None]], Awaitable[None]],
                 webhook_keys: admin_webhooks.KeysSource | None = None) -> None:
        self._service = service
        self._settings = settings
        # No CORS headers: no web page may read these answers.
        self._base = [pair for pair in base_headers if not pair[0].startswith(b"access-control-")]
        self._send_deadlines = send_deadlines
        self._until_disconnect = until_disconnect
        self._backup_running = False
        self._webhook_keys = webhook_keys
        self._routes = {"/admin/checkpoint": ("POST", self._checkpoint), "/admin/backup": ("GET", self._backup),
                        admin_webhooks.PATH: ("POST", self._rotate_webhook_key)}

    async def handle(self, req: Request, send: Send) -> None:
        route = self._routes.get(req.path)
        if route is None:
            raise not_found("no such admin endpoint")
        method, handler = route
        if req.method != method:
            raise ProtocolError(405, "METHOD_NOT_ALLOWED", f"method {req.method[:16]} is not allowed here",
                                (("allow", method),))
        await handler(req, send)

    async def _checkpoint(self, req: Request, send: Send) -> None:
        body = orjson.dumps(await online.checkpoint(self._service))
        headers = self._base + [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        await respond(send, 200, headers, body)

    async def _rotate_webhook_key(self, req: Request, send: Send) -> None:
        await admin_webhooks.rotate(self._webhook_keys, send, self._base)

    async def _backup(self, req: Request, send: Send) -> None:
        if self._backup_running:
            raise ProtocolError(409, "BACKUP_IN_PROGRESS", "a backup is already running; try again when it ends")
        self._backup_running = True
        try:
            await self._until_disconnect(req.receive, self._stream_backup(req, send))
        finally:
            self._backup_running = False

    async def _stream_backup(self, req: Request, send: Send) -> None:
        async with online.online_backup(self._service, self._settings) as taken:
            bounded = self._send_deadlines.bounded_app_send(send, req.scope.get("http_version", "1.1"))
            headers = self._base + [
                (b"content-type", b"application/x-tar"), (b"cache-control", b"no-store"),
                (b"content-disposition", f'attachment; filename="trio-streams-{taken.position}.tar"'.encode()),
                (b"backup-position", str(taken.position).encode()),
            ]
            await bounded({"type": "http.response.start", "status": 200, "headers": headers})

            async def out(data: bytes) -> None:
                await bounded({"type": "http.response.body", "body": data, "more_body": True})

            totals = await taken.write(out)
            await bounded({"type": "http.response.body", "body": b"", "more_body": False})
        log.info("backup at log position %d: %d files, %d bytes", taken.position, totals.files, totals.bytes)
