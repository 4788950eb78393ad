"""The guard the app calls first for every request: token → principal → scopes.

Owns: reading the bearer token (``Authorization``, or ``?access_token=`` on
GET when ``auth_query_token``), the 401/403 answers with their
``WWW-Authenticate`` header, admin access without auth (local
operators only, auth/local.py), and the background JWKS reloads. The token is never logged and never
kept: only the principal's name is.
"""

from __future__ import annotations

import logging
import re

from ..config import Settings
from ..http.asgi import Request
from ..http.paths import fork_source_name, stream_name
from ..protocol.errors import ProtocolError
from . import policy
from .config import AuthConfig
from .local import local_operator
from .jwt import InvalidToken, JwksKeys, JwtVerifier, KeysUnavailable
from .principal import Principal
from .scopes import allows
from .tokens import StaticTokens

log = logging.getLogger("trio_streams.auth")
QUERY_TOKEN = "access_token"  # RFC 6750 §2.3
REALM = 'Bearer realm="trio-streams"'
# RFC 6750 b64token: anything else cannot be a token of ours, and is refused before hashing or parsing.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def unauthorized(message: str, error: str | None = None) -> ProtocolError:
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return ProtocolError(401, "UNAUTHORIZED", message, (("www-authenticate", challenge),))


def forbidden(message: str, action: str | None = None) -> ProtocolError:
    headers = () if action is None else (("www-authenticate", f'{REALM}, error="insufficient_scope", scope="{action}"'),)
    return ProtocolError(403, "FORBIDDEN", message, headers)


class Guard:
    def __init__(self, settings: Settings, config: AuthConfig) -> None:
        self.settings = settings
        self.config = config
        self.tokens = StaticTokens(config.tokens)
        self.jwks: JwksKeys | None = None
        self.jwt: JwtVerifier | None = None
        if config.jwt is not None:  # a bad JWKS file raises here: a start-up error
            self.jwks = JwksKeys(config.jwt, settings)
            self.jwt = JwtVerifier(config.jwt, settings, self.jwks)

    @property
    def configured(self) -> bool:
        return self.config.configured

    async def run(self) -> None:
        """Background work for the server's lifetime: JWKS reloads, if JWTs are configured."""
        if self.jwks is not None:
            await self.jwks.run()

    def check(self, req: Request) -> Principal | None:
        """The request's principal (None where no token is needed); 401/403 otherwise."""
        s = self.settings
        kind = policy.request_kind(req.method, req.path, s.stream_prefix, s.metrics_require_admin)
        if kind == policy.PUBLIC:
            return None
        if not self.configured:
            if kind == policy.ADMIN:
                self._refuse_unless_loopback(req)
            return None
        principal = self.authenticate(req)
        if kind == policy.SERVICE:  # the handler checks the scope against what the request names
            return principal
        for need in self._needs(req, kind):
            if not allows(principal.scopes, need.action, need.path):
                where = "" if need.path is None else " on this stream"
                raise forbidden(f"the token lacks the {need.action} scope{where}", need.action)
        return principal

    def _needs(self, req: Request, kind: str) -> tuple[policy.Need, ...]:
        if kind in (policy.ADMIN, policy.SUBSCRIPTION_ADMIN):
            return (policy.Need("admin"),)
        path = stream_name(req.path, self.settings)
        fork = req.headers.get("stream-forked-from") if req.method == "PUT" else None
        source = fork_source_name(fork, req, self.settings) if fork is not None else None
        return policy.stream_needs(req.method, path, source)

    def authenticate(self, req: Request) -> Principal:
        token = self._token(req)
        principal = self.tokens.verify(token)
        if principal is not None:
            return principal
        if self.jwt is None or token.count(".") != 2:
            raise unauthorized("invalid token", "invalid_token")
        try:
            return self.jwt.verify(token)
        except InvalidToken as exc:
            raise unauthorized(str(exc), "invalid_token") from None
        except KeysUnavailable:
            raise ProtocolError(503, "AUTH_UNAVAILABLE", "token keys are not loaded yet; retry shortly",
                                (("retry-after", "1"),)) from None

    def _token(self, req: Request) -> str:
        header = req.headers.get("authorization")
        # With query tokens off, access_token is just an unknown parameter (ignored like any other).
        query = req.query_values(QUERY_TOKEN) if self.settings.auth_query_token else []
        if header is not None and query:
            raise ProtocolError(400, "INVALID_REQUEST", "send the token in one place: the header or the query")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise unauthorized("a Bearer token is required")
        elif query:
            token = self._query_token(req, query)
        elif req.query_values(QUERY_TOKEN):
            raise unauthorized("the access_token query parameter is disabled on this server; "
                               "send an Authorization header")
        else:
            raise unauthorized("a Bearer token is required")
        token = token.strip()
        if len(token) > self.settings.auth_token_bytes_max or not B64TOKEN.fullmatch(token):
            raise unauthorized("malformed token", "invalid_token")
        return token

    def _query_token(self, req: Request, values: list[str]) -> str:
        if req.method != "GET":
            raise unauthorized("the access_token query parameter is accepted on GET only")
        if len(values) > 1:
            raise ProtocolError(400, "INVALID_QUERY", "query parameter 'access_token' given more than once")
        return values[0]

    def _refuse_unless_loopback(self, req: Request) -> None:
        if not local_operator(req):
            raise forbidden("without authentication configured, admin operations answer local requests only "
                            "(a loopback client, not through a proxy or a browser)")
