"""Subscriptions end to end: a real ``trio-streams serve`` (webhook dev mode) delivering
to the real loopback receiver of webhook_receiver.py, across SIGTERM and kill -9
restarts and a key rotation. Every delivery's signature is checked against the JWKS
the server publishes at ``__ds/jwks.json``; the pull-wake worker reads its wake
stream with the project's client. The examples of docs/subscriptions.md run here too."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PREFIX, Server, deadline_poll
from trio_streams.client.sync import stream
from webhook_receiver import SIGNATURE, Received, Reply, WebhookReceiver, verify_signature

ROOT = Path(__file__).resolve().parent.parent
DEV_MODE = {"TRIO_STREAMS_WEBHOOK_DEV_MODE": "1"}
JSON = {"content-type": "application/json"}
# Long enough that no lease runs out while a test is still calling back.
LONG_LEASE_MS = 60_000
# The first retry is 1 s (±20 %), a restart a few more: far inside this.
DELIVERY_TIMEOUT_S = 20.0
DONE = Reply(body=b'{"done": true}')
CALL_BACK_LATER = Reply(body=b"{}")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, env=DEV_MODE).start()
    try:
        yield server
    finally:
        server.kill_quietly()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(reply=CALL_BACK_LATER) as hook:
        yield hook


def ds_url(srv: Server, tail: str) -> str:
    return f"{srv.url}{PREFIX}__ds/{tail}"


def jwks(srv: Server) -> dict[str, Any]:
    response = httpx.get(ds_url(srv, "jwks.json"), timeout=5.0)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def kid_of(request: Received) -> str:
    match = SIGNATURE.fullmatch(request.headers["webhook-signature"])
    assert match is not None, request.headers
    return match.group(2)


def deliveries(srv: Server, receiver: WebhookReceiver, count: int) -> list[Received]:
    """The first ``count`` deliveries, each signature verified against the server's JWKS now."""
    received = receiver.wait_for_requests(count, DELIVERY_TIMEOUT_S)
    keys = jwks(srv)
    for request in received:
        assert verify_signature(request.body, request.headers.get("webhook-signature"), keys), request.headers
    return received


def put_sub(srv: Server, sub_id: str, config: dict[str, Any]) -> None:
    response = httpx.put(ds_url(srv, f"subscriptions/{sub_id}"), json=config, timeout=5.0)
    assert response.status_code == 201, response.text


def get_sub(srv: Server, sub_id: str) -> dict[str, Any]:
    response = httpx.get(ds_url(srv, f"subscriptions/{sub_id}"), timeout=5.0)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def sub_post(srv: Server, sub_id: str, action: str, doc: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(ds_url(srv, f"subscriptions/{sub_id}/{action}"), json=doc, headers=headers, timeout=5.0)


def create_stream(srv: Server, path: str, body: bytes = b"") -> None:
    response = httpx.put(srv.stream_url(path), content=body, headers=JSON, timeout=5.0)
    assert response.status_code == 201, response.text


def append(srv: Server, path: str, body: bytes) -> str:
    response = httpx.post(srv.stream_url(path), content=body, headers=JSON, timeout=5.0)
    assert response.status_code in (200, 204), response.text
    return response.headers["stream-next-offset"]


def hook(receiver: WebhookReceiver, lease_ttl_ms: int = LONG_LEASE_MS) -> dict[str, Any]:
    return {"type": "webhook", "pattern": "events/*", "webhook": {"url": receiver.url()}, "lease_ttl_ms": lease_ttl_ms}


def acked_all(srv: Server, sub_id: str, tail: str) -> bool:
    doc = get_sub(srv, sub_id)
    return doc["status"] == "active" and all(link["acked_offset"] == tail for link in doc["streams"])


def done_ack(wake: dict[str, Any]) -> dict[str, Any]:
    return {"wake_id": wake["wake_id"], "generation": wake["generation"], "done": True,
            "acks": [{"stream": s["path"], "offset": s["tail_offset"]} for s in wake["streams"]]}


# -- webhooks -------------------------------------------------------------------------


def test_an_append_wakes_the_webhook_and_the_callback_acks_it_once(srv: Server, receiver: WebhookReceiver) -> None:
    create_stream(srv, "events/a", b'{"n":0}')
    put_sub(srv, "cb", hook(receiver))  # linked at the stream's tail: nothing pending yet
    tail = append(srv, "events/a", b'{"n":1}')
    [request] = deliveries(srv, receiver, 1)
    wake = request.json()
    assert (wake["subscription_id"], wake["callback_url"]) == ("cb", ds_url(srv, "subscriptions/cb/callback"))
    [link] = wake["streams"]
    assert (link["path"], link["tail_offset"], link["has_pending"]) == ("events/a", tail, True)
    answer = sub_post(srv, "cb", "callback", done_ack(wake), wake["callback_token"])
    assert (answer.status_code, answer.json()) == (200, {"ok": True, "next_wake": False})
    stale = sub_post(srv, "cb", "callback", done_ack(wake), wake["callback_token"])
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")
    assert acked_all(srv, "cb", tail)


def test_a_failing_receiver_is_retried_until_it_answers_done(srv: Server, receiver: WebhookReceiver) -> None:
    receiver.reply = Reply(status=500, body=b'{"oops": true}')
    put_sub(srv, "retry", hook(receiver))
    create_stream(srv, "events/r", b'{"n":1}')
    [first] = deliveries(srv, receiver, 1)
    deadline_poll(lambda: get_sub(srv, "retry")["status"] == "failed", what="status failed while retrying")
    assert get_sub(srv, "retry")["next_attempt_at"] is not None
    receiver.reply = DONE
    *_, retried = deliveries(srv, receiver, 2)
    assert retried.json()["generation"] > first.json()["generation"]
    tail = retried.json()["streams"][0]["tail_offset"]
    deadline_poll(lambda: acked_all(srv, "retry", tail), what="the retried wake acked")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_wake_in_flight_at_a_restart_wakes_again(srv: Server, receiver: WebhookReceiver, sig: int) -> None:
    put_sub(srv, "crash", hook(receiver, lease_ttl_ms=1000))
    create_stream(srv, "events/c", b'{"n":1}')
    [before] = deliveries(srv, receiver, 1)  # answered "will call back", which never comes
    srv.stop(sig)
    seen = len(receiver.received)  # the lease may have run out and woken again before the stop
    receiver.reply = DONE
    srv.start()
    # The lease of the wake in flight runs out after the restart: the work wakes again.
    after = deliveries(srv, receiver, seen + 1)[seen]
    assert after.json()["generation"] > before.json()["generation"]
    assert kid_of(after) == kid_of(before)
    stale = sub_post(srv, "crash", "callback", done_ack(before.json()), before.json()["callback_token"])
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")
    tail = after.json()["streams"][0]["tail_offset"]
    deadline_poll(lambda: acked_all(srv, "crash", tail), what="the re-woken work acked")


def test_an_append_answered_just_before_kill_9_is_delivered_and_acked(srv: Server, receiver: WebhookReceiver) -> None:
    receiver.reply = DONE
    create_stream(srv, "events/k9", b'{"n":0}')
    # The shortest lease: a wake decided but not yet delivered at the kill is delivered
    # again only once its lease has run out (a webhook wake in flight is not re-sent at start-up).
    put_sub(srv, "k9", hook(receiver, lease_ttl_ms=1000))
    tail = append(srv, "events/k9", b'{"n":1}')
    srv.restart(signal.SIGKILL)  # the delivery may or may not have happened before the kill
    deadline_poll(lambda: acked_all(srv, "k9", tail), DELIVERY_TIMEOUT_S, what="the appended data acked")
    delivered = deliveries(srv, receiver, len(receiver.received))
    assert delivered and all(r.json()["streams"][0]["tail_offset"] == tail for r in delivered)


def test_after_a_rotation_deliveries_carry_the_new_kid_and_both_verify(
        srv: Server, receiver: WebhookReceiver) -> None:
    receiver.reply = DONE
    put_sub(srv, "rot", hook(receiver))
    create_stream(srv, "events/k", b'{"n":1}')
    [old] = deliveries(srv, receiver, 1)
    tail = old.json()["streams"][0]["tail_offset"]
    deadline_poll(lambda: acked_all(srv, "rot", tail), what="the first wake acked")
    rotated = httpx.post(f"{srv.url}/admin/webhook-key/rotate", timeout=10.0)
    assert rotated.status_code == 200, rotated.text
    new_kid, old_kid = rotated.json()["kid"], rotated.json()["retired_kid"]
    assert old_kid == kid_of(old) != new_kid
    append(srv, "events/k", b'{"n":2}')
    _, new = deliveries(srv, receiver, 2)  # verifies the old and the new signature with the JWKS of now
    assert kid_of(new) == new_kid
    assert [k["kid"] for k in jwks(srv)["keys"]] == [new_kid, old_kid]


# -- pull-wake -----------------------------------------------------------------------


def test_a_pull_wake_worker_reads_the_wake_stream_claims_and_acks(srv: Server) -> None:
    create_stream(srv, "wake/pool", b"[]")
    put_sub(srv, "pull", {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool",
                          "lease_ttl_ms": LONG_LEASE_MS})
    create_stream(srv, "events/p", b'{"job":1}')
    with stream(srv.stream_url("wake/pool"), live="long-poll") as wakes:
        event = next(e for e in wakes.json_stream() if e["subscription_id"] == "pull")
    assert (event["type"], event["stream"], event["generation"]) == ("wake", "events/p", 1)
    claim = sub_post(srv, "pull", "claim", {"worker": "w1"})
    assert claim.status_code == 200, claim.text
    work = claim.json()
    [link] = work["streams"]
    with stream(srv.stream_url("events/p"), offset=link["acked_offset"]) as data:
        assert data.json() == [{"job": 1}]
        reached = data.offset
    ack = {"wake_id": work["wake_id"], "generation": work["generation"], "done": True,
           "acks": [{"stream": "events/p", "offset": reached}]}
    answer = sub_post(srv, "pull", "ack", ack, work["token"])
    assert (answer.status_code, answer.json()) == (200, {"ok": True, "next_wake": False})
    assert acked_all(srv, "pull", reached)
    stale = sub_post(srv, "pull", "ack", ack, work["token"])
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")


# -- the examples of docs/subscriptions.md -------------------------------------------


def doc_example(heading: str, srv: Server) -> dict[str, Any]:
    """The first Python block under ``heading`` in docs/subscriptions.md, run as a module
    (not as __main__) and pointed at ``srv``."""
    text = (ROOT / "docs" / "subscriptions.md").read_text()
    section = text[text.index(f"## {heading}\n"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(code[:code.index("```")], "docs/subscriptions.md", "exec"), namespace)  # noqa: S102 (our own docs)
    namespace["STREAMS"] = srv.url + PREFIX
    if "JWKS_URL" in namespace:
        namespace["JWKS_URL"] = ds_url(srv, "jwks.json")
    return namespace


def recorder(namespace: dict[str, Any], name: str) -> list[tuple[str, list[Any]]]:
    """Replaces the example's work function ``name`` by one that records what it was given."""
    seen: list[tuple[str, list[Any]]] = []
    namespace[name] = lambda path, messages: seen.append((path, messages))
    return seen


def test_the_documented_webhook_receiver_verifies_and_calls_back(srv: Server) -> None:
    example = doc_example("A webhook receiver", srv)
    processed = recorder(example, "process")
    receiver = example["ThreadingHTTPServer"](("127.0.0.1", 0), example["WakeHandler"])
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/wake"
        forged = httpx.post(url, content=b'{"subscription_id":"doc"}', timeout=5.0,
                            headers={"webhook-signature": f"t={int(time.time())},kid=ds_x,ed25519=AAAA"})
        assert forged.status_code == 401
        create_stream(srv, "events/doc", b'{"n":0}')
        put_sub(srv, "doc", {"type": "webhook", "pattern": "events/*", "webhook": {"url": url}})
        tail = append(srv, "events/doc", b'{"n":1}')
        deadline_poll(lambda: processed, DELIVERY_TIMEOUT_S, what="the example's work")
        assert processed == [("events/doc", [{"n": 1}])]
        deadline_poll(lambda: acked_all(srv, "doc", tail), what="the example's callback")
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_the_documented_pull_wake_worker_claims_and_acks(srv: Server) -> None:
    example = doc_example("A pull-wake worker", srv)
    handled = recorder(example, "handle")
    create_stream(srv, "wake/jobs", b"[]")
    put_sub(srv, "jobs", {"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/jobs"})
    create_stream(srv, "jobs/1", b'{"job":1}')
    original, outcomes = example["work_once"], []

    def once_then_stop(worker: str) -> bool:
        outcomes.append(original(worker))
        raise StopWorker  # run_worker follows the wake stream for ever: leave after the first wake

    example["work_once"] = once_then_stop
    with pytest.raises(StopWorker):
        example["run_worker"]("worker-1")
    assert outcomes == [True]
    assert handled == [("jobs/1", [{"job": 1}])]
    tail = httpx.head(srv.stream_url("jobs/1"), timeout=5.0).headers["stream-next-offset"]
    assert acked_all(srv, "jobs", tail)


class StopWorker(Exception):
    pass
