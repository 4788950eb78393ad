"""Ed25519 webhook signing keys (PROTOCOL.md 6.5, 7.1), persisted in the data directory.

One file, ``data_dir/webhook-keys/signing-keys.json`` (mode 0600), holds the
active private key as a JWK and the public JWKs of retired keys with the
time each was retired. Every change (first start, rotation) rewrites the
whole file atomically (_files.py), so a crash leaves either the old
key set or the new one, never a half-rotated one.

A retired key stays in the JWKS for ``replay_window_s`` after retirement:
a receiver accepts a signature while its timestamp is within that window
of its clock, and nothing is signed with a key after it is retired. Then
it is left out, and dropped from the file at the next rotation. A file
that cannot be read or does not verify (its ``x`` or ``kid`` not matching
its private key) stops start-up: a new key would silently break every
receiver that pinned the old one.

The kid is ``"ds_"`` + the RFC 7638 thumbprint of the public key. JWK
encoding goes through PyJWT's ``OKPAlgorithm``; the thumbprint is the
RFC's three-member canonical JSON hashed with SHA-256.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from jwt.exceptions import PyJWTError

from ._files import key_directory, read_secret_file, write_secret_file

FILE_NAME = "signing-keys.json"
FORMAT_VERSION = 1
KID_PREFIX = "ds_"
# The default of the webhook_key_replay_window_s setting (config.py).
REPLAY_WINDOW_S_DEFAULT = 300.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an OKP key: SHA-256 of its required members in lexicographic order."""
    canonical = json.dumps({"crv": public_jwk["crv"], "kty": public_jwk["kty"], "x": public_jwk["x"]},
                           separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclasses.dataclass(frozen=True)
class _ActiveKey:
    kid: str
    private: Ed25519PrivateKey
    public_jwk: dict[str, Any]
    created_at: float


@dataclasses.dataclass(frozen=True)
class _RetiredKey:
    public_jwk: dict[str, Any]
    retired_at: float


def _public_jwk(private: Ed25519PrivateKey) -> dict[str, Any]:
    jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk = {"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"]}
    return {**jwk, "kid": KID_PREFIX + thumbprint(jwk), "use": "sig", "alg": "EdDSA"}


def _new_active(now: float) -> _ActiveKey:
    private = Ed25519PrivateKey.generate()
    public = _public_jwk(private)
    return _ActiveKey(public["kid"], private, public, now)


class SigningKeys:
    """The active signing key and the retired public keys still published."""

    def __init__(self, path: Path, active: _ActiveKey, retired: list[_RetiredKey],
                 clock_wall: Callable[[], float], replay_window_s: float) -> None:
        self._path = path
        # Read once per use: a rotation swaps it whole, so a kid never meets another key.
        self._active = active
        self._retired = retired
        self._clock_wall = clock_wall
        self._replay_window_s = replay_window_s
        self._rotating = threading.Lock()

    @classmethod
    def load_or_create(cls, data_dir: Path, clock_wall: Callable[[], float], *,
                       replay_window_s: float = REPLAY_WINDOW_S_DEFAULT) -> SigningKeys:
        """The keys in ``data_dir``; a new key (and file) on first start. Blocking.

        ValueError with a one-line message when the file is unreadable or corrupt.
        """
        path = key_directory(data_dir) / FILE_NAME
        data = read_secret_file(path)
        if data is None:
            keys = cls(path, _new_active(clock_wall()), [], clock_wall, replay_window_s)
            keys._save()
            return keys
        active, retired = _decode(data, path)
        return cls(path, active, retired, clock_wall, replay_window_s)

    @property
    def active_kid(self) -> str:
        return self._active.kid

    def signature_header(self, timestamp: int, body: bytes) -> str:
        """``Webhook-Signature``: Ed25519 over ``<timestamp>.<body>``, unpadded base64url."""
        active = self._active
        signature = active.private.sign(b"%d." % timestamp + body)
        return f"t={timestamp},kid={active.kid},ed25519={b64url(signature)}"

    def jwks(self) -> dict[str, Any]:
        """The active public key first, then retired ones still inside the replay window."""
        now = self._clock_wall()
        published = [dict(self._active.public_jwk)]
        published += [dict(r.public_jwk) for r in self._retired if now - r.retired_at < self._replay_window_s]
        return {"keys": published}

    def rotate_blocking(self, now: float) -> str:
        """Makes a new key active and retires the current one; returns the new kid.

        Blocking (writes and fsyncs the file): from a worker thread or the command
        line. The new key is used only once the file holding it is durable.
        """
        with self._rotating:
            old = self._active
            retired = [r for r in self._retired if now - r.retired_at < self._replay_window_s]
            retired.append(_RetiredKey(old.public_jwk, now))
            new = _new_active(now)
            _write(self._path, new, retired)
            self._active, self._retired = new, retired
            return new.kid

    async def rotate(self) -> str:
        """``rotate_blocking`` in a worker thread, at the clock's time now."""
        return await trio.to_thread.run_sync(self.rotate_blocking, self._clock_wall())

    def _save(self) -> None:
        _write(self._path, self._active, self._retired)


def _write(path: Path, active: _ActiveKey, retired: list[_RetiredKey]) -> None:
    private_jwk = OKPAlgorithm.to_jwk(active.private, as_dict=True)
    document = {
        "version": FORMAT_VERSION,
        "active": {"kid": active.kid, "crv": "Ed25519", "x": active.public_jwk["x"], "d": private_jwk["d"],
                   "created_at": active.created_at},
        "retired": [{"kid": r.public_jwk["kid"], "x": r.public_jwk["x"], "retired_at": r.retired_at}
                    for r in retired],
    }
    write_secret_file(path, json.dumps(document, indent=1).encode("utf-8") + b"\n")


def _decode(data: bytes, path: Path) -> tuple[_ActiveKey, list[_RetiredKey]]:
    try:
        document = json.loads(data)
        if document["version"] != FORMAT_VERSION:
            raise ValueError(f"unknown version {document['version']!r}")
        if not isinstance(document["retired"], list):
            raise ValueError("retired is not a list")
        active = _decode_active(document["active"])
        retired = [_decode_retired(entry) for entry in document["retired"]]
    except (ValueError, KeyError, TypeError, AttributeError, PyJWTError) as error:
        raise ValueError(f"webhook signing key file {path} is corrupt ({error}); restore it from a backup, "
                         "or move it away to start with a new key") from None
    return active, retired


def _decode_active(entry: dict[str, Any]) -> _ActiveKey:
    private = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": "Ed25519", "d": entry["d"], "x": entry["x"]})
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("the active key is not an Ed25519 private key")
    public = _public_jwk(private)
    if public["x"] != entry["x"] or public["kid"] != entry["kid"]:
        raise ValueError("the active key's x or kid does not match its private key")
    return _ActiveKey(public["kid"], private, public, float(entry["created_at"]))


def _decode_retired(entry: dict[str, Any]) -> _RetiredKey:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": entry["x"]}
    OKPAlgorithm.from_jwk(jwk)  # a valid 32-byte public key, else ValueError
    if entry["kid"] != KID_PREFIX + thumbprint(jwk):
        raise ValueError(f"retired key {str(entry['kid'])[:60]} does not match its x")
    return _RetiredKey({**jwk, "kid": entry["kid"], "use": "sig", "alg": "EdDSA"}, float(entry["retired_at"]))


def rotate_offline(data_dir: Path, replay_window_s: float = REPLAY_WINDOW_S_DEFAULT) -> tuple[str | None, str]:
    """The command line's rotation (the caller holds the data directory's lock): (retired kid, new kid).

    Without a key yet, the first one is created and nothing is retired.
    """
    existed = (key_directory(data_dir) / FILE_NAME).exists()
    keys = SigningKeys.load_or_create(data_dir, time.time, replay_window_s=replay_window_s)
    if not existed:
        return None, keys.active_kid
    old = keys.active_kid
    return old, keys.rotate_blocking(time.time())
