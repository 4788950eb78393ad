"""The in-process harness itself (tests/inproc.py): it must catch ASGI misuse and model time honestly.

Tiny stand-in apps break one ASGI rule each; the harness must fail the
request. The last tests run the real App under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from conftest import PREFIX, offset_of
from inproc import AsgiViolation, InprocClient, inline_worker_threads

Message = dict[str, Any]
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
END = {"type": "http.response.body", "body": b"", "more_body": False}
TEXT = {"content-type": "text/plain"}


def app_sending(*messages: Message) -> Callable[..., Awaitable[None]]:
    async def app(scope: Message, receive: Any, send: Any) -> None:
        for message in messages:
            try:
                await send(message)
            except AsgiViolation:
                pass  # as the real App's error boundary would: the harness must still fail the request
    return app


@pytest.mark.parametrize("messages, problem", [
    ([{"type": "http.response.body", "body": b"x", "more_body": False}], "before http.response.start"),
    ([START, START, END], "second http.response.start"),
    ([START, END, {"type": "http.response.body", "body": b"late", "more_body": False}], "after more_body: False"),
    ([START, {"type": "http.response.body", "body": "text", "more_body": False}], "not bytes"),
    ([START], "without completing"),
    ([], "none started"),
    ([{"type": "http.response.start", "status": 204, "headers": []},
      {"type": "http.response.body", "body": b"x", "more_body": False}], "body bytes on a GET 204"),
    ([{"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]},
      {"type": "http.response.body", "body": b"ab", "more_body": False}], "against Content-Length 3"),
    ([{"type": "http.response.start", "status": 200, "headers": [(b"Content-Type", b"x")]}, END], "not lower-case"),
    ([{"type": "http.response.start", "status": 99, "headers": []}, END], "bad status"),
], ids=["body-first", "two-starts", "body-after-end", "str-body", "unfinished", "nothing", "body-on-204",
        "short-content-length", "upper-case-header", "bad-status"])
async def test_asgi_violations_fail_the_request(messages: list[Message], problem: str) -> None:
    with pytest.raises(AsgiViolation, match=problem):
        await InprocClient(app_sending(*messages), "127.0.0.1:4437").get("/x")


async def test_head_response_with_body_fails() -> None:
    app = app_sending(START, {"type": "http.response.body", "body": b"x", "more_body": False})
    with pytest.raises(AsgiViolation, match="on a HEAD 200"):
        await InprocClient(app, "127.0.0.1:4437").head("/x")


async def test_a_correct_response_passes_and_the_request_arrives_as_hypercorn_sends_it() -> None:
    seen: list[Any] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        seen.append(scope)
        while True:
            message = await receive()
            seen.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        await send({"type": "http.response.body", "body": b"k", "more_body": False})

    client = InprocClient(app, "127.0.0.1:4437")
    resp = await client.post("/v1/stream/a%ffb", params={"offset": "-1"}, headers={"X-Thing": "é"},
                             content=iter([b"ab", b"c"]))
    assert (resp.status_code, resp.content, resp.headers["Content-Length"]) == (200, b"ok", "2")
    scope = seen[0]
    assert scope["raw_path"] == b"/v1/stream/a%ffb" and scope["query_string"] == b"offset=-1"
    assert scope["path"] == "/v1/stream/a\ufffdb"
    assert (b"host", b"127.0.0.1:4437") in scope["headers"]
    assert (b"x-thing", "é".encode()) in scope["headers"]
    assert (b"transfer-encoding", b"chunked") in scope["headers"]
    assert [(m["body"], m["more_body"]) for m in seen[1:]] == [(b"ab", True), (b"c", True), (b"", False)]


async def test_streaming_disconnect_reaches_the_app() -> None:
    events: list[str] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        events.append((await receive())["type"])

    async with InprocClient(app, "127.0.0.1:4437").stream("GET", "/live") as resp:
        assert resp.status_code == 200
        assert await resp.receive_piece() == b"first"
        await resp.disconnect()
        assert resp.app_done.is_set()
    assert events == ["http.disconnect"]


async def test_inline_worker_threads_run_on_the_loop_and_restore_trio() -> None:
    original = trio.to_thread.run_sync
    with inline_worker_threads():
        assert await trio.to_thread.run_sync(trio.lowlevel.current_task) is trio.lowlevel.current_task()
    assert trio.to_thread.run_sync is original


# -- the real App under the autojump clock ------------------------------------------------


@pytest.fixture
def inproc_settings() -> dict[str, object]:
    return {"long_poll_timeout_ms": 30_000}


async def test_autojump_long_poll_timeout_takes_exactly_its_virtual_time(inproc: Any, autojump_clock: Any) -> None:
    tail = offset_of(await inproc.client.put(PREFIX + "a", content=b"abc", headers=TEXT))
    started = trio.current_time()
    resp = await inproc.client.get(PREFIX + "a", params={"offset": tail, "live": "long-poll"})
    assert resp.status_code == 204
    assert trio.current_time() - started == pytest.approx(30.0)


async def long_poll_parked(inproc: Any, then: Callable[[list[Any]], Awaitable[None]]) -> Any:
    """A long-poll at the tail of a new stream; ``then(answers)`` runs once it is parked. Returns its response."""
    tail = offset_of(await inproc.client.put(PREFIX + "a", content=b"abc", headers=TEXT))
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        async def poll() -> None:
            got.append(await inproc.client.get(PREFIX + "a", params={"offset": tail, "live": "long-poll"}))
        nursery.start_soon(poll)
        await inproc.wait_subscribers(lambda n: n == 1, "the long-poll to park")
        await then(got)
    return got[0]


async def test_autojump_append_wakes_a_long_poll_before_its_timeout(inproc: Any, autojump_clock: Any) -> None:
    """With real worker threads the clock would leap 30 s while the append's WAL write ran."""
    started = []

    async def append(_: list[Any]) -> None:
        started.append(trio.current_time())
        assert (await inproc.client.post(PREFIX + "a", content=b"d", headers=TEXT)).status_code == 204

    resp = await long_poll_parked(inproc, append)
    assert (resp.status_code, resp.content) == (200, b"d")
    assert trio.current_time() - started[0] < 30.0


async def test_manual_mock_clock_holds_a_long_poll_until_the_test_jumps_it(inproc: Any, mock_clock: Any) -> None:
    async def jump(got: list[Any]) -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert got == [], "answered although no time passed"
        mock_clock.jump(30.0)

    assert (await long_poll_parked(inproc, jump)).status_code == 204
