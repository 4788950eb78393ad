"""Hostile input at the protocol's edges: active content, reflected hosts, URL spellings, fork and expiry defects.

Every test runs against a real ``trio-streams serve`` process. A second
server, started with ``TRIO_STREAMS_PUBLIC_BASE_URL``, covers the public-URL
setting; the variable is set only while that process starts, so no other
fixture's server inherits it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from conftest import EXE, PREFIX, Server, assert_error, deadline_poll, raw_request, unique
from trio_streams.config import Settings, settings_from_env
from trio_streams.protocol.offsets import format_offset

PUBLIC_BASE = "https://streams.example.com"
TEXT = {"content-type": "text/plain"}
TEXT_PAIRS = list(TEXT.items())


@pytest.fixture(scope="module")
def public_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("public") / "data"
    data.mkdir()
    srv = Server(data)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TRIO_STREAMS_PUBLIC_BASE_URL", PUBLIC_BASE.upper() + "/")  # normalised at start-up
            srv.start()
        yield srv
        srv.stop()
    finally:
        srv.kill_quietly()


def _put(client: httpx.Client, path: str, body: bytes = b"", **headers: str) -> httpx.Response:
    return client.put(path, content=body, headers={**TEXT, **headers})


# -- Finding 7: active content is sandboxed ---------------------------------

def _assert_sandboxed(resp: httpx.Response | object) -> None:
    policy = resp.headers.get("content-security-policy", "")  # type: ignore[attr-defined]
    directives = {d.strip() for d in policy.split(";")}
    assert "sandbox" in directives and "default-src 'none'" in directives, policy
    assert "allow-scripts" not in policy, policy


@pytest.mark.parametrize(("content_type", "body"), [
    ("text/html", b"<script>fetch('/v1/stream/x',{method:'DELETE'})</script>"),
    ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
])
def test_active_content_is_served_sandboxed_on_every_read(client: httpx.Client, content_type: str, body: bytes) -> None:
    path = PREFIX + unique("xss")
    created = client.put(path, content=body, headers={"content-type": content_type, "stream-closed": "true"})
    assert created.status_code == 201
    _assert_sandboxed(created)
    catch_up = client.get(path, params={"offset": "-1"})
    assert catch_up.status_code == 200 and catch_up.content == body
    assert catch_up.headers["content-type"] == content_type  # still echoed exactly
    _assert_sandboxed(catch_up)
    long_poll = client.get(path, params={"offset": "-1", "live": "long-poll"})
    assert long_poll.status_code == 200 and long_poll.content == body
    _assert_sandboxed(long_poll)
    with client.stream("GET", path, params={"offset": "-1", "live": "sse"}) as sse:
        assert sse.status_code == 200
        _assert_sandboxed(sse)
        sse.read()  # the stream is closed, so the event stream ends
    _assert_sandboxed(client.head(path))
    missing = client.get(PREFIX + unique("missing"))
    assert_error(missing, 404)
    _assert_sandboxed(missing)


# -- Finding 7: Location is not built from a client's Host header -----------

def test_public_base_url_builds_location_whatever_the_host_header(public_server: Server) -> None:
    name = unique("loc")
    with httpx.Client(base_url=public_server.url, timeout=10) as c:
        created = c.put(PREFIX + name, headers={**TEXT, "host": "evil.example"})
        assert created.status_code == 201
        assert created.headers["location"] == f"{PUBLIC_BASE}{PREFIX}{name}"


def test_malformed_host_header_is_not_reflected_into_location(server: Server, client: httpx.Client) -> None:
    name = unique("loc")
    created = client.put(PREFIX + name, headers={**TEXT, "host": "evil.example/phish?x="})
    assert created.status_code == 201
    assert created.headers["location"] == server.stream_url(name)


def test_without_public_base_url_a_well_formed_host_is_used(client: httpx.Client) -> None:
    """The documented default (README "Security"): the request's Host decides."""
    name = unique("loc")
    created = client.put(PREFIX + name, headers={**TEXT, "host": "Streams.Internal:8080"})
    assert created.headers["location"] == f"http://Streams.Internal:8080{PREFIX}{name}"


@pytest.mark.parametrize("value", [
    "ftp://streams.example.com", "https://streams.example.com/base", "https://streams.example.com?x=1",
    "https://streams.example.com/#top", "https://user@streams.example.com", "streams.example.com",
    "https://", "https://streams.example.com:99999", "https://exa mple.com", "//streams.example.com",
])
def test_public_base_url_is_validated(value: str) -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        Settings(public_base_url=value)


@pytest.mark.parametrize(("value", "normalised"), [
    ("https://streams.example.com/", "https://streams.example.com"),
    ("HTTP://Streams.Example.COM:8080", "http://streams.example.com:8080"),
    ("https://[::1]:4437/", "https://[::1]:4437"),
    ("", ""),
])
def test_public_base_url_is_normalised(value: str, normalised: str) -> None:
    assert Settings(public_base_url=value).public_base_url == normalised
    assert settings_from_env({"TRIO_STREAMS_PUBLIC_BASE_URL": value}).public_base_url == normalised


def test_server_refuses_to_start_with_a_bad_public_base_url(tmp_path: Path) -> None:
    env = {**os.environ, "TRIO_STREAMS_PUBLIC_BASE_URL": "https://streams.example.com/path"}
    done = subprocess.run([str(EXE), "serve", "--data-dir", str(tmp_path), "--port", "1"], env=env,
                          capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"public_base_url" in done.stderr


# -- Finding 7: /healthz and /metrics answer GET and HEAD only ---------------

@pytest.mark.parametrize("target", ["/healthz", "/metrics"])
@pytest.mark.parametrize("method", ["CONNECT", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_operations_endpoints_refuse_other_methods(server: Server, target: str, method: str) -> None:
    resp = raw_request(server, method, target, body=b"" if method in ("POST", "PUT", "PATCH") else None)
    assert_error(resp, 405, "METHOD_NOT_ALLOWED")
    assert resp.headers["allow"] == "GET, HEAD"
    assert f"unhandled error for {method} {target}" not in server.log_tail(400)


def _raw_head(server: Server, target: str) -> bytes:
    """Everything the server writes for a HEAD request, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"HEAD {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(("target", "content_type"), [("/healthz", b"application/json"), ("/metrics", b"text/plain")])
def test_operations_endpoints_answer_head_without_a_body(server: Server, target: str, content_type: bytes) -> None:
    head, _, body = _raw_head(server, target).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"content-type: " + content_type in head.lower()
    assert body == b""


# -- Finding 8: re-creating a fork compares against the defaulted offset ----

def test_fork_recreate_without_offset_compares_with_the_sources_current_tail(client: httpx.Client) -> None:
    src, fork = PREFIX + unique("src"), PREFIX + unique("fork")
    assert _put(client, src, b"hello").status_code == 201
    assert _put(client, fork, **{"stream-forked-from": src}).status_code == 201
    assert _put(client, fork, **{"stream-forked-from": src}).status_code == 200  # same tail: same fork
    assert _put(client, fork, **{"stream-forked-from": src, "stream-fork-offset": "now"}).status_code == 200
    assert client.post(src, content=b" world", headers=TEXT).status_code == 204
    # Forking now (the default) would diverge at a different point than this fork does.
    assert_error(_put(client, fork, **{"stream-forked-from": src}), 409)
    assert_error(_put(client, fork, **{"stream-forked-from": src, "stream-fork-offset": "now"}), 409)
    explicit = {"stream-forked-from": src, "stream-fork-offset": format_offset(5)}
    assert _put(client, fork, **explicit).status_code == 200  # its recorded point, spelled out
    assert client.get(fork).content == b"hello"


# -- Finding 8: Stream-Forked-From is decoded exactly like a request path ----

@pytest.mark.parametrize(("created_as", "forked_from"), [
    ("caf%C3%A9-{u}", "caf%C3%A9-{u}"),
    ("caf%C3%A9-{u}", "caf%c3%a9-{u}"),
    ("caf%C3%A9-{u}", "café-{u}"),  # sent as raw UTF-8 bytes in the header
    ("a%20b-{u}", "a%20b-{u}"),
    ("a%20b-{u}", "a b-{u}"),
    ("p+q-{u}", "p%2Bq-{u}"),
    ("x%2Fy-{u}", "x/y-{u}"),
])
def test_fork_source_is_percent_decoded_like_request_paths(server: Server, created_as: str, forked_from: str) -> None:
    u = unique("")
    assert raw_request(server, "PUT", PREFIX + created_as.format(u=u), TEXT_PAIRS, b"data").status_code == 201
    fork = PREFIX + unique("fork")
    header = PREFIX + forked_from.format(u=u)
    resp = raw_request(server, "PUT", fork, [("stream-forked-from", header)])
    assert resp.status_code == 201, resp.body
    assert raw_request(server, "GET", fork).body == b"data"


def test_fork_source_that_is_not_utf8_is_400(server: Server) -> None:
    resp = raw_request(server, "PUT", PREFIX + unique("fork"), [("stream-forked-from", PREFIX + "x-%ff")])
    assert_error(resp, 400, "INVALID_FORK")


# -- Finding 8: an absolute Stream-Forked-From must name this server ---------

def test_absolute_fork_source_must_have_the_requests_origin(server: Server, client: httpx.Client) -> None:
    src = PREFIX + unique("src")
    assert _put(client, src, b"mine").status_code == 201
    for foreign in (f"http://evil.example{src}", f"https://127.0.0.1:{server.port}{src}",
                    f"http://127.0.0.1:{server.port + 1}{src}", f"//127.0.0.1:{server.port}{src}",
                    f"ftp://127.0.0.1:{server.port}{src}", f"http://127.0.0.1:{server.port}@evil.example{src}"):
        assert_error(_put(client, PREFIX + unique("fork"), **{"stream-forked-from": foreign}), 400, "INVALID_FORK")
    for own in (f"http://127.0.0.1:{server.port}{src}", f"HTTP://127.0.0.1:{server.port}{src}?ignored#too"):
        fork = PREFIX + unique("fork")
        assert _put(client, fork, **{"stream-forked-from": own}).status_code == 201, own
        assert client.get(fork).content == b"mine"


def test_absolute_fork_source_must_have_the_public_origin_when_set(public_server: Server) -> None:
    src = PREFIX + unique("src")
    with httpx.Client(base_url=public_server.url, timeout=10) as c:
        assert _put(c, src, b"mine").status_code == 201
        own_host = f"http://127.0.0.1:{public_server.port}{src}"  # the Host we send, but not the public origin
        assert_error(_put(c, PREFIX + unique("fork"), **{"stream-forked-from": own_host}), 400, "INVALID_FORK")
        fork = PREFIX + unique("fork")
        assert _put(c, fork, **{"stream-forked-from": f"{PUBLIC_BASE}:443{src}"}).status_code == 201
        assert c.get(fork).content == b"mine"


# -- Finding 8: an expired source that has forks is 410 from the first request

def _expires_soon(seconds: float) -> tuple[str, float]:
    instant = time.time() + seconds
    return datetime.fromtimestamp(instant, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), instant


def test_expired_source_with_forks_answers_410_from_the_first_request(client: httpx.Client) -> None:
    """Expiry is a delete; a deleted stream with forks is soft-deleted (4.2): 410, for every method.

    Each source is first touched, after its expiry, by a different method,
    so each method is checked as the one that discovers the expiry.
    """
    first_requests = {
        "HEAD": lambda p: client.head(p),
        "GET": lambda p: client.get(p),
        "long-poll": lambda p: client.get(p, params={"offset": "-1", "live": "long-poll"}),
        "POST": lambda p: client.post(p, content=b"more", headers=TEXT),
        "DELETE": lambda p: client.delete(p),
    }
    when, instant = _expires_soon(2.0)  # time enough to create every pair first
    sources = {}
    for method in first_requests:
        src, fork = PREFIX + unique("exp"), PREFIX + unique("kid")
        assert _put(client, src, b"inherited", **{"stream-expires-at": when}).status_code == 201
        assert _put(client, fork, **{"stream-forked-from": src, "stream-ttl": "3600"}).status_code == 201
        sources[method] = (src, fork)
    deadline_poll(lambda: time.time() > instant + 0.05, timeout=10, what="the sources' Expires-At")
    for method, send in first_requests.items():
        src, _ = sources[method]
        resp = send(src)
        assert resp.status_code == 410, (method, resp.status_code)
        if method != "HEAD":
            assert_error(resp, 410, "GONE")
    for src, fork in sources.values():  # and so it stays, once the background delete has run
        for resp in (client.head(src), client.get(src), client.post(src, content=b"x", headers=TEXT), client.delete(src)):
            assert resp.status_code == 410
        assert_error(_put(client, src, b"inherited"), 409, "CONFLICT_SOFT_DELETED")
        assert_error(_put(client, PREFIX + unique("f2"), **{"stream-forked-from": src}), 409, "CONFLICT_SOFT_DELETED")
        assert client.get(fork).content == b"inherited"


def test_expired_source_without_forks_is_404(client: httpx.Client) -> None:
    when, instant = _expires_soon(0.5)
    src = PREFIX + unique("exp")
    assert _put(client, src, b"x", **{"stream-expires-at": when}).status_code == 201
    deadline_poll(lambda: time.time() > instant + 0.05, timeout=10, what="the source's Expires-At")
    assert_error(client.get(src), 404)
    assert client.head(src).status_code == 404
    assert_error(_put(client, PREFIX + unique("f"), **{"stream-forked-from": src}), 404)


# -- Finding 8: one name, many spellings; one canonical Location --------------

@pytest.mark.parametrize(("spellings", "canonical"), [
    (["x%2Fy-{u}", "x/y-{u}", "x%2fy-{u}"], "x/y-{u}"),
    (["p%2Bq-{u}", "p+q-{u}"], "p+q-{u}"),
    (["caf%c3%a9-{u}", "caf%C3%A9-{u}"], "caf%C3%A9-{u}"),
    (["%7Etilde-{u}", "~tilde-{u}"], "~tilde-{u}"),
    (["sp%20ace-{u}"], "sp%20ace-{u}"),
    (["pct%2525-{u}"], "pct%2525-{u}"),
])
def test_every_spelling_of_a_name_is_one_stream_with_one_location(
    server: Server, public_server: Server, spellings: list[str], canonical: str,
) -> None:
    for srv, base in ((server, server.url), (public_server, PUBLIC_BASE)):
        u = unique("")
        names = [PREFIX + s.format(u=u) for s in spellings]
        created = raw_request(srv, "PUT", names[0], TEXT_PAIRS, b"one")
        assert created.status_code == 201, created.body
        location = created.headers["location"]
        assert location == base + PREFIX + canonical.format(u=u)
        local = location.removeprefix(base)
        for spelling in names + [local]:
            assert raw_request(srv, "GET", spelling).body == b"one", spelling
            assert raw_request(srv, "PUT", spelling, TEXT_PAIRS).status_code == 200, spelling
        for source in names + [location]:
            fork = PREFIX + unique("fork")
            resp = raw_request(srv, "PUT", fork, [("stream-forked-from", source)])
            assert resp.status_code == 201, (source, resp.body)
            assert raw_request(srv, "GET", fork).body == b"one"
        # A fresh stream created by another spelling prints the same canonical Location.
        other = raw_request(srv, "PUT", names[-1].replace(u, u + "b"), TEXT_PAIRS)
        assert other.headers["location"] == base + PREFIX + canonical.format(u=u + "b")
