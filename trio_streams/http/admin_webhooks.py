"""``POST /admin/webhook-key/rotate``: rotate a running server's webhook signing key.

Owns: the answer (the new and the retired kid, and the JWKS as published
now). Who may call it is the guard's rule (``/admin/*``: the admin scope,
or a local operator without auth). The new key signs only once its file is
durable (webhooks/keys.py); if storing it fails, the current key stays
active and the answer is 503. A stopped server's key is rotated with
``trio-streams webhook-key rotate --data-dir DIR``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from ..protocol.errors import ProtocolError
from ..webhooks.keys import SigningKeys
from .asgi import Headers, Send, respond

log = logging.getLogger("trio_streams.http")

PATH = "/admin/webhook-key/rotate"

# Where the running server keeps its signing keys: None until they are loaded.
KeysSource = Callable[[], SigningKeys | None]


async def rotate(keys_source: KeysSource | None, send: Send, headers: Headers) -> None:
    keys = keys_source() if keys_source is not None else None
    if keys is None:
        raise ProtocolError(503, "WEBHOOK_KEYS_UNAVAILABLE", "webhook signing keys are not loaded (yet)")
    old = keys.active_kid
    try:
        new = await keys.rotate()
    except OSError as error:
        log.error("webhook signing key rotation failed, %s stays active: %s", old, error)
        raise ProtocolError(503, "WEBHOOK_KEY_ROTATION_FAILED",
                            "the new signing key could not be stored; the current key stays active") from None
    log.info("webhook signing key rotated: %s active, %s retired", new, old)
    body = orjson.dumps({"kid": new, "retired_kid": old, "jwks": keys.jwks()})
    await respond(send, 200, headers + [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)
