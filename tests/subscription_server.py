"""``trio-streams`` with stand-in webhook ports, for tests that need a real process
(kill -9) before the webhook package is there: wake tokens are HMAC-signed with a
fixed test key (so they verify across restarts), nothing is ever delivered.

    python tests/subscription_server.py serve --data-dir ... (the usual flags)
"""

from __future__ import annotations

import hashlib
import hmac
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trio_streams.config import Settings
from trio_streams.subscriptions import ports

_KEY = b"test-only wake token key"


@dataclass(frozen=True)
class Claims:
    subscription_id: str
    generation: int
    wake_id: str


class InvalidToken(Exception):
    pass


class HmacTokens:
    def issue(self, subscription_id: str, generation: int, wake_id: str, ttl_s: float) -> str:
        claims = f"{subscription_id}.{generation}.{wake_id}"
        return f"{claims}.{hmac.new(_KEY, claims.encode(), hashlib.sha256).hexdigest()}"

    def verify(self, token: str, subscription_id: str) -> Claims:
        claims, _, mac = token.rpartition(".")
        parts = claims.split(".")
        expected = hmac.new(_KEY, claims.encode(), hashlib.sha256).hexdigest()
        if len(parts) != 3 or parts[0] != subscription_id or not hmac.compare_digest(mac, expected):
            raise InvalidToken()
        return Claims(parts[0], int(parts[1]), parts[2])


class NoKeys:
    active_kid = "ds_test"

    def jwks(self) -> dict[str, Any]:
        return {"keys": []}


class NoDeliveries:
    async def deliver(self, url: str, body: bytes) -> Any:
        raise AssertionError("these tests use pull-wake subscriptions only")


def _load(settings: Settings, clock_wall: Callable[[], float]) -> ports.Ports:
    async def any_url(url: str) -> None:
        pass

    def one_second(attempt: int, rng: random.Random) -> float:
        return 1.0

    return ports.Ports(NoKeys(), HmacTokens(), NoDeliveries(), InvalidToken, any_url, one_second)


if __name__ == "__main__":
    ports.load_ports = _load
    from trio_streams.__main__ import main

    sys.exit(main())
