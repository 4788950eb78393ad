"""HTTP for the client: one httpx.AsyncClient, per-request headers, retries.

Owns: the httpx client (made here unless the caller passes one; only a
client made here is closed here); resolving header and query values that
are callables, once per attempt, so a token provider can refresh; the retry
loop with its backoff sleeps; and turning a final non-2xx answer into the
exception ``errors.error_for_response`` names.

Never interprets stream data and never decides what is transient
(``_protocol`` does). It runs on any anyio backend, Trio or asyncio: it
sleeps through anyio and lets httpx pick its own backend.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Union

import anyio
import httpx

from ._protocol import Backoff, build_query, parse_retry_after, retryable_failure, retryable_status
from .errors import NETWORK, FetchError, error_for_response

HeaderValue = Union[str, Callable[[], Union[str, Awaitable[str]]]]
HeadersSpec = Mapping[str, HeaderValue]
ParamsSpec = Mapping[str, Union[HeaderValue, None]]

REQUEST_TIMEOUT_S = 30.0
# Above the protocol's 30 s long-poll wait and 60 s SSE cycle, so only a
# dead connection times out.
LIVE_READ_TIMEOUT_S = 90.0
LIVE_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_S, read=LIVE_READ_TIMEOUT_S)
# Failures raised before the request was written: resending cannot duplicate it.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Transport:
    """Requests to one server with shared headers, params and backoff."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None,
        backoff: Backoff | None = None,
        owns_client: bool | None = None,
    ) -> None:
        self._client = client
        self._owns_client = client is None if owns_client is None else owns_client
        self.headers: dict[str, HeaderValue] = dict(headers or {})
        self.params: dict[str, HeaderValue | None] = dict(params or {})
        self.backoff = backoff or Backoff()
        build_query((), ((k, "") for k in self.params), ())  # reject reserved names now, not on first use

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
        return self._client

    def derive(self, *, headers: HeadersSpec | None = None, params: ParamsSpec | None = None) -> Transport:
        """A transport on the same client (not owning it) with extra headers and params layered on."""
        return Transport(
            client=self.client, headers={**self.headers, **(headers or {})},
            params={**self.params, **(params or {})}, backoff=self.backoff, owns_client=False,
        )

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        idempotent: bool = True,
        retry: bool = True,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """The final answer (body read) after retrying transient failures; FetchError if none came."""
        params = list(params)
        attempt = 0
        while True:
            request = await self._build(method, url, params, headers, content, timeout)
            try:
                response = await self.client.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(exc, attempt, idempotent, retry)
            else:
                delay = self._status_delay(response, attempt, idempotent, retry)
                if delay is None:
                    return response
            attempt += 1
            await anyio.sleep(delay)

    @asynccontextmanager
    async def stream(
        self, url: str, *, params: Iterable[tuple[str, str]], headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A streaming GET (for SSE): retried until the answer's head is not transient, closed on exit."""
        params = list(params)
        attempt = 0
        while True:
            request = await self._build("GET", url, params, headers, None, LIVE_TIMEOUT)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = self._retry_delay(exc, attempt, True, True)
            else:
                delay = self._status_delay(response, attempt, True, True)
                if delay is None:
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
                await response.aclose()
            attempt += 1
            await anyio.sleep(delay)

    def _retry_delay(self, exc: httpx.TransportError, attempt: int, idempotent: bool, retry: bool) -> float:
        unsent = isinstance(exc, _UNSENT)
        if not (retry and retryable_failure(request_unsent=unsent, idempotent=idempotent) and self.backoff.may_retry(attempt)):
            url = str(exc.request.url) if _has_request(exc) else None
            raise FetchError(f"{type(exc).__name__}: {exc or 'connection failed'}", NETWORK, None, url=url) from exc
        return self.backoff.delay_s(attempt, random.random())

    def _status_delay(self, response: httpx.Response, attempt: int, idempotent: bool, retry: bool) -> float | None:
        status = response.status_code
        if not (retry and retryable_status(status, idempotent=idempotent) and self.backoff.may_retry(attempt)):
            return None
        now = _dt.datetime.now(_dt.timezone.utc)
        return self.backoff.delay_s(attempt, random.random(), parse_retry_after(response.headers.get("retry-after"), now))

    async def _build(
        self, method: str, url: str, params: list[tuple[str, str]], headers: Mapping[str, str] | None, content: Any, timeout: Any
    ) -> httpx.Request:
        base = httpx.URL(url)
        user = [(k, v) for k, v in (await _resolve(self.params)).items() if v is not None]
        target = base.copy_with(params=build_query(base.params.multi_items(), user, params))
        all_headers = {**(await _resolve(self.headers)), **(headers or {})}
        return self.client.build_request(method, target, headers=all_headers, content=content, timeout=timeout)


async def _resolve(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluates callable values (sync or async) now: they may hand out a fresh token per request."""
    out = {}
    for name, value in spec.items():
        if callable(value):
            value = value()
            if inspect.isawaitable(value):
                value = await value
        out[name] = value
    return out


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request
    except RuntimeError:
        return False
    return True


async def check(response: httpx.Response, op: str, url: str, *, seq_sent: bool = False) -> httpx.Response:
    """Returns a 2xx response; raises the client exception for anything else."""
    if response.is_success:
        return response
    body = await response.aread()
    raise error_for_response(op, response.status_code, response.headers, body, url, seq_sent=seq_sent)
