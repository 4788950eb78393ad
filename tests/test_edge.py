"""deploy/nginx/edge.conf with a real nginx in front of a real server.

Fast (in ``make test``, well under a minute): nginx accepts the shipped files;
a complete chunk is served from the cache (the origin sees one read); a chunk
at an open stream's tail is never served as if it were the whole tail;
ETag/304, Stream-Closed and Stream-Up-To-Date come through the cache as the
origin said them; 1,100 identical long-polls on one stream cost the origin
one request for an append and all get the data; SSE events pass
unbuffered; an authenticated answer never reaches another token; a write
flood from one client gets 429 with Retry-After while other clients write.

Slow (``make test-all``, about 80 s): the official conformance suite through
the edge (scripts/conformance_edge.py; also ``make conformance-edge``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, SseReader, Server, deadline_poll, free_port, is_control, serving, unique
from nginxproc import EDGE, EDGE_SNIPPET, check_config, edge_http, main_config, nginx_exe  # noqa: F401 - a fixture
from nginxproc import requests_in_progress, running
from pollers import Pollers
from serverproc import raise_nofile_limit

TEXT = {"Content-Type": "text/plain"}
# Long-polls wait this long at the origin: far longer than an answer to an append takes.
ORIGIN_LONG_POLL_S = 20.0
# Identical long-polls parked on one stream: over 1,024, since nginx counts a key's lookups
# in 10 bits and, unless told otherwise, sent every 1,024th waiter upstream on its own.
READERS = 1100
NGINX_CONNECTIONS = 4096
PROXY_CHECKS_S = 30.0
# The flood test's nginx admits this many writes a second per client (besides the shipped burst).
FLOOD_RATE_PER_S = 1
FLOOD_WRITES = 300
DISGUISED_WRITES = 5
READER_TOKEN, OTHER_TOKEN, WRITER_TOKEN = "edge-reader-a-token", "edge-reader-b-token", "edge-writer-token"


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("origin"), ["--long-poll-timeout-ms", str(int(ORIGIN_LONG_POLL_S * 1000))])


class Edge:
    def __init__(self, url: str, port: int, status_port: int) -> None:
        self.url, self.port, self.status_port = url, port, status_port


def start_edge(exe: str, root: Path, origin: Server, **edge_options: int) -> Iterator[Edge]:
    port, status_port = free_port(), free_port()
    http = edge_http(root, origin.port, port, status_port=status_port, **edge_options)
    conf = main_config(root, http, worker_connections=NGINX_CONNECTIONS, nofile=2 * NGINX_CONNECTIONS)
    with running(exe, conf, root, f"http://127.0.0.1:{port}") as url:
        yield Edge(url, port, status_port)


@pytest.fixture(scope="module")
def edge(nginx_exe: str, origin: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    yield from start_edge(nginx_exe, tmp_path_factory.mktemp("edge"), origin)


def origin_requests(origin: Server, kind: str) -> int:
    """Requests of one route kind the origin has answered (trio_streams_http_requests_total)."""
    return int(sum(value for series, value in origin.metrics().items()
                   if series.startswith("trio_streams_http_requests_total{") and f'kind="{kind}"' in series))


def new_stream(origin: Server, body: bytes = b"", *, closed: bool = False) -> str:
    """A text stream created directly at the origin; its path."""
    path = f"/v1/stream/{unique()}"
    headers = TEXT | ({"Stream-Closed": "true"} if closed else {})
    assert httpx.put(origin.url + path, headers=headers, content=body, timeout=10).status_code == 201
    return path


def append(origin: Server, path: str, body: bytes) -> None:
    assert httpx.post(origin.url + path, headers=TEXT, content=body, timeout=10).status_code == 204


# -- the configuration ------------------------------------------------------------


def test_nginx_accepts_the_edge_configuration(nginx_exe: str, tmp_path: Path) -> None:
    conf = main_config(tmp_path, edge_http(tmp_path, free_port(), free_port()))
    done = check_config(nginx_exe, conf, tmp_path)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr


def test_the_edge_waits_longer_than_the_longest_silent_response_and_the_longest_long_poll() -> None:
    """Server defaults: long-poll 30 s, SSE connection 60 s. A lock given up before the
    long-poll's end would send every waiter upstream at once."""
    text = EDGE_SNIPPET.read_text()

    def seconds(directive: str) -> float:
        found = re.search(rf"^\s*{directive}\s+(\d+)s;", text, re.M)
        assert found, directive
        return float(found.group(1))

    assert seconds("proxy_read_timeout") > 60
    assert min(seconds("proxy_cache_lock_timeout"), seconds("proxy_cache_lock_age")) > 30
    assert "limit_req_status 429;" in text and "Retry-After" in text
    assert "proxy_cache_path" in EDGE.read_text()


# -- catch-up reads through the cache ----------------------------------------------


def test_a_complete_chunk_is_served_from_the_cache_with_its_headers(edge: Edge, origin: Server) -> None:
    path = new_stream(origin, b"all of it", closed=True)
    before = origin_requests(origin, "catch_up")
    first = httpx.get(edge.url + path, params={"offset": "-1"}, timeout=10)
    again = httpx.get(edge.url + path, params={"offset": "-1"}, timeout=10)
    assert origin_requests(origin, "catch_up") - before == 1
    assert (first.headers["x-cache-status"], again.headers["x-cache-status"]) == ("MISS", "HIT")
    for read in (first, again):
        assert (read.status_code, read.content) == (200, b"all of it")
        assert read.headers["stream-closed"] == "true" and read.headers["stream-up-to-date"] == "true"
        assert read.headers["etag"] == first.headers["etag"]
        assert read.headers["stream-next-offset"] == first.headers["stream-next-offset"]
    # The cache answers a client that holds it with 304 itself.
    held = httpx.get(edge.url + path, params={"offset": "-1"}, headers={"If-None-Match": first.headers["etag"]},
                     timeout=10)
    assert (held.status_code, held.content) == (304, b"")
    assert origin_requests(origin, "catch_up") - before == 1
    # The closure signal at the final offset is never cached, and always there.
    end = httpx.get(edge.url + path, params={"offset": first.headers["stream-next-offset"]}, timeout=10)
    assert (end.status_code, end.content, end.headers["stream-closed"]) == (200, b"", "true")


def test_a_tail_chunk_is_never_served_as_if_it_were_the_whole_tail(edge: Edge, origin: Server) -> None:
    path = new_stream(origin, b"abc")
    first = httpx.get(edge.url + path, params={"offset": "-1"}, timeout=10)
    assert (first.content, first.headers["stream-up-to-date"]) == (b"abc", "true")
    # Unchanged, the origin confirms what the client holds: 304 through the edge.
    held = httpx.get(edge.url + path, params={"offset": "-1"}, headers={"If-None-Match": first.headers["etag"]},
                     timeout=10)
    assert held.status_code == 304
    append(origin, path, b"def")
    later = httpx.get(edge.url + path, params={"offset": "-1"}, timeout=10)
    assert (later.status_code, later.content, later.headers["stream-up-to-date"]) == (200, b"abcdef", "true")
    stale = httpx.get(edge.url + path, params={"offset": "-1"}, headers={"If-None-Match": first.headers["etag"]},
                      timeout=10)
    assert (stale.status_code, stale.content) == (200, b"abcdef")
    # Closed afterwards: the tail read says so at once, and its ETag changes (no 304 hides it).
    assert httpx.post(origin.url + path, headers=TEXT | {"Stream-Closed": "true"}, timeout=10).status_code == 204
    closed = httpx.get(edge.url + path, params={"offset": "-1"}, headers={"If-None-Match": later.headers["etag"]},
                       timeout=10)
    assert (closed.status_code, closed.content, closed.headers["stream-closed"]) == (200, b"abcdef", "true")


def test_head_goes_to_the_origin_as_head(edge: Edge, origin: Server) -> None:
    path = new_stream(origin, b"12345")
    head = httpx.head(edge.url + path, timeout=10)
    assert head.status_code == 200 and head.headers["cache-control"] == "no-store"
    append(origin, path, b"678")
    assert httpx.head(edge.url + path, timeout=10).headers["stream-next-offset"] != head.headers["stream-next-offset"]


# -- live reads ---------------------------------------------------------------------


def test_a_thousand_identical_long_polls_cost_the_origin_one_request(edge: Edge, origin: Server) -> None:
    """The issue's bound is 5 upstream requests per append; the edge makes it exactly one."""
    if raise_nofile_limit() < READERS + 256:
        pytest.skip(f"{READERS} readers need more descriptors than the hard limit allows")
    path = new_stream(origin, b"start")
    tail = httpx.head(origin.url + path, timeout=10).headers["stream-next-offset"]
    target = f"{path}?live=long-poll&offset={tail}"
    before = origin_requests(origin, "long_poll")
    with Pollers(edge.port, READERS) as readers:
        readers.send(target)
        deadline_poll(lambda: requests_in_progress(edge.status_port) >= READERS, timeout=PROXY_CHECKS_S,
                      interval=0.1, what=f"nginx to hold all {READERS} long-polls")
        origin.wait_subscribers(lambda n: n >= 1, timeout=PROXY_CHECKS_S, what="the collapsed long-poll to park")
        append(origin, path, b"news")
        answers = readers.collect(PROXY_CHECKS_S)
    assert [(a.status, a.body) for a in answers] == [(200, b"news")] * READERS
    deadline_poll(lambda: origin_requests(origin, "long_poll") > before, what="the origin to count its answer")
    assert origin_requests(origin, "long_poll") - before == 1
    # Every reader got the cursor to send next: their next polls are identical again.
    assert len({a.headers["stream-cursor"] for a in answers}) == 1


def test_a_long_poll_from_now_never_gets_an_answer_made_for_an_earlier_reader(edge: Edge, origin: Server) -> None:
    path = new_stream(origin, b"old")
    params = {"live": "long-poll", "offset": "now"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for word in (b"first", b"second"):
            before = origin.subscribers()
            poll = pool.submit(httpx.get, edge.url + path, params=params, timeout=ORIGIN_LONG_POLL_S + 10)
            deadline_poll(lambda: poll.done() or origin.subscribers() > before, timeout=PROXY_CHECKS_S,
                          what="the long-poll to park (or to be answered from the cache)")
            append(origin, path, word)
            answer = poll.result(timeout=PROXY_CHECKS_S)
            assert (answer.status_code, answer.content) == (200, word)


def test_sse_events_pass_the_edge_as_they_are_written(edge: Edge, origin: Server) -> None:
    path = new_stream(origin)
    before = origin.subscribers()
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        with client.stream("GET", edge.url + path, params={"offset": "now", "live": "sse"}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            origin.wait_subscribers(lambda n: n > before, what="the SSE reader to subscribe")
            events = SseReader(response)
            for word in ("first", "second"):
                append(origin, path, word.encode())
                # Buffered or cached, it would arrive only at the connection's end (60 s).
                data = events.until(lambda ev: not is_control(ev))[-1]
                assert data.data == word


# -- credentials --------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("guarded")
    config = root / "auth.toml"
    tokens = [("reader-a", READER_TOKEN, '"read:a/**"'), ("reader-b", OTHER_TOKEN, '"read:b/**"'),
              ("writer", WRITER_TOKEN, '"read", "write"')]
    config.write_text("".join(f'[[auth.tokens]]\nname = "{name}"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                              f"scopes = [{scopes}]\n\n" for name, token, scopes in tokens))
    yield from serving(root, ["--config", str(config), "--long-poll-timeout-ms", str(int(ORIGIN_LONG_POLL_S * 1000))])


@pytest.fixture(scope="module")
def guarded_edge(nginx_exe: str, guarded_origin: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    yield from start_edge(nginx_exe, tmp_path_factory.mktemp("guarded-edge"), guarded_origin)


def test_an_authenticated_answer_never_reaches_another_token(guarded_edge: Edge, guarded_origin: Server) -> None:
    path = f"/v1/stream/a/{unique()}"
    writer = {"Authorization": f"Bearer {WRITER_TOKEN}"}
    created = httpx.put(guarded_origin.url + path, headers=TEXT | writer | {"Stream-Closed": "true"}, content=b"secret",
                        timeout=10)
    assert created.status_code == 201
    reader, other = ({"Authorization": f"Bearer {t}"} for t in (READER_TOKEN, OTHER_TOKEN))
    for params in ({"offset": "-1"}, {"offset": "-1", "live": "long-poll", "cursor": "1"}):
        mine = httpx.get(guarded_edge.url + path, params=params, headers=reader, timeout=10)
        assert (mine.status_code, mine.content) == (200, b"secret")
        theirs = httpx.get(guarded_edge.url + path, params=params, headers=other, timeout=10)
        assert theirs.status_code == 403, theirs.content
        nobody = httpx.get(guarded_edge.url + path, params=params, timeout=10)
        assert nobody.status_code == 401, nobody.content
        # Neither the edge nor any other shared cache keeps it.
        assert mine.headers["cache-control"].startswith("private") and mine.headers["x-cache-status"] == "BYPASS"


# -- writes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flood_edge(nginx_exe: str, origin: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    yield from start_edge(nginx_exe, tmp_path_factory.mktemp("flood-edge"), origin, write_rate_per_s=FLOOD_RATE_PER_S)


def test_a_write_flood_from_one_client_gets_429_with_retry_after(flood_edge: Edge, origin: Server) -> None:
    path = new_stream(origin)
    with httpx.Client(timeout=10) as flooder:
        statuses = [flooder.post(flood_edge.url + path, headers=TEXT, content=b"x") for _ in range(FLOOD_WRITES)]
    refused = [r for r in statuses if r.status_code == 429]
    accepted = [r for r in statuses if r.status_code == 204]
    assert len(refused) + len(accepted) == FLOOD_WRITES and refused and accepted
    assert int(refused[0].headers["retry-after"]) >= 1
    assert refused[0].json()["error"]["code"] == "RATE_LIMITED"
    # A write dressed as a live read is still a write (the bucket refills one a second,
    # so of a few quick ones most are refused).
    for live in ("long-poll", "sse"):
        with httpx.Client(timeout=10) as disguised:
            statuses = [disguised.post(flood_edge.url + path, params={"live": live, "offset": "-1"}, headers=TEXT,
                                       content=b"z").status_code for _ in range(DISGUISED_WRITES)]
        assert 429 in statuses, (live, statuses)
    # Reads are never limited, and another client's writes are its own.
    assert httpx.get(flood_edge.url + path, params={"offset": "-1"}, timeout=10).content.startswith(b"x" * len(accepted))
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
    with other:
        assert other.post(flood_edge.url + path, headers=TEXT, content=b"y").status_code == 204


# -- the official suite (slow) ------------------------------------------------------------


@pytest.mark.slow
def test_the_conformance_suite_passes_through_the_edge(nginx_exe: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "conformance_edge.py"), "--subscriptions"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert re.search(r"conformance: \d+ passed, 0 failed, 0 skipped", done.stdout), done.stdout[-2000:]
