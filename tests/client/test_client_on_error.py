"""``on_error`` for readers (async and sync): asked about 401/403 and failures with no answer, may retry.

A MockTransport server accepts only a fresh token; the handler refreshes
it, the read goes on from where it was. Returning None raises the error;
other refusals (404) never reach the handler.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from client_harness import BASE
from trio_streams.client import Backoff, DurableStreamError, FetchError, RetryOpts, stream
from trio_streams.client import sync

URL = BASE + "guarded"
NO_RETRIES = Backoff(max_retries=0)


class Guarded:
    """A JSON stream of three messages, one per answer, behind a token; can drop connections first."""

    def __init__(self, *, refuse_after: int = 0, drops: int = 0, sse: bool = False) -> None:
        self.token = "fresh"
        self.refuse_after = refuse_after  # answers with the stale token before it goes stale
        self.drops = drops
        self.sse = sse
        self.seen: list[tuple[str | None, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        self.seen.append((auth, request.url.params.get("offset", "")))
        if self.drops:
            self.drops -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if auth != "Bearer fresh" and len(self.seen) > self.refuse_after:
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "token expired"}})
        if request.url.params.get("live") == "sse":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=(
                b'event: data\ndata:[2]\n\nevent: control\ndata:{"streamNextOffset":"3","streamClosed":true}\n\n'))
        offset = int(request.url.params.get("offset", "-1").replace("-1", "0"))
        headers = {"content-type": "application/json", "stream-next-offset": str(offset + 1)}
        if offset + 1 == 3:
            headers.update({"stream-up-to-date": "true", "stream-closed": "true"})
        elif offset + 1 == 2 and self.sse:
            headers["stream-up-to-date"] = "true"
        return httpx.Response(200, headers=headers, json=[offset])


def refresher(calls: list[DurableStreamError]) -> Any:
    def on_error(error: DurableStreamError) -> RetryOpts | None:
        calls.append(error)
        if error.status == 401:
            return RetryOpts(headers={"authorization": "Bearer fresh"})
        if isinstance(error, FetchError) and error.status is None:
            return RetryOpts()
        return None
    return on_error


async def test_async_reader_refreshes_its_token_mid_session_and_resumes() -> None:
    server, calls = Guarded(refuse_after=1), []
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handle))
    res = await stream(URL, live="long-poll", headers={"authorization": "Bearer stale"}, client=client,
                       on_error=refresher(calls))
    assert [item async for item in res.json_stream()] == [0, 1, 2]
    assert [e.code for e in calls] == ["UNAUTHORIZED"]
    assert server.seen[1:3] == [("Bearer stale", "1"), ("Bearer fresh", "1")]  # the same offset, retried


async def test_async_network_failures_and_sse_go_to_on_error_and_none_raises() -> None:
    server, calls = Guarded(drops=1, sse=True), []
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handle))
    res = await stream(URL, live="sse", client=client, backoff=NO_RETRIES, on_error=refresher(calls),
                       headers={"authorization": "Bearer fresh"})
    assert await res.json() == [0, 1] and [e.code for e in calls] == ["NETWORK"]
    refused: list[DurableStreamError] = []
    with pytest.raises(DurableStreamError) as info:
        await stream(URL, client=httpx.AsyncClient(transport=httpx.MockTransport(Guarded().handle)),
                     on_error=lambda e: refused.append(e))  # returns None: give up
    assert info.value.status == 401 and refused == [info.value]


def test_sync_reader_refreshes_its_token_when_its_sse_connection_is_refused() -> None:
    server, calls = Guarded(refuse_after=2, sse=True), []
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    res = sync.stream(URL, live="sse", headers={"authorization": "Bearer stale"}, client=client, on_error=refresher(calls))
    assert list(res.json_stream()) == [0, 1, 2] and res.closed
    assert [e.code for e in calls] == ["UNAUTHORIZED"]
    assert [auth for auth, _ in server.seen[2:]] == ["Bearer stale", "Bearer fresh"]  # the SSE request, retried


def test_sync_network_failure_retried_by_on_error_and_404_not_offered() -> None:
    server, calls = Guarded(drops=1), []
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    res = sync.stream(URL, client=client, backoff=NO_RETRIES, on_error=refresher(calls), headers={"authorization": "Bearer fresh"})
    assert res.json() == [0, 1, 2] and [e.code for e in calls] == ["NETWORK"]
    asked: list[DurableStreamError] = []
    missing = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    with pytest.raises(DurableStreamError) as info:
        sync.stream(URL, client=missing, on_error=lambda e: asked.append(e) or RetryOpts())
    assert info.value.code == "NOT_FOUND" and asked == []
