"""The ``[auth]`` table of the config file: static tokens and JWT verification.

Validated whole at start-up; every error is a ValueError naming the key
(``auth.tokens[1].sha256: ...``), which the CLI prints on one line (exit 2).

    [[auth.tokens]]
    name = "ingest"
    sha256 = "<hex SHA-256 of the token; trio-streams token hash>"
    scopes = ["write:chat/**", "read:chat/**"]

    [auth.jwt]
    jwks_file = "/etc/trio-streams/jwks.json"   # or jwks_url = "https://idp.example/jwks.json"
    issuer = "https://idp.example/"             # checked when set
    audience = "trio-streams"                   # checked when set; a token with aud needs it
    scopes_claim = "scope"                      # space-separated string or list of scopes
    subject_claim = "sub"
    algorithms = ["RS256", "EdDSA"]             # subset of HS256, RS256, EdDSA
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .scopes import parse_scopes
from .tokens import StaticToken

JWT_ALGORITHMS = ("HS256", "RS256", "EdDSA")
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclasses.dataclass(frozen=True)
class JwtConfig:
    jwks_file: str = ""
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    scopes_claim: str = "scope"
    subject_claim: str = "sub"
    algorithms: tuple[str, ...] = JWT_ALGORITHMS


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[StaticToken, ...] = ()
    jwt: JwtConfig | None = None

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.jwt is not None


def auth_config(table: Mapping[str, Any]) -> AuthConfig:
    _refuse_unknown("auth", table, ("tokens", "jwt"))
    tokens = table.get("tokens", [])
    if not isinstance(tokens, list):
        raise ValueError("auth.tokens: must be an array of tables ([[auth.tokens]])")
    parsed = tuple(_static_token(f"auth.tokens[{i}]", t) for i, t in enumerate(tokens))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise ValueError("auth.tokens: names must be unique (they identify the caller in logs)")
    if len({t.sha256 for t in parsed}) != len(parsed):
        raise ValueError("auth.tokens: two entries have the same sha256 (the same token)")
    jwt = table.get("jwt")
    return AuthConfig(parsed, None if jwt is None else _jwt_config(jwt))


def _static_token(where: str, entry: Any) -> StaticToken:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a table with name, sha256 and scopes")
    _refuse_unknown(where, entry, ("name", "sha256", "scopes"))
    name, digest = _string(where, entry, "name"), _string(where, entry, "sha256").lower()
    if len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
        raise ValueError(f"{where}.sha256: must be 64 hex digits (trio-streams token hash prints it)")
    return StaticToken(name, bytes.fromhex(digest), _scopes(f"{where}.scopes", entry.get("scopes")))


def _jwt_config(table: Any) -> JwtConfig:
    if not isinstance(table, dict):
        raise ValueError("auth.jwt: must be a table")
    fields = [f.name for f in dataclasses.fields(JwtConfig)]
    _refuse_unknown("auth.jwt", table, fields)
    values: dict[str, Any] = {k: _string("auth.jwt", table, k) for k in fields if k != "algorithms" and k in table}
    config = JwtConfig(**values)
    if bool(config.jwks_file) == bool(config.jwks_url):
        raise ValueError("auth.jwt: give exactly one of jwks_file and jwks_url")
    if config.jwks_url and not config.jwks_url.startswith(("https://", "http://")):
        raise ValueError("auth.jwt.jwks_url: must be an http(s) URL")
    if "algorithms" in table:
        algorithms = table["algorithms"]
        if not isinstance(algorithms, list) or not algorithms or not set(algorithms) <= set(JWT_ALGORITHMS):
            raise ValueError(f"auth.jwt.algorithms: must be a non-empty list drawn from {', '.join(JWT_ALGORITHMS)}")
        config = dataclasses.replace(config, algorithms=tuple(algorithms))
    return config


def _scopes(where: str, value: Any) -> tuple:  # type: ignore[type-arg]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings like \"read:chat/**\"")
    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _string(where: str, table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: must be a non-empty string")
    return value


def _refuse_unknown(where: str, table: Mapping[str, Any], known: Any) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
