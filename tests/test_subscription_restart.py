"""Subscriptions survive restarts of a real server exactly like stream data:
after SIGTERM (final checkpoint) and kill -9 (WAL replay) every subscription,
link, cursor, generation and tombstone is what it was when acknowledged."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, deadline_poll, serving

JSON = {"content-type": "application/json"}


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path, [])


def sub_url(srv: Server, sub_id: str, rest: str = "") -> str:
    return srv.stream_url(f"__ds/subscriptions/{sub_id}{rest}")


def put(srv: Server, path: str, body: bytes) -> None:
    response = httpx.put(srv.stream_url(path), content=body, headers=JSON)
    assert response.status_code == 201, response.text


def state(srv: Server) -> dict[str, Any]:
    kept = httpx.get(sub_url(srv, "p1"))
    assert kept.status_code == 200, kept.text
    return {"p1": kept.json(), "p2": httpx.get(sub_url(srv, "p2")).status_code}


def wake_generations(srv: Server) -> list[int]:
    events = httpx.get(srv.stream_url("wake/pool"), params={"offset": "-1"}).json()
    return [e["generation"] for e in events if e["subscription_id"] == "p1"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_subscription_state_after_a_restart_equals_the_state_before(srv: Server, sig: int) -> None:
    put(srv, "wake/pool", b"[]")
    put(srv, "events/old", b'{"n":1}')
    config = b'{"type":"pull-wake","pattern":"events/*","streams":["manual/x","events/old"],"wake_stream":"wake/pool"}'
    assert httpx.put(sub_url(srv, "p1"), content=config, headers=JSON).status_code == 201
    other = b'{"type":"pull-wake","streams":["events/old"],"wake_stream":"wake/pool"}'
    assert httpx.put(sub_url(srv, "p2"), content=other, headers=JSON).status_code == 201
    assert httpx.delete(sub_url(srv, "p2")).status_code == 204
    assert httpx.post(sub_url(srv, "p1", "/streams"), content=b'{"streams":["manual/y"]}', headers=JSON).status_code == 204
    assert httpx.delete(sub_url(srv, "p1", "/streams/events%2Fold")).status_code == 204
    put(srv, "events/new", b'{"n":2}')  # linked at its start: its data wakes p1
    deadline_poll(lambda: wake_generations(srv) == [1], what="the wake event")
    before = state(srv)
    assert before["p2"] == 404 and before["p1"]["generation"] == 1
    links = {s["path"]: (s["link_type"], s["acked_offset"]) for s in before["p1"]["streams"]}
    assert set(links) == {"events/old", "events/new", "manual/x", "manual/y"}
    assert links["events/old"][0] == "glob" and links["events/new"][1] == "0000000000000000_0000000000000000"

    srv.restart(sig)
    assert state(srv) == before
    # The unclaimed wake is announced again (at-least-once), in the same generation.
    deadline_poll(lambda: wake_generations(srv)[-1:] == [1], what="the wake event")
    assert set(wake_generations(srv)) == {1}
    # A re-created p2 continues above the deleted one's generation.
    assert httpx.put(sub_url(srv, "p2"), content=other, headers=JSON).status_code == 201
    assert httpx.get(sub_url(srv, "p2")).json()["generation"] == 0


def test_a_data_dir_without_subscriptions_still_loads(tmp_path: Path) -> None:
    """A checkpoint and WAL written with no subscription at all restart into an empty table."""
    srv = Server(tmp_path / "data")
    srv.data_dir.mkdir()
    try:
        srv.start()
        put(srv, "plain", b'{"n":1}')
        srv.restart(signal.SIGTERM)
        assert httpx.get(srv.stream_url("plain"), params={"offset": "-1"}).json() == [{"n": 1}]
        assert httpx.get(sub_url(srv, "any")).status_code == 404
        srv.stop()
    finally:
        srv.kill_quietly()
