"""Ports: what the subscriptions task needs from the webhook package, and the one place it is loaded.

Owns: typed copies (``typing.Protocol``) of the interfaces of
``trio_streams.webhooks`` (signing keys, wake-scoped tokens, the SSRF
check, the deliverer, the retry schedule), so the core type-checks and is
tested against fakes without the package, and ``load_ports``, the adapter
that builds the real ones. Never: signs, delivers or verifies anything itself.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..webhooks.backoff import retry_delay_s
from ..webhooks.deliver import Deliverer, check_webhook_destination
from ..webhooks.keys import SigningKeys
from ..webhooks.tokens import InvalidWakeToken, WakeTokens


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
    # Raises ProtocolError(400, "WEBHOOK_URL_REJECTED") for a URL the server must not call
    # (its host resolved and every address checked).
    check_url: Callable[[str], Awaitable[None]]
    retry_delay_s: Callable[[int, random.Random], float]


def load_ports(settings: Settings, clock_wall: Callable[[], float]) -> Ports:
    """The real ports from ``trio_streams.webhooks`` (keys and token secret under data_dir).

    Blocking (reads, and on first start writes, the key files); a damaged key
    file raises ValueError naming it (never silently regenerated).
    """
    data_dir = Path(settings.data_dir)
    keys = SigningKeys.load_or_create(data_dir, clock_wall, replay_window_s=settings.webhook_key_replay_window_s)
    tokens = WakeTokens.load_or_create(data_dir, clock_wall)
    return Ports(keys, tokens, Deliverer(settings, keys, clock_wall), InvalidWakeToken,
                 partial(check_webhook_destination, settings=settings), retry_delay_s)
