"""Static bearer tokens: the config holds their SHA-256, never the token.

A leaked config file then gives away no token. The digest of the presented
token is compared with every configured one by ``hmac.compare_digest`` (no
early exit), so timing tells nothing about which digest, or how much of it,
matched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets

from .principal import Principal
from .scopes import Scope

# Random bytes in a generated token (256 bits, printed URL-safe base64).
GENERATED_TOKEN_BYTES = 32


@dataclasses.dataclass(frozen=True)
class StaticToken:
    name: str
    sha256: bytes
    scopes: tuple[Scope, ...]


def token_digest(token: str) -> str:
    """The hex SHA-256 an operator writes in the config for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(GENERATED_TOKEN_BYTES)


class StaticTokens:
    def __init__(self, tokens: tuple[StaticToken, ...]) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def verify(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: StaticToken | None = None
        for candidate in self._tokens:
            if hmac.compare_digest(digest, candidate.sha256):
                found = candidate
        return None if found is None else Principal(found.name, found.scopes)
