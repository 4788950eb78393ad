#!/usr/bin/env python3
"""What the access-control guard costs per request, on the event loop: no auth, a static
token (SHA-256 and one lookup), and a JWT per algorithm, verified by PyJWT or from the cache.

    .venv/bin/python scripts/auth_cost.py [--tokens 100] [--rounds 20000]

Prints microseconds per Guard.check (median of 5 runs) for a GET on a scoped stream path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from trio_streams.auth.config import AuthConfig, auth_config
from trio_streams.auth.guard import Guard
from trio_streams.auth.tokens import token_digest
from trio_streams.config import Settings
from trio_streams.http.asgi import Request

SCOPE = "read:chat/** write:chat/*/in"


def request(token: str) -> Request:
    return Request("GET", "/v1/stream/chat/room-7/log", {"authorization": f"Bearer {token}"}, [], {}, None)  # type: ignore[arg-type]


def per_check_us(guard: Guard, req: Request, rounds: int) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            guard.check(req)
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(runs)


def jwt_guard(directory: Path, cache_entries: int) -> tuple[Guard, dict[str, str]]:
    secret = b"a shared secret of thirty-two by"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    keys = [HMACAlgorithm.to_jwk(secret, as_dict=True) | {"kid": "hs"},
            RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rs"},
            OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True) | {"kid": "ed"}]
    (directory / "jwks.json").write_text(json.dumps({"keys": keys}))
    settings = Settings(auth_jwt_cache_entries_max=cache_entries)
    guard = Guard(settings, auth_config({"jwt": {"jwks_file": str(directory / "jwks.json")}}))
    claims = {"sub": "bench", "exp": int(time.time()) + 3600, "scope": SCOPE}
    tokens = {alg: jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
              for alg, key, kid in (("HS256", secret, "hs"), ("RS256", rsa_key, "rs"), ("EdDSA", ed_key, "ed"))}
    return guard, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100, help="static tokens configured")
    p.add_argument("--rounds", type=int, default=20000)
    args = p.parse_args()
    print(f"{'case':<34} µs per request")
    print(f"{'no auth configured':<34} {per_check_us(Guard(Settings(), AuthConfig()), request('x'), args.rounds):8.2f}")
    table = {"tokens": [{"name": f"t{i}", "sha256": token_digest(f"token-{i}"), "scopes": SCOPE.split()}
                        for i in range(args.tokens)]}
    static = Guard(Settings(), auth_config(table))
    print(f"{f'static token ({args.tokens} configured)':<34} "
          f"{per_check_us(static, request(f'token-{args.tokens - 1}'), args.rounds):8.2f}")
    for cache_entries, label in ((0, "verified every time"), (Settings().auth_jwt_cache_entries_max, "cached")):
        with tempfile.TemporaryDirectory() as directory:
            guard, tokens = jwt_guard(Path(directory), cache_entries)
            for alg, token in tokens.items():
                us = per_check_us(guard, request(token), args.rounds // 10)
                print(f"{f'JWT {alg}, {label}':<34} {us:8.2f}")


if __name__ == "__main__":
    main()
