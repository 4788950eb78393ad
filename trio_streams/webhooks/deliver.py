"""One webhook delivery: a signed POST, bounded in time, bytes and concurrency.

``Deliverer.deliver`` never raises for anything the network or the receiver
does; it returns a ``DeliveryResult`` and the subscriptions core decides
what follows (auto-ack on ``done``, a retry after ``backoff.retry_delay_s``).

SSRF (urls.py) is checked twice: when the subscription is created and at
every delivery, on the addresses the host resolves to *now*. Every address
must be allowed (a name resolving to one public and one private address is
refused), and the connection goes to the checked address itself, never to
the name again (DNS rebinding): the URL carries the address, the ``Host``
header and the TLS server name (SNI and certificate check) the name. Each
delivery has its own client and connection, so a TLS session opened for one
name is never reused for another name on the same address. Redirects are not
followed (a 3xx is a failed delivery): a receiver could point anywhere.
Proxy variables are ignored for the same reason.

The response body is read raw (no decompression) up to
``webhook_response_bytes_max``; ``done`` is true only for a 2xx whose body is
a JSON object with ``"done": true``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
from collections.abc import Callable

import httpx
import orjson
import trio

from ..config import Settings
from ..protocol.errors import ProtocolError
from .keys import SigningKeys
from .urls import REJECTED, IPAddress, WebhookTarget, address_rejection, parse_webhook_url

log = logging.getLogger("trio_streams.webhooks")

USER_AGENT = "trio-streams-webhook/1"


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    ok: bool  # the receiver answered 2xx
    done: bool  # ... with a JSON object holding "done": true
    status: int | None  # None when no response arrived
    error: str | None  # why it failed (or what was odd about a 2xx), for logs and status


@dataclasses.dataclass(frozen=True)
class DelivererStatistics:
    in_flight: int
    waiting: int
    succeeded: int
    failed: int


class DeliveryRefused(Exception):
    """The destination may not be reached; the message says why."""


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order (a worker thread does the lookup).

    Module-level so tests can replace it (monkeypatch) to play a DNS rebinding.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def checked_addresses(target: WebhookTarget, *, allow_loopback: bool) -> list[IPAddress]:
    """The addresses to connect to: the URL's own, or every address its host resolves to now,
    all allowed (else DeliveryRefused). OSError when the name does not resolve."""
    if target.address is not None:
        return [target.address]
    addresses = await resolve_addresses(target.host, target.port)
    if not addresses:
        raise DeliveryRefused(f"webhook host {target.host} resolves to no address")
    for address in addresses:
        reason = address_rejection(address, allow_loopback=allow_loopback)
        if reason:
            raise DeliveryRefused(f"webhook host {target.host} resolves to {address}, which is {reason}")
    return addresses


async def check_webhook_destination(url: str, settings: Settings) -> None:
    """``check_webhook_url`` and then the host's current DNS answer, for accepting a subscription.

    Raises ProtocolError(400, WEBHOOK_URL_REJECTED) when the URL or any address its host
    resolves to is refused, or the host does not resolve within ``webhook_timeout_s``.
    Deliveries check again (the answer may change): this only refuses early what
    cannot be delivered.
    """
    target = parse_webhook_url(url, allow_local_http=settings.webhook_dev_mode,
                               url_bytes_max=settings.webhook_url_bytes_max)
    try:
        with trio.fail_after(settings.webhook_timeout_s):
            await checked_addresses(target, allow_loopback=settings.webhook_dev_mode)
    except DeliveryRefused as error:
        raise ProtocolError(400, REJECTED, str(error)) from None
    except (OSError, trio.TooSlowError):
        raise ProtocolError(400, REJECTED, f"webhook host {target.host} does not resolve") from None


class Deliverer:
    def __init__(self, settings: Settings, keys: SigningKeys, clock_wall: Callable[[], float], *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._keys = keys
        self._clock_wall = clock_wall
        self._limiter = trio.CapacityLimiter(settings.webhook_deliveries_max)
        # Loading the CA bundle takes milliseconds: once, not per delivery.
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context(trust_env=False)
        self._timeout = httpx.Timeout(settings.webhook_timeout_s,
                                      connect=min(settings.webhook_connect_timeout_s, settings.webhook_timeout_s))
        self._succeeded = 0
        self._failed = 0

    def statistics(self) -> DelivererStatistics:
        stats = self._limiter.statistics()
        return DelivererStatistics(stats.borrowed_tokens, stats.tasks_waiting, self._succeeded, self._failed)

    async def deliver(self, url: str, body: bytes) -> DeliveryResult:
        async with self._limiter:
            with trio.move_on_after(self._settings.webhook_timeout_s):
                result = await self._deliver(url, body)
                self._count(result)
                return result
        result = DeliveryResult(False, False, None, f"no answer within {self._settings.webhook_timeout_s:g} s")
        self._count(result)
        return result

    def _count(self, result: DeliveryResult) -> None:
        if result.ok:
            self._succeeded += 1
        else:
            self._failed += 1

    async def _deliver(self, url: str, body: bytes) -> DeliveryResult:
        try:
            target = parse_webhook_url(url, allow_local_http=self._settings.webhook_dev_mode,
                                       url_bytes_max=self._settings.webhook_url_bytes_max)
            addresses = await checked_addresses(target, allow_loopback=self._settings.webhook_dev_mode)
        except ProtocolError as error:
            return _failed(f"webhook url rejected: {error.message}")
        except DeliveryRefused as error:
            return _failed(str(error))
        except OSError as error:
            return _failed(f"cannot resolve {target.host}: {error}")
        errors = []
        for address in addresses:
            try:
                return await self._post(target, address, body)
            except httpx.ConnectError as error:  # this address is down: the next may answer
                errors.append(f"{address}: {_describe(error)}")
            except (httpx.HTTPError, OSError) as error:
                return _failed(_describe(error))
        return _failed("cannot connect: " + "; ".join(errors))

    async def _post(self, target: WebhookTarget, address: IPAddress, body: bytes) -> DeliveryResult:
        literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        headers = {
            "host": target.host_header, "content-type": "application/json", "user-agent": USER_AGENT,
            "accept-encoding": "identity",
            "webhook-signature": self._keys.signature_header(int(self._clock_wall()), body),
        }
        # The certificate is checked against the name, on a connection to the checked address.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" and target.address is None else {}
        async with httpx.AsyncClient(verify=self._ssl, timeout=self._timeout, follow_redirects=False,
                                     trust_env=False) as client:
            request = client.build_request("POST", f"{target.scheme}://{literal}:{target.port}{target.target}",
                                           content=body, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                return await self._result(response)
            finally:
                await response.aclose()

    async def _result(self, response: httpx.Response) -> DeliveryResult:
        status = response.status_code
        if 300 <= status < 400:
            return DeliveryResult(False, False, status, f"redirect ({status}) not followed")
        if not 200 <= status < 300:
            return DeliveryResult(False, False, status, f"webhook answered {status}")
        limit = self._settings.webhook_response_bytes_max
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                return DeliveryResult(True, False, status, f"response body larger than {limit} bytes, not read")
            chunks.append(chunk)
        return DeliveryResult(True, _says_done(b"".join(chunks)), status, None)


def _says_done(body: bytes) -> bool:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("done") is True


def _describe(error: BaseException) -> str:
    """The first non-empty message down the chain (httpx often wraps an empty one around
    the ssl or socket error that says what happened)."""
    seen: BaseException | None = error
    while seen is not None:
        if str(seen):
            return f"{type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return type(error).__name__


def _failed(error: str) -> DeliveryResult:
    return DeliveryResult(False, False, None, error)
