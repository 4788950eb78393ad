"""HTTP for the sync client: the async transport's rules on one httpx.Client.

Owns only the IO: sending with httpx's sync client, sleeping between
attempts with ``time.sleep``, resolving callable header and param values
(sync callables only: there is no event loop to run a coroutine on). Every
decision — what to retry, how long to wait, what ``on_error`` may repair —
is ``TransportCore``'s, shared with the async transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from ._transport import LIVE_TIMEOUT, REQUEST_TIMEOUT_S, HeadersSpec, ParamsSpec, TransportCore
from .errors import DurableStreamError, error_for_response


class SyncTransport(TransportCore[httpx.Client]):
    """Blocking requests to one server with shared headers, params and backoff."""

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
        return self._client

    def derive(self, *, headers: HeadersSpec | None = None, params: ParamsSpec | None = None) -> SyncTransport:
        return SyncTransport(client=self.client, **self._derived(headers, params))

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            client.close()

    def request(
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
            outcome = _send(self.client, self._build(method, url, params, headers, content, timeout), stream=False)
            delay = self._next_delay(outcome, attempt, idempotent, retry)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return outcome
            attempt += 1
            time.sleep(delay)

    def read(self, url: str, *, params: Iterable[tuple[str, str]], timeout: Any = httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
        """A checked GET of a reading session; failures go to ``on_error``, which may retry them."""
        params = list(params)
        while True:
            try:
                return check(self.request("GET", url, params=params, timeout=timeout), "read", url)
            except DurableStreamError as exc:
                self._on_error(exc)

    @contextmanager
    def stream(self, url: str, *, params: Iterable[tuple[str, str]]) -> Iterator[httpx.Response]:
        """A checked streaming GET (for SSE), retried until its head is not transient, closed on exit."""
        params = list(params)
        attempt = 0
        while True:
            outcome = _send(self.client, self._build("GET", url, params, None, None, LIVE_TIMEOUT), stream=True)
            try:
                delay = self._next_delay(outcome, attempt, True, True)
            except DurableStreamError as exc:
                self._on_error(exc)
                continue
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                try:
                    failure = _refusal(outcome, "read", url)
                    if failure is None:
                        yield outcome
                        return
                finally:
                    outcome.close()
                self._on_error(failure)
                continue
            if isinstance(outcome, httpx.Response):
                outcome.close()
            attempt += 1
            time.sleep(delay)

    def _on_error(self, exc: DurableStreamError) -> None:
        if not self._wants_on_error(exc):
            raise exc
        assert self.on_error is not None
        self._recover(exc, self.on_error(exc))

    def _build(
        self, method: str, url: str, params: list[tuple[str, str]], headers: Mapping[str, str] | None, content: Any, timeout: Any
    ) -> httpx.Request:
        target = self._target(url, params, _resolve(self.params))
        all_headers = {**_resolve(self.headers), **(headers or {})}
        return self.client.build_request(method, target, headers=all_headers, content=content, timeout=timeout)


def _send(client: httpx.Client, request: httpx.Request, *, stream: bool) -> httpx.Response | httpx.TransportError:
    try:
        return client.send(request, stream=stream)
    except httpx.TransportError as exc:
        return exc


def _resolve(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluates callable values now, once per attempt: they may hand out a fresh token per request."""
    out = {}
    for name, value in spec.items():
        if callable(value):
            value = value()
            if not isinstance(value, str):
                raise TypeError(f"a header or param provider for the sync client must return str, not {type(value).__name__}")
        out[name] = value
    return out


def _refusal(response: httpx.Response, op: str, url: str, *, seq_sent: bool = False) -> DurableStreamError | None:
    if response.is_success:
        return None
    return error_for_response(op, response.status_code, response.headers, response.read(), url, seq_sent=seq_sent)


def check(response: httpx.Response, op: str, url: str, *, seq_sent: bool = False) -> httpx.Response:
    """Returns a 2xx response; raises the client exception for anything else."""
    failure = _refusal(response, op, url, seq_sent=seq_sent)
    if failure is not None:
        raise failure
    return response
