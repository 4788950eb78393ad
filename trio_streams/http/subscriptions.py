"""The reserved ``{prefix}__ds/`` routes (PROTOCOL.md 6–7): subscriptions and the webhook JWKS.

Owns: matching a ``__ds`` URL to its operation, reading and bounding the
body, the wake-scoped bearer token, and writing each answer in the shape the
spec gives. Routed before streams, so no ``__ds`` path is ever a stream.
Never: decides anything (the subscriptions task and protocol/subscriptions.py do).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..auth.guard import forbidden
from ..auth.principal import Principal
from ..auth.scopes import allows
from ..config import Settings
from ..protocol import shards
from ..protocol import subscriptions as S
from ..protocol.errors import ProtocolError, not_found
from ..protocol.urls import encode_path
from ..subscriptions.manager import SubscriptionManager
from .asgi import Headers, Request, Send, respond
from .paths import base_url

DS_SEGMENT = "__ds"
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_JWKS_HEADERS = [(b"content-type", b"application/jwk-set+json"), (b"cache-control", b"public, max-age=300")]


def is_reserved(url_path: str, settings: Settings) -> bool:
    rest = url_path[len(settings.stream_prefix):]
    return url_path.startswith(settings.stream_prefix) and (rest == DS_SEGMENT or rest.startswith(DS_SEGMENT + "/"))


class SubscriptionRoutes:
    def __init__(self, settings: Settings, base: Headers) -> None:
        self._settings = settings
        self._base = base

    async def handle(self, req: Request, manager: SubscriptionManager, principal: Principal | None, send: Send) -> None:
        rest = req.path[len(self._settings.stream_prefix) + len(DS_SEGMENT) + 1:]
        if rest == "jwks.json" and req.method == "GET":
            await self._jwks(manager, send)
            return
        kind, _, tail = rest.partition("/")
        sub_id, _, action = tail.partition("/")
        if kind != "subscriptions" or not sub_id:
            # Reserved for Durable Streams control APIs this server does not have.
            raise ProtocolError(501, "NOT_IMPLEMENTED", "no such reserved __ds API on this server")
        S.check_id(sub_id, manager.limits)
        route = self._route(req, manager, sub_id, action, principal)
        await route(send)

    def _route(self, req: Request, manager: SubscriptionManager, sub_id: str, action: str,
               principal: Principal | None) -> Callable[[Send], Awaitable[None]]:
        table: dict[tuple[str, str], Callable[[Send], Awaitable[None]]] = {
            ("", "PUT"): lambda send: self._put(req, manager, sub_id, send),
            ("", "GET"): lambda send: self._json(send, 200, self._describe(req, manager, manager.get(sub_id))),
            ("", "DELETE"): lambda send: self._delete(manager, sub_id, send),
            ("streams", "POST"): lambda send: self._add_streams(req, manager, sub_id, send),
            ("claim", "POST"): lambda send: self._claim(req, manager, sub_id, principal, send),
            ("ack", "POST"): lambda send: self._ack(req, manager, sub_id, send),
            ("callback", "POST"): lambda send: self._ack(req, manager, sub_id, send),
            ("release", "POST"): lambda send: self._release(req, manager, sub_id, send),
        }
        if action.startswith("streams/") and req.method == "DELETE":
            path = S.check_stream_path(action[len("streams/"):], manager.limits)
            return lambda send: self._remove_stream(manager, sub_id, path, send)
        route = table.get((action, req.method))
        if route is not None:
            return route
        if any(key[0] == action for key in table):
            allowed = ", ".join(m for a, m in table if a == action)
            raise ProtocolError(405, "METHOD_NOT_ALLOWED", f"method {req.method} is not allowed here",
                                (("allow", allowed),))
        raise not_found("no such subscription resource")

    # -- control plane ---------------------------------------------------------

    async def _put(self, req: Request, manager: SubscriptionManager, sub_id: str, send: Send) -> None:
        config = S.parse_config(await self._body(req), manager.limits)
        shards.check_subscription(sub_id, config.pattern, (*config.streams, config.wake_stream),
                                  self._settings.shard_key_rule)
        status, sub = await manager.put(sub_id, config, base_url(req, self._settings) + self._settings.stream_prefix)
        await self._json(send, status, self._describe(req, manager, sub))

    async def _delete(self, manager: SubscriptionManager, sub_id: str, send: Send) -> None:
        await manager.delete(sub_id)
        await respond(send, 204, self._base)

    async def _add_streams(self, req: Request, manager: SubscriptionManager, sub_id: str, send: Send) -> None:
        doc = S.parse_json_object(await self._body(req))
        paths = S.parse_stream_list(doc.get("streams"), manager.limits)
        shards.check_subscription(sub_id, None, paths, self._settings.shard_key_rule)
        await manager.add_streams(sub_id, paths)
        await respond(send, 204, self._base)

    async def _remove_stream(self, manager: SubscriptionManager, sub_id: str, path: str, send: Send) -> None:
        await manager.remove_stream(sub_id, path)
        await respond(send, 204, self._base)

    def _describe(self, req: Request, manager: SubscriptionManager, sub: S.Subscription) -> dict[str, Any]:
        signing = None
        if sub.config.type == S.WEBHOOK and manager.ports is not None:
            signing = {"alg": "ed25519", "kid": manager.ports.keys.active_kid, "jwks_url": self._jwks_url(req)}
        return S.describe(sub, signing)

    def _jwks_url(self, req: Request) -> str:
        return base_url(req, self._settings) + encode_path(f"{self._settings.stream_prefix}{DS_SEGMENT}/jwks.json")

    async def _jwks(self, manager: SubscriptionManager, send: Send) -> None:
        if manager.ports is None:
            raise ProtocolError(503, "SUBSCRIPTIONS_UNAVAILABLE", "webhook signing keys are unavailable")
        await respond(send, 200, self._base + _JWKS_HEADERS, orjson.dumps(manager.ports.keys.jwks()))

    # -- data plane ----------------------------------------------------------------

    async def _claim(self, req: Request, manager: SubscriptionManager, sub_id: str, principal: Principal | None,
                     send: Send) -> None:
        doc = S.parse_json_object(await self._body(req))
        worker = doc.get("worker")
        if not isinstance(worker, str) or not 0 < len(worker) <= manager.limits.id_chars_max:
            raise ProtocolError(400, "INVALID_CLAIM", f"worker is a name of 1 to {manager.limits.id_chars_max} characters")
        wake_stream = manager.get(sub_id).config.wake_stream
        if principal is not None and (wake_stream is None or not allows(principal.scopes, "read", wake_stream)):
            raise forbidden("claiming needs the read scope on the subscription's wake stream", "read")
        try:
            answer = await manager.claim(sub_id, worker)
        except S.Claimed409 as conflict:
            body = {"error": {"code": conflict.code, "message": conflict.message, **conflict.details}}
            await self._json(send, 409, body)
            return
        await self._json(send, 200, answer)

    async def _ack(self, req: Request, manager: SubscriptionManager, sub_id: str, send: Send) -> None:
        next_wake = await manager.ack(sub_id, _bearer(req), await self._body(req))
        await self._json(send, 200, {"ok": True, "next_wake": next_wake})

    async def _release(self, req: Request, manager: SubscriptionManager, sub_id: str, send: Send) -> None:
        await manager.release(sub_id, _bearer(req), await self._body(req))
        await respond(send, 204, self._base)

    # -- plumbing ---------------------------------------------------------------------

    async def _body(self, req: Request) -> bytes:
        return bytes(await req.body(self._settings.subscription_body_bytes_max))

    async def _json(self, send: Send, status: int, doc: dict[str, Any]) -> None:
        await respond(send, status, self._base + _JSON, orjson.dumps(doc))


def _bearer(req: Request) -> str:
    """The wake-scoped token: only ever from the Authorization header (12.9)."""
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProtocolError(401, "UNAUTHORIZED", "a wake-scoped bearer token is required",
                            (("www-authenticate", "Bearer"),))
    return token.strip()

