"""Wake-scoped bearer tokens for callback, ack and release (PROTOCOL.md 7.1, 7.3, 12.9).

HS256 JWTs (PyJWT) under a random 256-bit secret persisted as
``data_dir/webhook-keys/wake-token-secret.json`` (0600), so tokens issued
before a restart still verify after it; the core's generation and wake id
checks are what fence them. Claims: ``sub`` (subscription id), ``gen``,
``wid`` (wake id), ``exp``. ``verify`` checks the signature (PyJWT compares
HMACs in constant time), every claim's presence and type, the subscription
id (``hmac.compare_digest``) and expiry against the injected wall clock
rather than PyJWT's own ``time.time()``, so tests drive expiry with
MockClock.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt

from ._files import key_directory, read_secret_file, write_secret_file

FILE_NAME = "wake-token-secret.json"
FORMAT_VERSION = 1
SECRET_BYTES = 32
ALGORITHM = "HS256"
# The audience keeps these tokens apart from any other HS256 token a deployment has.
AUDIENCE = "durable-streams-wake"
# Tokens this server issues are a few hundred bytes (subscription ids are bounded
# by the core); anything far longer is refused before base64 and HMAC work.
TOKEN_CHARS_MAX = 4096


@dataclasses.dataclass(frozen=True)
class WakeClaims:
    subscription_id: str
    generation: int
    wake_id: str


class InvalidWakeToken(Exception):
    """The token does not grant this wake; the message is safe to show the client."""


class WakeTokens:
    def __init__(self, secret: bytes, clock_wall: Callable[[], float]) -> None:
        self._secret = secret
        self._clock_wall = clock_wall

    @classmethod
    def load_or_create(cls, data_dir: Path, clock_wall: Callable[[], float]) -> WakeTokens:
        """The persisted secret; a new one on first start. Blocking; ValueError when unusable."""
        path = key_directory(data_dir) / FILE_NAME
        data = read_secret_file(path)
        if data is None:
            secret = secrets.token_bytes(SECRET_BYTES)
            document = {"version": FORMAT_VERSION, "secret": base64.urlsafe_b64encode(secret).decode("ascii")}
            write_secret_file(path, json.dumps(document).encode("utf-8") + b"\n")
            return cls(secret, clock_wall)
        return cls(_decode_secret(data, path), clock_wall)

    def issue(self, subscription_id: str, generation: int, wake_id: str, ttl_s: float) -> str:
        claims = {"sub": subscription_id, "gen": generation, "wid": wake_id, "aud": AUDIENCE,
                  "exp": math.ceil(self._clock_wall() + ttl_s)}
        return pyjwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, subscription_id: str) -> WakeClaims:
        """The token's claims if it is ours, unexpired and for ``subscription_id``; else InvalidWakeToken."""
        if not isinstance(token, str) or len(token) > TOKEN_CHARS_MAX:
            raise InvalidWakeToken("not a wake token")
        try:
            claims = pyjwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                  options={"verify_exp": False, "require": ["sub", "gen", "wid", "exp", "aud"]})
        except pyjwt.PyJWTError:
            raise InvalidWakeToken("wake token is invalid") from None
        return self._checked(claims, subscription_id)

    def _checked(self, claims: dict[str, Any], subscription_id: str) -> WakeClaims:
        sub, gen, wid, exp = claims["sub"], claims["gen"], claims["wid"], claims["exp"]
        if not (isinstance(sub, str) and isinstance(wid, str) and type(gen) is int
                and isinstance(exp, (int, float)) and not isinstance(exp, bool)):
            raise InvalidWakeToken("wake token claims are malformed")
        if not hmac.compare_digest(sub.encode("utf-8"), subscription_id.encode("utf-8")):
            raise InvalidWakeToken("wake token is for another subscription")
        if self._clock_wall() >= exp:
            raise InvalidWakeToken("wake token has expired")
        return WakeClaims(sub, gen, wid)


def _decode_secret(data: bytes, path: Path) -> bytes:
    try:
        document = json.loads(data)
        if document["version"] != FORMAT_VERSION:
            raise ValueError(f"unknown version {document['version']!r}")
        secret = base64.urlsafe_b64decode(document["secret"].encode("ascii"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"wake token secret file {path} is corrupt ({error}); restore it from a backup, "
                         "or move it away to start with a new secret") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"wake token secret file {path} is corrupt (the secret is {len(secret)} bytes, "
                         f"not {SECRET_BYTES})")
    return secret
