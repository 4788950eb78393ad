"""Static bearer tokens: the config holds their SHA-256, never the token.

A leaked config file then gives away no token. The presented token is
hashed and its digest looked up in a dict: the token itself is never
compared. The lookup's timing depends only on the digest, so it cannot
guide a guess: learning how many leading bytes of a stored SHA-256 a guess
matched says nothing about the next guess (that would take a preimage).
This is as safe as ``hmac.compare_digest`` against every configured digest
and, unlike that loop, costs one lookup however many tokens there are.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
        self._by_digest = {t.sha256: t for t in tokens}

    def __len__(self) -> int:
        return len(self._by_digest)

    def verify(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = self._by_digest.get(digest)
        return None if found is None else Principal(found.name, found.scopes)
