"""HTTP for the async client: one httpx.AsyncClient, per-request headers, retries.

Owns: the httpx client (made here unless the caller passes one; only a
client made here is closed here); resolving header and query values that
are callables, once per attempt, so a token provider can refresh; the retry
loop with its backoff sleeps; ``on_error`` (a reader's last word on a
failure: new headers or params and try again, or give up); and turning a
final non-2xx answer into the exception ``errors.error_for_response`` names.

Everything but the IO itself lives in ``TransportCore``, which the sync
client's transport (``_sync_transport.py``) shares.

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
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

import anyio
import httpx

from ._protocol import Backoff, build_query, calls_on_error, parse_retry_after, retryable_failure, retryable_status
from .errors import NETWORK, DurableStreamError, FetchError, error_for_response

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


@dataclass(frozen=True)
class RetryOpts:
    """What an ``on_error`` handler returns to try again: headers and params merged over the current ones."""

    headers: HeadersSpec | None = None
    params: ParamsSpec | None = None


OnErrorResult = Union[RetryOpts, None]
OnError = Callable[[DurableStreamError], Union[OnErrorResult, Awaitable[OnErrorResult]]]
ClientT = TypeVar("ClientT", httpx.AsyncClient, httpx.Client)


class TransportCore(Generic[ClientT]):
    """Shared headers, params, backoff and ``on_error`` for requests to one server; no IO."""

    def __init__(
        self,
        *,
        client: ClientT | None = None,
        headers: HeadersSpec | None = None,
        params: ParamsSpec | None = None,
        backoff: Backoff | None = None,
        owns_client: bool | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self._client: ClientT | None = client
        self._owns_client = client is None if owns_client is None else owns_client
        self.headers: dict[str, HeaderValue] = dict(headers or {})
        self.params: dict[str, HeaderValue | None] = dict(params or {})
        self.backoff = backoff or Backoff()
        self.on_error = on_error
        build_query((), ((k, "") for k in self.params), ())  # reject reserved names now, not on first use

    def _derived(self, headers: HeadersSpec | None, params: ParamsSpec | None) -> dict[str, Any]:
        """Arguments for a transport on the same client (not owning it) with extra headers and params layered on."""
        return {
            "headers": {**self.headers, **(headers or {})}, "params": {**self.params, **(params or {})},
            "backoff": self.backoff, "owns_client": False, "on_error": self.on_error,
        }

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

    def _next_delay(self, outcome: httpx.Response | httpx.TransportError, attempt: int, idempotent: bool, retry: bool) -> float | None:
        """None: ``outcome`` is the final answer. Else the pause before the next attempt; raises if none is allowed."""
        if isinstance(outcome, httpx.Response):
            return self._status_delay(outcome, attempt, idempotent, retry)
        return self._retry_delay(outcome, attempt, idempotent, retry)

    def _target(self, url: str, protocol_params: Iterable[tuple[str, str]], user_params: Mapping[str, Any]) -> httpx.URL:
        base = httpx.URL(url)
        user = [(k, v) for k, v in user_params.items() if v is not None]
        return base.copy_with(params=build_query(base.params.multi_items(), user, protocol_params))

    def _recover(self, exc: DurableStreamError, opts: object) -> None:
        """Applies an ``on_error`` answer (retry with these headers/params), or re-raises ``exc`` if it said stop."""
        if opts is None:
            raise exc
        if not isinstance(opts, RetryOpts):
            raise TypeError(f"on_error must return RetryOpts or None, not {type(opts).__name__}") from exc
        self.headers.update(opts.headers or {})
        self.params.update(opts.params or {})
        build_query((), ((k, "") for k in self.params), ())

    def _wants_on_error(self, exc: DurableStreamError) -> bool:
        return self.on_error is not None and calls_on_error(exc.status, network=isinstance(exc, FetchError))


class Transport(TransportCore[httpx.AsyncClient]):
    """Async requests to one server with shared headers, params and backoff."""

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
        return self._client

    def derive(self, *, headers: HeadersSpec | None = None, params: ParamsSpec | None = None) -> Transport:
        return Transport(client=self.client, **self._derived(headers, params))

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
            outcome = await _send(self.client, request, stream=False)
            delay = self._next_delay(outcome, attempt, idempotent, retry)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return outcome
            attempt += 1
            await anyio.sleep(delay)

    async def read(self, url: str, *, params: Iterable[tuple[str, str]], timeout: Any = httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
        """A checked GET of a reading session; failures go to ``on_error``, which may retry them."""
        params = list(params)
        while True:
            try:
                return await check(await self.request("GET", url, params=params, timeout=timeout), "read", url)
            except DurableStreamError as exc:
                await self._on_error(exc)

    @asynccontextmanager
    async def stream(self, url: str, *, params: Iterable[tuple[str, str]]) -> AsyncIterator[httpx.Response]:
        """A checked streaming GET (for SSE), retried until its head is not transient, closed on exit."""
        params = list(params)
        attempt = 0
        while True:
            request = await self._build("GET", url, params, None, None, LIVE_TIMEOUT)
            outcome = await _send(self.client, request, stream=True)
            try:
                delay = self._next_delay(outcome, attempt, True, True)
            except DurableStreamError as exc:
                await self._on_error(exc)
                continue
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                try:
                    failure = await _refusal(outcome, "read", url)
                    if failure is None:
                        yield outcome
                        return
                finally:
                    await outcome.aclose()
                await self._on_error(failure)
                continue
            if isinstance(outcome, httpx.Response):
                await outcome.aclose()
            attempt += 1
            await anyio.sleep(delay)

    async def _on_error(self, exc: DurableStreamError) -> None:
        if not self._wants_on_error(exc):
            raise exc
        assert self.on_error is not None
        opts = self.on_error(exc)
        if inspect.isawaitable(opts):
            opts = await opts
        self._recover(exc, opts)

    async def _build(
        self, method: str, url: str, params: list[tuple[str, str]], headers: Mapping[str, str] | None, content: Any, timeout: Any
    ) -> httpx.Request:
        target = self._target(url, params, await _resolve(self.params))
        all_headers = {**(await _resolve(self.headers)), **(headers or {})}
        return self.client.build_request(method, target, headers=all_headers, content=content, timeout=timeout)


async def _send(client: httpx.AsyncClient, request: httpx.Request, *, stream: bool) -> httpx.Response | httpx.TransportError:
    try:
        return await client.send(request, stream=stream)
    except httpx.TransportError as exc:
        return exc


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


async def _refusal(response: httpx.Response, op: str, url: str, *, seq_sent: bool = False) -> DurableStreamError | None:
    if response.is_success:
        return None
    body = await response.aread()
    return error_for_response(op, response.status_code, response.headers, body, url, seq_sent=seq_sent)


async def check(response: httpx.Response, op: str, url: str, *, seq_sent: bool = False) -> httpx.Response:
    """Returns a 2xx response; raises the client exception for anything else."""
    failure = await _refusal(response, op, url, seq_sent=seq_sent)
    if failure is not None:
        raise failure
    return response
