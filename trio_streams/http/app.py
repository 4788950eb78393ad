"""The ASGI application: routing, lifespan, and the error boundary.

Owns: mapping (method, path) to a handler, validating stream paths, the
lifespan that runs the storage service for the server's lifetime, racing
live reads against client disconnects, and turning every ProtocolError
into a short JSON error body. Never: protocol rules or storage.

Run it with ``trio-streams serve`` or directly under Hypercorn:
``hypercorn -k trio 'trio_streams.http.app:create_app()'`` (settings from
``TRIO_STREAMS_*`` environment variables).
"""

from __future__ import annotations

import logging

import orjson
import trio

from .. import logsetup
from ..auth.config import AuthConfig
from ..auth.cors import Cors, effective_allow_origins, parse_allow_origins
from ..auth.guard import Guard
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..config_file import load_configuration
from ..protocol.errors import ProtocolError, not_found
from ..service import Service
from ..streams.facade import Streams
from ..subscriptions.manager import SubscriptionManager
from . import access_log, admin, fd_budget, handlers, hypercorn_guard, reads, subscriptions
from .asgi import (
    ALLOWED_METHODS, EXPOSED_HEADERS, ClientGone, Receive, Request, Scope, Send, common_headers, encode_headers,
    error_body, parse_request, respond,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from .paths import stream_name
from .send_timeout import SendDeadlines

log = logging.getLogger("trio_streams.http")


class App:
    def __init__(self, settings: Settings, clock: Clock = SYSTEM_CLOCK, auth: AuthConfig | None = None) -> None:
        settings = with_cors_default(settings, auth)
        self.settings = settings
        self.clock = clock
        # Found through this app by the guarded Hypercorn writer (hypercorn_guard.py).
        self.send_deadlines = SendDeadlines(settings.send_timeout_s)
        # Its own registry: several apps may live in one process (tests).
        self.metrics = Metrics(lambda: self.service, lambda: self.send_deadlines.stalled)
        self.service = Service(settings, clock=clock, observer=self.metrics.observer)
        # Access control (auth/): checked first in _route; CORS headers added per request in _http.
        self.guard = Guard(settings, auth or AuthConfig())
        self.cors = Cors(parse_allow_origins(settings.cors_allow_origins), EXPOSED_HEADERS)
        self._base = common_headers()
        self._reads: reads.Reads | None = None
        self._subscriptions = subscriptions.SubscriptionRoutes(settings, self._base)
        self._admin = admin.Admin(self.service, settings, self._base, self.send_deadlines, _until_disconnect,
                                  webhook_keys=self.service.webhook_keys)

    async def admit_after_long_poll(self) -> None:
        """Found by the guard: a long-poll connection's next request waits for the queued fan-out."""
        registry = self.service.registry
        if registry is not None:
            await registry.fanout.admit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    def drain(self) -> None:
        """Begin shutdown: end live reads at once instead of holding connections open,
        and give every response write until the grace period ends, no longer."""
        if not self.service.draining:
            log.info("shutdown begun: ending live reads, finishing requests within %g s", self.settings.shutdown_grace_s)
        self.service.draining = True
        self.send_deadlines.drain(self.settings.shutdown_grace_s)
        if self.service.streams is not None:
            self.service.streams.drain()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        logsetup.log_configuration(self.settings)
        async with trio.open_nursery() as nursery:
            # Recovery runs after startup completes so /healthz can answer 503 meanwhile.
            nursery.start_soon(self.service.run)
            nursery.start_soon(self.guard.run)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            self.drain()
            self.service.stop()
            await self.service.finished.wait()
            nursery.cancel_scope.cancel()  # background tasks that run until shutdown (JWKS reloads)
        log.info("shutdown complete")
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        observed = access_log.Observed(scope, receive, send, self.settings.request_id_bytes_max)
        try:
            await self._observed_http(scope, observed.receive, observed.send, observed)
        finally:
            seconds = observed.seconds()
            self.metrics.request_done(observed, seconds)
            if self.settings.access_log:
                observed.log_line(seconds)

    async def _observed_http(self, scope: Scope, receive: Receive, send: Send, observed: access_log.Observed) -> None:
        send = self._with_cors(scope, send)
        try:
            req = parse_request(scope, receive)
        except ProtocolError as exc:
            await self._error(send, exc.status, exc.code, exc.message, exc.headers, head=scope["method"] == "HEAD")
            return
        observed.kind = access_log.route_kind(req.method, req.path, self.settings.stream_prefix, _live_mode(req))
        try:
            await self._route(req, send)
        except ProtocolError as exc:
            await self._error(send, exc.status, exc.code, exc.message, exc.headers, head=req.method == "HEAD")
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error for %s %s", req.method, req.path)
            await self._error(send, 500, "INTERNAL", "internal server error", (), head=req.method == "HEAD")

    def _with_cors(self, scope: Scope, send: Send) -> Send:
        """``send`` adding the CORS headers for the request's Origin to the response head."""
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"origin"), None)
        # No web page may read an admin answer (a backup holds every stream).
        extra = [] if str(scope.get("path", "")).startswith(admin.PREFIX) else self.cors.headers(origin)

        async def send_with_cors(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        return send_with_cors

    async def _error(self, send: Send, status: int, code: str, message: str, headers: tuple, *, head: bool) -> None:
        pairs = self._base + [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        pairs += encode_headers(headers)
        try:
            await respond(send, status, pairs, error_body(code, message), head=head)
        except Exception:  # the response had already started; nothing more to say
            log.debug("could not send error response", exc_info=True)

    async def _route(self, req: Request, send: Send) -> None:
        principal = self.guard.check(req)
        if req.path in OPERATIONS_PATHS:
            await self._operations(req, send)
            return
        if req.path.startswith(admin.PREFIX):
            return await self._admin.handle(req, send)
        if self._on_metrics_port(req.scope) or not req.path.startswith(self.settings.stream_prefix):
            raise not_found("no such resource")
        if req.method == "OPTIONS":
            await handlers.options(req, self.settings, self._base, send)
            return
        if subscriptions.is_reserved(req.path, self.settings):
            await self._subscriptions.handle(req, self._ready_subscriptions(), principal, send)
            return
        path = stream_name(req.path, self.settings)
        self._refuse_unless_serving()
        streams = self.service.streams
        assert streams is not None, "set before the service is ready"
        streams.refuse_if_damaged(path)
        handler = _HANDLERS.get(req.method)
        if handler is not None:
            await handler(req, path, streams, self.settings, self._base, send)
        elif req.method == "GET":
            await self._get(req, path, streams, send)
        else:
            raise ProtocolError(405, "METHOD_NOT_ALLOWED", f"method {req.method} is not allowed",
                                (("allow", ALLOWED_METHODS),))

    def _refuse_unless_serving(self) -> None:
        if self.service.failure is not None:
            raise ProtocolError(503, "STORAGE_FAILED", "the server's storage failed; it must be restarted",
                                (("retry-after", "1"),))
        if not self.service.ready.is_set():
            raise ProtocolError(503, "NOT_READY", "the server is recovering its log; retry shortly", (("retry-after", "1"),))

    def _ready_subscriptions(self) -> SubscriptionManager:
        self._refuse_unless_serving()
        assert self.service.subscriptions is not None, "set before the service is ready"
        return self.service.subscriptions

    async def _get(self, req: Request, path: str, streams: Streams, send: Send) -> None:
        state = streams.open(path)
        if self._reads is None or self._reads.streams is not streams:
            self._reads = reads.Reads(streams, self.settings, self.clock, self._base,
                                      authenticated=self.guard.configured)
        live = req.query_one("live")
        if live is None:
            await self._reads.catch_up(req, state, send)
        elif live in ("long-poll", "sse"):
            operation = self._reads.long_poll if live == "long-poll" else self._reads.server_sent_events
            bounded = self.send_deadlines.bounded_app_send(send, req.scope.get("http_version", "1.1"))
            readers = self.metrics.live_readers.labels(live.replace("-", "_"))
            readers.inc()
            try:
                await _until_disconnect(req.receive, operation(req, state, bounded))
            finally:
                readers.dec()
        else:
            raise ProtocolError(400, "INVALID_QUERY", f"unknown live mode {live[:32]!r}")

    async def _operations(self, req: Request, send: Send) -> None:
        """/healthz* and /metrics answer GET and HEAD only. With a ``metrics_port``,
        /metrics is served on that port only.

        Anything else is refused before a 2xx can go out: a 2xx to CONNECT
        switches the connection's protocol, so Hypercorn could not send the body.
        """
        if req.method not in OPERATIONS_METHODS.split(", "):
            raise ProtocolError(405, "METHOD_NOT_ALLOWED", f"method {req.method[:16]} is not allowed here",
                                (("allow", OPERATIONS_METHODS),))
        head = req.method == "HEAD"
        if req.path == "/metrics":
            if self.settings.metrics_port and not self._on_metrics_port(req.scope):
                raise not_found("no such resource")
            await self._metrics(send, head)
        else:
            await self._health(req.path, send, head)

    def _on_metrics_port(self, scope: Scope) -> bool:
        """Whether the request came in on ``metrics_port`` (Hypercorn's ``scope["server"]``)."""
        server = scope.get("server")
        return bool(self.settings.metrics_port) and server is not None and server[1] == self.settings.metrics_port

    async def _health(self, path: str, send: Send, head: bool) -> None:
        """/healthz: 503 while recovering or failed. /healthz/live: 200 while the
        event loop runs. /healthz/ready: 200 only when taking traffic (service.READY_STATUSES)."""
        headers = self._base + [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        detail = self.service.health()
        code = _health_error(path, detail)
        if code is not None:  # the error shape every 503 has, plus the detail
            detail["error"] = {"code": code, "message": detail.get("reason", "shutting down")}
        await respond(send, 200 if code is None else 503, headers, orjson.dumps(detail), head=head)

    async def _metrics(self, send: Send, head: bool) -> None:
        headers = self._base + [(b"content-type", METRICS_CONTENT_TYPE.encode()), (b"cache-control", b"no-store")]
        await respond(send, 200, headers, self.metrics.render(), head=head)


OPERATIONS_METHODS = "GET, HEAD"
OPERATIONS_PATHS = frozenset(access_log.OPERATIONS_KINDS)
# /healthz statuses that answer 503, and their error codes; the others (ok, degraded) answer 200.
_HEALTH_ERRORS = {"failed": "FAILED", "recovering": "RECOVERING"}


def _health_error(path: str, detail: dict[str, object]) -> str | None:
    """The error code a health endpoint answers 503 with, or None for 200."""
    if path == "/healthz/live":
        return None
    code = _HEALTH_ERRORS.get(str(detail["status"]))
    if path == "/healthz/ready" and code is None and not detail["ready"]:
        code = "DRAINING"
    return code


def _live_mode(req: Request) -> str | None:
    """The live mode as the request asked for it; a repeated parameter (a 400) is counted as "other"."""
    values = req.query_values("live")
    return None if not values else values[0] if len(values) == 1 else "?"


# Every stream method but GET (self._get) and OPTIONS: the writes go through the
# path's actor; HEAD only reads the stream's metadata.
_HANDLERS = {"PUT": handlers.put, "POST": handlers.post, "DELETE": handlers.delete, "HEAD": handlers.head}


async def _until_disconnect(receive: Receive, operation) -> None:  # type: ignore[no-untyped-def]
    """Runs a live read, abandoning it when the client goes away.

    Hypercorn does not cancel an application when its client disconnects;
    it delivers ``http.disconnect`` to ``receive()``, so we watch for it.
    """
    try:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await operation
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The watcher never raises, so the group holds the operation's one error.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def with_cors_default(settings: Settings, auth: AuthConfig | None) -> Settings:
    configured = auth is not None and auth.configured
    return settings.replace(cors_allow_origins=effective_allow_origins(settings.cors_allow_origins, configured))


def create_app(settings: Settings | None = None, auth: AuthConfig | None = None) -> App:
    """The application, with the process prepared for it: file descriptors and Hypercorn's guard.

    Without arguments (under plain Hypercorn) the configuration is the file
    named by $TRIO_STREAMS_CONFIG, if any, and the environment.
    """
    if settings is None:
        configuration = load_configuration()
        settings, auth = configuration.settings, configuration.auth
    settings = with_cors_default(settings, auth)
    # Under a plain `hypercorn -k trio`, nothing else sets up our logs.
    logsetup.configure(settings, replace=False)
    fd_budget.ensure(settings)
    hypercorn_guard.install(settings)
    app = App(settings, auth=auth)
    if not app.guard.configured:
        log.warning("no authentication configured: any client that reaches this server may create, "
                    "read and delete streams (see README, Access control)")
    return app
