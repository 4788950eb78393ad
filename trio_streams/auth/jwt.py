"""JWT bearer tokens, verified with PyJWT against keys from a JWKS file or URL.

Each key's algorithm comes from the key (its ``alg``, else its type: an
``oct`` key is HS256, RSA is RS256, an Ed25519 OKP key EdDSA), never from the
token: a token is verified only with the one algorithm its key allows, so
``alg: none`` and algorithm confusion (an RSA public key used as an HMAC
secret) fail. ``exp`` is required; ``exp``/``nbf`` are checked with
``auth_jwt_leeway_s``; ``iss`` and ``aud`` when configured.

Keys are cached. ``JwksKeys.run`` reloads them in the background every
``auth_jwks_refresh_interval_s`` (sooner, rate-limited, when a token names
an unknown ``kid``); a request never waits for a fetch. A fetch is bounded
in time and bytes; when it fails, the keys already loaded stay in use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import httpx
import jwt as pyjwt
import trio

from ..config import Settings
from .config import JwtConfig
from .principal import Principal
from .scopes import Scope, parse_scope

log = logging.getLogger("trio_streams.auth")


class InvalidToken(Exception):
    """The token is not one we accept; the message is safe to show the client."""


class KeysUnavailable(Exception):
    """No JWKS has been loaded yet, so no JWT can be verified."""


@dataclasses.dataclass(frozen=True)
class JwtKey:
    kid: str | None
    algorithm: str
    key: Any


def parse_jwks(document: bytes, config: JwtConfig, settings: Settings) -> tuple[JwtKey, ...]:
    """The usable keys of a JWKS document; ValueError if it is malformed or too big."""
    if len(document) > settings.auth_jwks_bytes_max:
        raise ValueError(f"JWKS larger than {settings.auth_jwks_bytes_max} bytes")
    try:
        entries = json.loads(document)["keys"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a JWKS document (a JSON object with a 'keys' list)") from None
    if not isinstance(entries, list) or len(entries) > settings.auth_jwks_keys_max:
        raise ValueError(f"JWKS 'keys' must be a list of at most {settings.auth_jwks_keys_max} keys")
    return tuple(key for key in (_jwt_key(e, config) for e in entries) if key is not None)


def _jwt_key(entry: Any, config: JwtConfig) -> JwtKey | None:
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    try:
        jwk = pyjwt.PyJWK(entry)
    except (pyjwt.PyJWKError, pyjwt.InvalidKeyError, ValueError, TypeError):
        log.warning("JWKS key %.40r skipped: not a usable signing key", entry.get("kid"))
        return None
    if jwk.algorithm_name not in config.algorithms:
        return None
    kid = entry.get("kid")
    return JwtKey(kid if isinstance(kid, str) else None, jwk.algorithm_name, jwk.key)


class JwtVerifier:
    def __init__(self, config: JwtConfig, settings: Settings, keys: JwksKeys) -> None:
        self.config = config
        self.settings = settings
        self.keys = keys
        # token → (principal, exp, the key set that verified it); least recently used first.
        self._verified: OrderedDict[str, tuple[Principal, float, tuple[JwtKey, ...]]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        """The token's principal, from the cache of verified tokens when it is there: PyJWT
        takes hundreds of µs per token, and a client sends the same one on every request."""
        keys = self.keys.current()
        hit = self._verified.get(token)
        if hit is not None:
            principal, expires, verified_with = hit
            # A JWKS reload (a key may have been withdrawn) or expiry ends the entry.
            if verified_with is keys and time.time() < expires + self.settings.auth_jwt_leeway_s:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, expires = self._verify(token)
        if self.settings.auth_jwt_cache_entries_max > 0:
            self._verified[token] = (principal, expires, keys)
            if len(self._verified) > self.settings.auth_jwt_cache_entries_max:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        candidates = self._candidates(token)
        error: Exception = InvalidToken("no key verifies the token")
        for key in candidates:
            try:
                claims = self._decode(token, key)
            except pyjwt.InvalidSignatureError as exc:
                error = exc  # another key with the same kid (or none) may still verify it
                continue
            except pyjwt.PyJWTError as exc:
                raise InvalidToken(_reason(exc)) from None
            return self._principal(claims), float(claims["exp"])
        raise InvalidToken(_reason(error))

    def _candidates(self, token: str) -> list[JwtKey]:
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        keys = self.keys.current()
        kid = header.get("kid")
        candidates = [k for k in keys if k.algorithm == header.get("alg") and (kid is None or k.kid == kid)]
        if not candidates and kid is not None and not any(k.kid == kid for k in keys):
            self.keys.request_refresh()  # a rotated key the cache has not seen yet
        return candidates

    def _decode(self, token: str, key: JwtKey) -> dict[str, Any]:
        c = self.config
        return pyjwt.decode(
            token, key.key, algorithms=[key.algorithm], leeway=self.settings.auth_jwt_leeway_s,
            issuer=c.issuer or None, audience=c.audience or None,
            options={"require": ["exp"] + (["iss"] if c.issuer else []) + (["aud"] if c.audience else [])},
        )

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims.get(self.config.subject_claim)
        name = subject if isinstance(subject, str) else "jwt"
        return Principal(name, token_scopes(claims.get(self.config.scopes_claim)))


def token_scopes(claim: Any) -> tuple[Scope, ...]:
    """Scopes from a claim (a space-separated string or a list); entries that are not
    ours (``openid``, ``profile``) are ignored rather than refused."""
    items = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
    scopes = []
    for item in items:
        try:
            scopes.append(parse_scope(item)) if isinstance(item, str) else None
        except ValueError:
            continue
    return tuple(scopes)


def _reason(exc: Exception) -> str:
    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, pyjwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, pyjwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, pyjwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    if isinstance(exc, (pyjwt.InvalidSignatureError, InvalidToken)):
        return "signature not verified by any configured key"
    return "invalid token"


class JwksKeys:
    """The cached keys, and the background task that reloads them."""

    def __init__(self, config: JwtConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._keys: tuple[JwtKey, ...] | None = None
        self._refresh_wanted = trio.Event()
        self.fetches = 0
        if config.jwks_file:  # a bad file is a start-up error, like the rest of the config
            self._keys = parse_jwks(_read_file(config.jwks_file, settings), config, settings)

    def current(self) -> tuple[JwtKey, ...]:
        if self._keys is None:
            raise KeysUnavailable()
        return self._keys

    def request_refresh(self) -> None:
        self._refresh_wanted.set()

    async def run(self) -> None:
        s = self.settings
        if self._keys is None:  # a URL: nothing loaded at start-up
            await self.refresh()
        while True:
            await trio.sleep(s.auth_jwks_refetch_min_interval_s)
            if self._keys is not None:  # with no keys at all, retry at the minimum interval
                with trio.move_on_after(s.auth_jwks_refresh_interval_s - s.auth_jwks_refetch_min_interval_s):
                    await self._refresh_wanted.wait()
            await self.refresh()

    async def refresh(self) -> None:
        self.fetches += 1
        # Requests for a reload made from here on are served by the next one.
        self._refresh_wanted = trio.Event()
        source = self.config.jwks_file or self.config.jwks_url
        try:
            with trio.fail_after(self.settings.auth_jwks_fetch_timeout_s):
                document = await self._load()
            self._keys = parse_jwks(document, self.config, self.settings)
        except (trio.TooSlowError, OSError, httpx.HTTPError, ValueError) as exc:
            kept = "no keys yet" if self._keys is None else f"keeping {len(self._keys)} cached keys"
            log.warning("JWKS reload from %s failed (%s): %s", source, kept, str(exc)[:200] or type(exc).__name__)
            return
        log.info("JWKS loaded from %s: %d keys", source, len(self._keys))

    async def _load(self) -> bytes:
        if self.config.jwks_file:
            return await trio.to_thread.run_sync(_read_file, self.config.jwks_file, self.settings)
        return await fetch_bounded(self.config.jwks_url, self.settings.auth_jwks_bytes_max)


def _read_file(path: str, settings: Settings) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(settings.auth_jwks_bytes_max + 1)
    except OSError as exc:
        raise ValueError(f"JWKS file {path}: {exc.strerror or exc}") from None
    if len(data) > settings.auth_jwks_bytes_max:
        raise ValueError(f"JWKS file {path}: larger than {settings.auth_jwks_bytes_max} bytes")
    return data


async def fetch_bounded(url: str, bytes_max: int) -> bytes:
    """GET ``url``, refusing redirects, compression (a small compressed body could
    expand without bound) and any body over ``bytes_max``. The caller bounds the time."""
    async with httpx.AsyncClient(follow_redirects=False, headers={"accept-encoding": "identity"}) as client:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity") != "identity":
                raise ValueError("compressed JWKS refused")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > bytes_max:
                    raise ValueError(f"JWKS larger than {bytes_max} bytes")
            return bytes(body)
