"""JWT bearer tokens: HS256, RS256 and EdDSA with keys made here; claims, refusals, the JWKS cache.

Keys are generated per module; the JWKS comes from a file or from a tiny
HTTP server on 127.0.0.1 (``jwks_server``) that can also answer slowly or
with a body far over the limit, to show a fetch is bounded in time and bytes
and that the cached keys stay in use when it fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import PREFIX, assert_error, inproc_settings_for
from inproc import inline_worker_threads, running_app
from trio_streams.auth.config import JwtConfig, auth_config
from trio_streams.auth.jwt import InvalidToken, JwksKeys, JwtVerifier, KeysUnavailable
from trio_streams.config import Settings

ISSUER = "https://idp.example/"
AUDIENCE = "trio-streams"
HMAC_SECRET = b"a shared secret of thirty-two by"  # 32 bytes: PyJWT warns below
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(kind: str, kid: str) -> dict[str, Any]:
    if kind == "HS256":
        entry = HMACAlgorithm.to_jwk(HMAC_SECRET, as_dict=True)
    elif kind == "RS256":
        entry = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    else:
        entry = OKPAlgorithm.to_jwk(ED_KEY.public_key(), as_dict=True)
    return entry | {"kid": kid}


def jwks(*kinds: str) -> dict[str, Any]:
    return {"keys": [jwk(kind, kind.lower()) for kind in kinds]}


SIGNING = {"HS256": HMAC_SECRET, "RS256": RSA_KEY, "EdDSA": ED_KEY}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "nbf": now - 5,
            "scope": "read:chat/** write:chat/alice"}
    return {k: v for k, v in (base | changes).items() if v is not None}


def token(alg: str = "RS256", key: Any = None, kid: str | None = "", **changes: Any) -> str:
    headers = {} if kid is None else {"kid": kid or alg.lower()}
    return jwt.encode(claims(**changes), key if key is not None else SIGNING[alg], algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], body: dict[str, Any], sign_with: bytes | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    signature = b"" if sign_with is None else hmac.new(sign_with, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def config(path: Path, document: dict[str, Any] | None = None, **changes: Any) -> JwtConfig:
    jwks_file = path / "jwks.json"
    jwks_file.write_text(json.dumps(document or jwks("HS256", "RS256", "EdDSA")))
    return JwtConfig(jwks_file=str(jwks_file), issuer=ISSUER, audience=AUDIENCE) if not changes else \
        JwtConfig(**({"jwks_file": str(jwks_file), "issuer": ISSUER, "audience": AUDIENCE} | changes))


def verifier(tmp_path: Path, document: dict[str, Any] | None = None, **changes: Any) -> JwtVerifier:
    c = config(tmp_path, document, **changes)
    settings = Settings()
    return JwtVerifier(c, settings, JwksKeys(c, settings))


@pytest.mark.parametrize("alg", ["HS256", "RS256", "EdDSA"])
def test_each_algorithm_verifies(tmp_path: Path, alg: str) -> None:
    principal = verifier(tmp_path).verify(token(alg))
    assert principal.name == "alice"
    assert [str(s) for s in principal.scopes] == ["read:chat/**", "write:chat/alice"]


@pytest.mark.parametrize("alg", ["HS256", "RS256", "EdDSA"])
def test_without_kid_every_key_of_the_algorithm_is_tried(tmp_path: Path, alg: str) -> None:
    assert verifier(tmp_path).verify(token(alg, kid=None)).name == "alice"


REFUSALS = [
    ("expired", lambda: token(exp=int(time.time()) - 120), "expired"),
    ("not yet valid", lambda: token(nbf=int(time.time()) + 120), "not yet valid"),
    ("no exp", lambda: token(exp=None), "exp"),
    ("wrong issuer", lambda: token(iss="https://other.example/"), "issuer"),
    ("no issuer", lambda: token(iss=None), "iss"),
    ("wrong audience", lambda: token(aud="someone-else"), "audience"),
    ("wrong RSA key", lambda: token("RS256", key=OTHER_RSA_KEY), "signature"),
    ("wrong HMAC secret", lambda: token("HS256", key=b"another secret of thirty-two byt"), "signature"),
    ("alg none", lambda: unsigned({"alg": "none", "kid": "rs256"}, claims()), "signature"),
    ("alg none, no kid", lambda: unsigned({"alg": "none"}, claims()), "signature"),
    # Algorithm confusion: HS256 "signed" with the RSA public key's PEM as the HMAC secret.
    ("RS256 key used as HMAC secret", lambda: unsigned(
        {"alg": "HS256", "kid": "rs256"}, claims(),
        RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ), "signature"),
    ("garbage", lambda: "not.a.jwt", "malformed"),
    ("unknown kid", lambda: token(kid="rotated-away"), "signature"),
]


@pytest.mark.parametrize(("case", "make", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(tmp_path: Path, case: str, make: Any, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        verifier(tmp_path).verify(make())


def test_leeway_accepts_small_clock_skew(tmp_path: Path) -> None:
    skewed = token(exp=int(time.time()) - 10, nbf=int(time.time()) + 10)  # within the 30 s default
    assert verifier(tmp_path).verify(skewed).name == "alice"


def test_algorithms_setting_drops_keys(tmp_path: Path) -> None:
    v = verifier(tmp_path, algorithms=("RS256",))
    assert v.verify(token("RS256")).name == "alice"
    with pytest.raises(InvalidToken):
        v.verify(token("HS256"))


def test_scopes_claim_as_list_and_custom_name(tmp_path: Path) -> None:
    v = verifier(tmp_path, scopes_claim="permissions", subject_claim="client_id")
    t = token(permissions=["read", "openid", 7, "admin"], client_id="svc", scope=None)
    principal = v.verify(t)
    assert principal.name == "svc"
    assert [str(s) for s in principal.scopes] == ["read", "admin"]  # not ours (openid, 7): ignored


def test_audience_in_token_but_not_configured_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidToken, match="audience"):
        verifier(tmp_path, audience="").verify(token())


def test_jwks_limits(tmp_path: Path) -> None:
    settings = Settings(auth_jwks_keys_max=2)
    c = config(tmp_path, jwks("HS256", "RS256", "EdDSA"))
    with pytest.raises(ValueError, match="at most 2 keys"):
        JwksKeys(c, settings)
    settings = Settings(auth_jwks_bytes_max=100)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        JwksKeys(c, settings)
    (tmp_path / "jwks.json").write_text("{\"keys\": 5}")
    with pytest.raises(ValueError, match="keys"):
        JwksKeys(c, Settings())


# -- through the app ---------------------------------------------------------------------------


async def test_jwt_through_the_app(tmp_path: Path) -> None:
    c = config(tmp_path)
    auth = auth_config({"jwt": {"jwks_file": c.jwks_file, "issuer": ISSUER, "audience": AUDIENCE}})
    async with running_app(inproc_settings_for(tmp_path), auth=auth) as srv:
        bearer = {"authorization": f"Bearer {token('EdDSA')}"}
        created = await srv.client.put(PREFIX + "chat/alice", headers=bearer | {"content-type": "text/plain"})
        assert created.status_code == 201
        assert (await srv.client.get(PREFIX + "chat/alice", headers=bearer)).status_code == 200
        assert_error(await srv.client.put(PREFIX + "chat/bob", headers=bearer), 403, "FORBIDDEN")
        expired = {"authorization": f"Bearer {token('EdDSA', exp=int(time.time()) - 600)}"}
        resp = await srv.client.get(PREFIX + "chat/alice", headers=expired)
        assert_error(resp, 401, "UNAUTHORIZED")
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]


async def test_jwks_url_not_loaded_is_503(tmp_path: Path) -> None:
    with trio.socket.socket() as s:  # a port nothing listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = auth_config({"jwt": {"jwks_url": f"http://127.0.0.1:{port}/jwks.json"}})
    async with running_app(inproc_settings_for(tmp_path), auth=auth) as srv:
        resp = await srv.client.get(PREFIX + "x", headers={"authorization": f"Bearer {token(aud=None, iss=None)}"})
        assert_error(resp, 503, "AUTH_UNAVAILABLE")
        assert resp.headers["retry-after"]


# -- the JWKS cache ------------------------------------------------------------------------------


async def test_unknown_kid_refreshes_the_file_at_most_once_per_interval(tmp_path: Path, autojump_clock: Any) -> None:
    """A rotated key is picked up after an unknown kid asks for it, once per
    auth_jwks_refetch_min_interval_s however many requests ask; virtual time."""
    settings = Settings(auth_jwks_refetch_min_interval_s=30, auth_jwks_refresh_interval_s=300)
    c = config(tmp_path, jwks("RS256"))
    keys = JwksKeys(c, settings)
    v = JwtVerifier(c, settings, keys)
    with inline_worker_threads():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keys.run)
            (tmp_path / "jwks.json").write_text(json.dumps(jwks("RS256", "EdDSA")))
            for _ in range(100):
                with pytest.raises(InvalidToken):
                    v.verify(token("EdDSA"))
            await trio.sleep(29)
            assert keys.fetches == 0  # nothing before the minimum interval
            await trio.sleep(2)
            assert keys.fetches == 1
            assert v.verify(token("EdDSA")).name == "alice"
            await trio.sleep(200)
            assert keys.fetches == 1  # no one asked: the next reload is the periodic one
            await trio.sleep(100)
            assert keys.fetches == 2
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def jwks_server(mode: str, document: bytes) -> AsyncIterator[dict[str, Any]]:
    """HTTP/1.0-style server on 127.0.0.1: 'ok' answers ``document``; 'slow' drips it a byte
    at a time, 10 per second; 'huge' declares and streams 64 MiB. Reports bytes sent."""
    state: dict[str, Any] = {"requests": 0, "sent": 0}
    total = 64 * 1024 * 1024

    async def handle(stream: trio.SocketStream) -> None:
        state["requests"] += 1
        await stream.receive_some(65536)
        length = total if mode == "huge" else len(document)
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        try:
            await stream.send_all(head.encode())
            if mode == "ok":
                await stream.send_all(document)
            elif mode == "slow":
                for i in range(len(document)):
                    await stream.send_all(document[i:i + 1])
                    state["sent"] += 1
                    await trio.sleep(0.1)
            else:
                chunk = b" " * 65536
                while state["sent"] < total:
                    await stream.send_all(chunk)
                    state["sent"] += len(chunk)
        except trio.BrokenResourceError:
            pass  # the client gave up: that is the point
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        state["url"] = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/jwks.json"
        yield state
        nursery.cancel_scope.cancel()


async def test_jwks_url_loads_and_verifies() -> None:
    async with jwks_server("ok", json.dumps(jwks("RS256")).encode()) as server:
        c = JwtConfig(jwks_url=server["url"])
        keys = JwksKeys(c, Settings())
        with pytest.raises(KeysUnavailable):
            keys.current()
        await keys.refresh()
        assert JwtVerifier(c, Settings(), keys).verify(token(aud=None, iss=None)).name == "alice"
        assert server["requests"] == 1


@pytest.mark.parametrize("mode", ["slow", "huge"])
async def test_jwks_fetch_is_bounded_and_keeps_cached_keys(mode: str) -> None:
    async with jwks_server("ok", json.dumps(jwks("RS256")).encode()) as good:
        c = JwtConfig(jwks_url=good["url"])
        settings = Settings(auth_jwks_fetch_timeout_s=0.5, auth_jwks_bytes_max=64 * 1024)
        keys = JwksKeys(c, settings)
        await keys.refresh()
        cached = keys.current()
    async with jwks_server(mode, json.dumps(jwks("EdDSA")).encode()) as bad:
        keys.config = JwtConfig(jwks_url=bad["url"])
        await keys.refresh()  # returns: bounded by auth_jwks_fetch_timeout_s or auth_jwks_bytes_max
        assert keys.current() is cached
        assert bad["requests"] == 1
        if mode == "huge":
            assert bad["sent"] < 64 * 1024 * 1024  # the client stopped reading early
        else:
            assert bad["sent"] < len(json.dumps(jwks("EdDSA")))  # never finished the drip


# -- the cache of verified tokens ---------------------------------------------------------------


def counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return original(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def test_a_verified_token_is_remembered_until_it_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decode(monkeypatch)
    v = verifier(tmp_path)
    now = time.time()
    t = token("EdDSA", exp=int(now) + 100)
    assert v.verify(t).name == v.verify(t).name == "alice"
    assert len(calls) == 1
    monkeypatch.setattr(time, "time", lambda: now + 100 + 31)  # past exp and the 30 s leeway (for the cache)
    v.verify(t)  # PyJWT has a clock of its own (still before exp): what matters is that it is asked again
    assert len(calls) == 2


async def test_a_jwks_reload_forgets_verified_tokens(tmp_path: Path) -> None:
    v = verifier(tmp_path)
    t = token("RS256")
    assert v.verify(t).name == "alice"
    (tmp_path / "jwks.json").write_text(json.dumps(jwks("EdDSA")))  # the RSA key is withdrawn
    await v.keys.refresh()
    with pytest.raises(InvalidToken):
        v.verify(t)


def test_the_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decode(monkeypatch)
    c = config(tmp_path)
    settings = Settings(auth_jwt_cache_entries_max=2)
    v = JwtVerifier(c, settings, JwksKeys(c, settings))
    tokens = [token("HS256", sub=f"user{i}") for i in range(3)]
    for t in tokens:
        v.verify(t)
    assert len(v._verified) == 2
    v.verify(tokens[0])  # the oldest was dropped: verified again
    assert len(calls) == 4
