"""Ports: what the subscriptions task needs from the webhook package, and the one place it is loaded.

Owns: typed copies (``typing.Protocol``) of the interfaces of
``trio_streams.webhooks`` (signing keys, wake-scoped tokens, the SSRF
check, the deliverer, the retry schedule), so the core type-checks and is
tested against fakes without the package, and ``load_ports``, the adapter
that builds the real ones. Never: signs, delivers or verifies anything itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings


class SigningKeysPort(Protocol):
    @property
    def active_kid(self) -> str: ...

    def jwks(self) -> dict[str, Any]: ...


class WakeClaimsPort(Protocol):
    @property
    def subscription_id(self) -> str: ...

    @property
    def generation(self) -> int: ...

    @property
    def wake_id(self) -> str: ...


class WakeTokensPort(Protocol):
    def issue(self, subscription_id: str, generation: int, wake_id: str, ttl_s: float) -> str: ...

    def verify(self, token: str, subscription_id: str) -> WakeClaimsPort: ...


class DeliveryResultPort(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    @property
    def status(self) -> int | None: ...

    @property
    def error(self) -> str | None: ...


class DelivererPort(Protocol):
    async def deliver(self, url: str, body: bytes) -> DeliveryResultPort: ...


@dataclasses.dataclass(frozen=True)
class Ports:
    keys: SigningKeysPort
    tokens: WakeTokensPort
    deliverer: DelivererPort
    # Raised by ``tokens.verify`` for a token that is not valid for the subscription.
    invalid_token: type[Exception]
    # Raises ProtocolError(400, "WEBHOOK_URL_REJECTED") for a URL the server must not call.
    check_url: Callable[..., None]
    retry_delay_s: Callable[[int, random.Random], float]


class PortsUnavailable(Exception):
    """The webhook package is not installed: subscriptions answer 503."""


def load_ports(settings: Settings, clock_wall: Callable[[], float]) -> Ports:
    """The real ports from ``trio_streams.webhooks`` (keys and token secret under data_dir)."""
    try:
        keys_mod = importlib.import_module("trio_streams.webhooks.keys")
        tokens_mod = importlib.import_module("trio_streams.webhooks.tokens")
        urls_mod = importlib.import_module("trio_streams.webhooks.urls")
        deliver_mod = importlib.import_module("trio_streams.webhooks.deliver")
        backoff_mod = importlib.import_module("trio_streams.webhooks.backoff")
    except ImportError as error:
        raise PortsUnavailable(f"the webhook package is missing: {error}") from None
    data_dir = Path(settings.data_dir)
    keys = keys_mod.SigningKeys.load_or_create(data_dir, clock_wall)
    tokens = tokens_mod.WakeTokens.load_or_create(data_dir, clock_wall)
    return Ports(keys, tokens, deliver_mod.Deliverer(settings, keys, clock_wall), tokens_mod.InvalidWakeToken,
                 urls_mod.check_webhook_url, backoff_mod.retry_delay_s)
