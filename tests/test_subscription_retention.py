"""Subscriptions meet retention: a cursor the stream's trims have passed.

The server never moves such a cursor; a wake (claim answer, webhook body)
names the stream's earliest retained offset next to it. The rule is checked
on plain values, then over real HTTP on a `trio-streams serve` that trims in
1-byte steps: a pull-wake claim, a webhook delivery, and the documented
pull-wake worker (docs/subscriptions.md), which reports the gap and goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, deadline_poll
from test_subscription_e2e import (
    DEV_MODE, DONE, LONG_LEASE_MS, StopWorker, acked_all, deliveries, doc_example, get_sub, put_sub, recorder,
    sub_post,
)
from trio_streams.client.sync import TrimmedGap, stream
from trio_streams.protocol import subscriptions as S
from trio_streams.protocol.offsets import format_offset
from webhook_receiver import Reply, WebhookReceiver

BUDGET_BYTES = 64
EARLIEST = "trio-streams-earliest-offset"
RETAINED = {"content-type": "application/json", "trio-streams-retention-max-bytes": str(BUDGET_BYTES)}
JSON = {"content-type": "application/json"}
# More than half the budget each: a trim keeps the newest message only.
MESSAGES = [{"n": i, "pad": "x" * 40} for i in range(5)]


# -- the rule -------------------------------------------------------------------------------


def linked_sub(acked: int) -> S.Subscription:
    table = S.SubscriptionTable()
    config = S.SubscriptionConfig(type=S.PULL_WAKE, pattern=None, streams=("a",), webhook_url=None,
                                  wake_stream="wake", lease_ttl_ms=30_000, description=None)
    for event in S.decide_put(table, "sub", config, 0.0, 0, [], lambda _: acked, 10, "http://x/", None)[1]:
        table.apply(event)
    return table.by_id["sub"]


def test_a_view_names_the_earliest_offset_only_for_a_cursor_below_it() -> None:
    sub = linked_sub(acked=100)
    [below] = S.stream_views(sub, lambda _: 300, lambda _: 200)
    assert below["earliest_offset"] == format_offset(200)
    assert (below["acked_offset"], below["has_pending"]) == (format_offset(100), True)  # the cursor is not moved
    [at_head] = S.stream_views(sub, lambda _: 300, lambda _: 100)
    [no_heads] = S.stream_views(sub, lambda _: 300)
    assert "earliest_offset" not in at_head and "earliest_offset" not in no_heads


# -- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, env={**DEV_MODE, "TRIO_STREAMS_RETENTION_TRIM_STEP_BYTES": "1"}).start()
    try:
        yield server
    finally:
        server.kill_quietly()


def position(offset: str) -> int:
    return int(offset.rpartition("_")[2])


def create(srv: Server, path: str, headers: dict[str, str]) -> str:
    """Creates ``path`` holding MESSAGES[0]; returns the offset after it."""
    response = httpx.put(srv.stream_url(path), json=MESSAGES[0], headers=headers, timeout=5.0)
    assert response.status_code == 201, response.text
    return response.headers["stream-next-offset"]


def trim(srv: Server, path: str, below: str) -> tuple[str, str]:
    """Appends the other MESSAGES and waits until retention has trimmed past ``below`` and
    the stream is within its budget; returns (earliest offset, tail)."""
    url = srv.stream_url(path)
    for message in MESSAGES[1:]:
        assert httpx.post(url, json=message, timeout=5.0).status_code == 204
    tail = httpx.head(url, timeout=5.0).headers["stream-next-offset"]

    def settled() -> str | None:
        answer = httpx.get(url, params={"offset": below}, timeout=5.0)
        earliest = answer.headers.get(EARLIEST) if answer.status_code == 410 else None
        return earliest if earliest and position(tail) - position(earliest) <= BUDGET_BYTES else None

    return str(deadline_poll(settled, what=f"the trim of {path}")), tail


def pull_wake(srv: Server, sub_id: str) -> None:
    assert httpx.put(srv.stream_url(f"wake/{sub_id}"), headers=JSON, timeout=5.0).status_code == 201
    put_sub(srv, sub_id, {"type": "pull-wake", "pattern": "jobs/*", "wake_stream": f"wake/{sub_id}",
                          "lease_ttl_ms": LONG_LEASE_MS})


def test_a_claim_names_the_earliest_offset_of_a_trimmed_cursor_and_an_ack_moves_past_it(srv: Server) -> None:
    pull_wake(srv, "pull")
    create(srv, "jobs/trimmed", RETAINED)  # after the subscription: linked at its start
    create(srv, "jobs/kept", JSON)
    earliest, tail = trim(srv, "jobs/trimmed", format_offset(0))
    claim = sub_post(srv, "pull", "claim", {"worker": "w1"})
    assert claim.status_code == 200, claim.text
    work = claim.json()
    views = {view["path"]: view for view in work["streams"]}
    assert views["jobs/trimmed"]["acked_offset"] == format_offset(0)
    assert views["jobs/trimmed"]["earliest_offset"] == earliest
    assert "earliest_offset" not in views["jobs/kept"]
    with stream(srv.stream_url("jobs/trimmed"), offset=views["jobs/trimmed"]["earliest_offset"]) as res:
        assert res.json() == MESSAGES[-1:]
    acks = [{"stream": path, "offset": view["tail_offset"]} for path, view in views.items()]
    answer = sub_post(srv, "pull", "ack", {"wake_id": work["wake_id"], "generation": work["generation"],
                                           "acks": acks, "done": True}, work["token"])
    assert (answer.status_code, answer.json()) == (200, {"ok": True, "next_wake": False})
    links = {link["path"]: link["acked_offset"] for link in get_sub(srv, "pull")["streams"]}
    assert links["jobs/trimmed"] == tail


def test_a_webhook_wake_names_the_earliest_offset_of_a_trimmed_cursor(srv: Server) -> None:
    # The first delivery is held while the stream is trimmed, then fails: the retry is a
    # new wake, made after the trim.
    with WebhookReceiver(reply=Reply(status=500, hold=True)) as receiver:
        put_sub(srv, "hook", {"type": "webhook", "pattern": "jobs/*", "webhook": {"url": receiver.url()},
                              "lease_ttl_ms": LONG_LEASE_MS})
        create(srv, "jobs/hooked", RETAINED)
        [first] = deliveries(srv, receiver, 1)
        receiver.reply = DONE
        earliest, tail = trim(srv, "jobs/hooked", format_offset(0))
        receiver.release()
        _, retry = deliveries(srv, receiver, 2)
    [before] = first.json()["streams"]
    [after] = retry.json()["streams"]
    assert "earliest_offset" not in before
    assert (after["acked_offset"], after["earliest_offset"]) == (format_offset(0), earliest)
    deadline_poll(lambda: acked_all(srv, "hook", tail), what="the done answer's acks")


def test_the_documented_pull_wake_worker_reports_the_trimmed_gap_and_acks_past_it(srv: Server) -> None:
    example = doc_example("A pull-wake worker", srv)
    handled, lost = recorder(example, "handle"), recorder(example, "lost")
    pull_wake(srv, "jobs")
    create(srv, "jobs/1", RETAINED)
    earliest, tail = trim(srv, "jobs/1", format_offset(0))
    original = example["work_once"]

    def once_then_stop(worker: str) -> bool:
        assert original(worker)
        raise StopWorker

    example["work_once"] = once_then_stop
    with pytest.raises(StopWorker):
        example["run_worker"]("worker-1")
    assert lost == [("jobs/1", TrimmedGap(format_offset(0), earliest))]
    assert handled == [("jobs/1", MESSAGES[-1:])]
    assert acked_all(srv, "jobs", tail)
