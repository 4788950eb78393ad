"""/metrics: the Prometheus exposition moves with what clients do.

A real server (process metrics, Hypercorn's guard, worker threads) is driven
through appends, a catch-up read, a long-poll and an SSE session; the
exposition must parse with prometheus-client's own parser, every family
must carry HELP and TYPE, counters must end in ``_total``, labels must stay
bounded (no stream path), and each series must have moved by what was done.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import PREFIX, Server, deadline_poll, free_port, offset_of, parse_metrics, serving, unique
from trio_streams.config import Settings
from trio_streams.http.app import App

JSON = "application/json"
LIVE_WAIT_MS = 30_000  # long enough that a long-poll only returns because of the append


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A checkpoint after every batch, so the checkpoint series move too.
    yield from serving(tmp_path_factory.mktemp("metrics"), ["--long-poll-timeout-ms", str(LIVE_WAIT_MS)],
                       env={"TRIO_STREAMS_CHECKPOINT_WAL_BYTES": "1"})


def scrape(srv: Server) -> str:
    resp = httpx.get(f"{srv.url}/metrics", timeout=5.0)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.text


def moved(before: dict[str, float], after: dict[str, float], series: str) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


def live_readers(srv: Server, mode: str) -> float:
    return srv.metrics()[f'trio_streams_live_readers{{mode="{mode}"}}']


def drive(srv: Server, name: str) -> None:
    """Create with 2 messages, append 3, read, long-poll woken by an append of 1, one SSE session."""
    url = srv.stream_url(name)
    with httpx.Client(timeout=10.0) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert client.put(url, content=b"[1,2]", headers={"content-type": JSON}).status_code == 201
        tail = offset_of(client.post(url, content=b"[3,4,5]", headers={"content-type": JSON}))
        assert client.get(url, params={"offset": "-1"}).status_code == 200
        poll = pool.submit(client.get, url, params={"offset": tail, "live": "long-poll"})
        deadline_poll(lambda: live_readers(srv, "long_poll") == 1, what="a parked long-poll")
        assert client.post(url, content=b"[6]", headers={"content-type": JSON}).status_code == 204
        assert poll.result(timeout=10).status_code == 200
        with client.stream("GET", url, params={"offset": "-1", "live": "sse"}) as sse:
            assert sse.status_code == 200
            lines = sse.iter_lines()  # kept: a collected iterator closes the response
            assert next(lines) == "event: data"
            assert live_readers(srv, "sse") == 1
    deadline_poll(lambda: live_readers(srv, "sse") == 0 and live_readers(srv, "long_poll") == 0,
                  what="live readers gone")


def test_exposition_is_well_formed_and_moves_with_traffic(srv: Server) -> None:
    name = unique("metrics")
    before = parse_metrics(scrape(srv))
    drive(srv, name)
    text = scrape(srv)
    after = parse_metrics(text)

    families = list(text_string_to_metric_families(text))
    assert len(families) > 30
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.MULTILINE))
    types = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    for family in families:
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    assert helps == types
    assert name not in text and PREFIX not in text  # no stream path is ever a label

    requests = 'trio_streams_http_requests_total{kind="%s",method="%s",status="%s"}'
    assert moved(before, after, requests % ("create", "PUT", "201")) == 1
    assert moved(before, after, requests % ("append", "POST", "204")) == 2
    assert moved(before, after, requests % ("catch_up", "GET", "200")) == 1
    assert moved(before, after, requests % ("long_poll", "GET", "200")) == 1
    assert moved(before, after, requests % ("sse", "GET", "200")) == 1
    for kind in ("create", "append", "catch_up", "long_poll", "sse"):
        assert moved(before, after, f'trio_streams_http_request_duration_seconds_count{{kind="{kind}"}}') == 1 + (kind == "append")
    assert moved(before, after, 'trio_streams_http_request_bytes_total{kind="append"}') == len(b"[3,4,5]") + len(b"[6]")
    assert moved(before, after, 'trio_streams_http_request_bytes_total{kind="create"}') == len(b"[1,2]")
    assert moved(before, after, 'trio_streams_http_response_bytes_total{kind="catch_up"}') > 0
    assert moved(before, after, 'trio_streams_http_response_bytes_total{kind="sse"}') > 0

    assert moved(before, after, "trio_streams_appends_total") == 2
    assert moved(before, after, "trio_streams_messages_appended_total") == 6
    assert moved(before, after, "trio_streams_log_events_total") == 3
    assert moved(before, after, "trio_streams_log_batch_events_count") == moved(before, after, "trio_streams_log_batches_total") >= 1
    assert moved(before, after, "trio_streams_log_fsync_duration_seconds_count") >= 3
    assert moved(before, after, "trio_streams_checkpoint_duration_seconds_count") >= 1
    assert moved(before, after, "trio_streams_checkpoints_total") >= 1
    assert after["trio_streams_last_checkpoint_timestamp_seconds"] > 0
    assert after["trio_streams_wal_end_position_bytes"] > before.get("trio_streams_wal_end_position_bytes", 0)
    assert after["trio_streams_wal_bytes"] >= 0
    assert after["trio_streams_streams"] >= 1 and after["trio_streams_actors"] >= 1
    assert after["trio_streams_recovery_duration_seconds"] >= 0
    assert after["trio_streams_ready"] == 1 and after["trio_streams_recovering"] == 0
    assert after['trio_streams_storage_state{state="ok"}'] == 1
    assert after["trio_streams_connections_open"] >= 1
    assert after["process_resident_memory_bytes"] > 0 and after["process_open_fds"] > 0


def test_methods_outside_the_known_set_share_one_label(srv: Server) -> None:
    before = srv.metrics()
    for method in ("BREW", "PROPFIND"):
        assert httpx.request(method, srv.stream_url("x"), timeout=5.0).status_code == 405
    after = srv.metrics()
    assert moved(before, after, 'trio_streams_http_requests_total{kind="other",method="OTHER",status="405"}') == 2
    assert "BREW" not in scrape(srv)


@pytest.fixture
def split_ports(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    metrics_port = free_port()
    for srv in serving(tmp_path, ["--metrics-port", str(metrics_port)]):
        yield srv, metrics_port


def test_metrics_port_serves_operations_only(split_ports: tuple[Server, int]) -> None:
    srv, metrics_port = split_ports
    ops = f"http://127.0.0.1:{metrics_port}"
    assert httpx.put(srv.stream_url("s"), timeout=5.0).status_code == 201
    assert httpx.get(f"{srv.url}/metrics", timeout=5.0).status_code == 404
    assert "trio_streams_http_requests_total" in httpx.get(f"{ops}/metrics", timeout=5.0).text
    for base in (srv.url, ops):
        for path in ("/healthz", "/healthz/live", "/healthz/ready"):
            assert httpx.get(f"{base}{path}", timeout=5.0).status_code == 200, (base, path)
    assert httpx.get(f"{ops}{PREFIX}s", params={"offset": "-1"}, timeout=5.0).status_code == 404
    assert httpx.put(f"{ops}{PREFIX}t", timeout=5.0).status_code == 404
    assert httpx.get(srv.stream_url("s"), params={"offset": "-1"}, timeout=5.0).status_code == 200


def test_metrics_port_is_validated() -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Settings(port=4437, metrics_port=4437)
    with pytest.raises(ValueError, match="metrics_port"):
        Settings(metrics_port=70000)


def test_every_app_has_its_own_registry(tmp_path: Path) -> None:
    """Two apps in one process: neither collides with the other's series nor counts its requests."""
    first = App(Settings(data_dir=str(tmp_path / "a")))
    second = App(Settings(data_dir=str(tmp_path / "b")))
    first.metrics.requests.labels("GET", "catch_up", "200").inc()
    assert first.metrics.registry is not second.metrics.registry
    assert b'trio_streams_http_requests_total{kind="catch_up",method="GET",status="200"} 1.0' in first.metrics.render()
    assert b"trio_streams_http_requests_total{" not in second.metrics.render()
