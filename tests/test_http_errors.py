"""Bad input through Hypercorn: the right 4xx with a JSON error body — never a 500, never a hang.

The full set of bad-input tests runs in process (tests/test_inproc_errors.py);
these are the ones where Hypercorn and h11 take part: the request line and
query as h11 parses them, paths as Hypercorn decodes them, chunked bodies,
a body that never comes or stops half-way on a real socket, CONNECT, and
the headers on every kind of response as they leave the server. Error
bodies are {"error": {"code", "message"}} with the browser security
headers (PROTOCOL.md 12.7). Paths that an HTTP client would normalise are
sent over a raw socket.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from conftest import (
    APPEND_BYTES_MAX,
    PREFIX,
    Server,
    assert_error,
    assert_security_headers,
    raw_request,
    unique,
)

TEXT = "text/plain"
JSON = "application/json"


def path(name: str) -> str:
    return PREFIX + name


@pytest.fixture
def text_stream(client: httpx.Client, name: str) -> str:
    """A text stream holding b"abc"; returns its name."""
    assert client.put(path(name), content=b"abc", headers={"content-type": TEXT}).status_code == 201
    return name


# -- offsets -------------------------------------------------------------------

@pytest.mark.parametrize(
    "query",
    [
        "offset=-1&offset=now",
        "offset=-1&live=long-poll&live=sse",
    ],
)
def test_repeated_query_parameters_are_400(server: Server, text_stream: str, query: str) -> None:
    assert_error(raw_request(server, "GET", f"{path(text_stream)}?{query}"), 400)


# -- size limits (--append-bytes-max 65536) -------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("framing", ["chunked"])
def test_body_over_limit_is_413(client: httpx.Client, name: str, method: str, framing: str) -> None:
    if method == "POST":
        assert client.put(path(name), content=b"abc", headers={"content-type": TEXT}).status_code == 201
    body = b"z" * (APPEND_BYTES_MAX + 1)
    content = body if framing == "content-length" else iter([body[:40_000], body[40_000:]])
    resp = client.request(method, path(name), content=content, headers={"content-type": TEXT})
    assert_error(resp, 413)
    if method == "POST":
        assert client.get(path(name)).content == b"abc"
    else:
        assert client.head(path(name)).status_code == 404


def test_huge_declared_content_length_is_413_without_waiting_for_the_body(server: Server, text_stream: str) -> None:
    started = time.monotonic()
    resp = raw_request(server, "POST", path(text_stream), [("Content-Type", TEXT), ("Content-Length", str(10**12))], timeout=5)
    assert_error(resp, 413)
    assert time.monotonic() - started < 3


# -- paths -----------------------------------------------------------------------------

# A sample through Hypercorn's request parsing: its ``path`` decodes what the
# app must judge by ``raw_path`` (the full list is tests/test_inproc_errors.py).
TRAVERSALS = [
    "/v1/stream/a/../b", "/v1/stream/%2e%2e/b", "/v1/stream/a%2f..%2fb", "/v1/stream/a//b", "/v1/stream/a%00b",
    "/v1/stream/a%0d%0aX-Injected:%201",
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t[11:40])
@pytest.mark.parametrize("method", ["PUT", "HEAD"])
def test_bad_stream_paths_are_400(server: Server, client: httpx.Client, target: str, method: str) -> None:
    headers = [("Content-Type", TEXT)] if method in ("PUT", "POST") else []
    body = b"evil" if method in ("PUT", "POST") else None
    resp = raw_request(server, method, target, headers, body)
    if method == "HEAD":
        assert resp.status_code == 400
        assert_security_headers(resp)
    else:
        assert_error(resp, 400)
    # Nothing was created anywhere a traversal might have landed.
    for landing in ("b", "a", "etc/passwd", "a/b"):
        head = raw_request(server, "HEAD", path(landing))
        if head.status_code == 200:
            assert client.get(path(landing)).content != b"evil", f"{target} wrote to {landing}"


@pytest.mark.parametrize("target", [b"/v1/stream/a\x01b", b"/v1/stream/a\x7fb", b"/v1/stream/a\x00b", b"/v1/stream/a b"])
def test_raw_control_characters_in_request_line_are_400(server: Server, target: bytes) -> None:
    # Rejected by the HTTP parser before the application sees them: a plain 400 is all we can ask.
    resp = raw_request(server, "PUT", target, [("Content-Type", TEXT)], b"evil", timeout=5)
    assert resp.status_code == 400


def test_invalid_utf8_percent_encoding_does_not_alias_streams(server: Server, client: httpx.Client) -> None:
    """Distinct URLs must not silently name the same stream (12.2).

    ``%ff`` and ``%fe`` are not UTF-8; decoding them lossily maps both (and a
    literal U+FFFD) to one name, so a writer at one URL is read at another.
    The server must either reject such paths with 400 or keep them apart.
    """
    token = unique("alias")
    first = raw_request(server, "PUT", f"{PREFIX}{token}-%ff", [("Content-Type", TEXT)], b"secret")
    if first.status_code == 400:
        assert_error(first, 400)
        assert_error(raw_request(server, "GET", f"{PREFIX}{token}-%fe"), 400)
        return
    assert first.status_code == 201
    other = raw_request(server, "GET", f"{PREFIX}{token}-%fe")
    assert other.status_code in (400, 404), f"/{token}-%fe read the stream written at /{token}-%ff: {other.body!r}"
    replacement = raw_request(server, "GET", f"{PREFIX}{token}-%ef%bf%bd")
    assert replacement.status_code in (400, 404), f"/{token}-%EF%BF%BD read the stream written at /{token}-%ff"


@pytest.mark.parametrize("method", ["PATCH", "CONNECT"])
def test_unknown_methods_are_405_with_allow(server: Server, text_stream: str, method: str) -> None:
    for target in (path(text_stream), path(unique("missing"))):
        resp = raw_request(server, method, target)
        assert_error(resp, 405)
        allow = {m.strip() for m in resp.headers["allow"].split(",")}
        assert {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"} <= allow
        assert method not in allow


# -- security headers everywhere ------------------------------------------------------------


def test_security_headers_on_every_kind_of_response(server: Server, client: httpx.Client) -> None:
    name = unique()
    responses: list[tuple[str, httpx.Response]] = []

    def record(label: str, resp: httpx.Response, status: int) -> httpx.Response:
        assert resp.status_code == status, (label, resp.status_code, resp.text)
        responses.append((label, resp))
        return resp

    record("201 create", client.put(path(name), content=b"a", headers={"content-type": TEXT}), 201)
    record("200 re-create", client.put(path(name), headers={"content-type": TEXT}), 200)
    record("204 append", client.post(path(name), content=b"b", headers={"content-type": TEXT}), 204)
    read = record("200 read", client.get(path(name)), 200)
    record("304", client.get(path(name), headers={"if-none-match": read.headers["etag"]}), 304)
    record("200 head", client.head(path(name)), 200)
    record("200 now", client.get(path(name), params={"offset": "now"}), 200)
    record("204 long-poll", client.get(path(name), params={"offset": "now", "live": "long-poll"}), 204)
    record("400", client.get(path(name), params={"offset": "bad"}), 400)
    record("404", client.get(path(unique("missing"))), 404)
    record("404 head", client.head(path(unique("missing"))), 404)
    record("404 top", client.get("/nope"), 404)
    record("405", client.request("PATCH", path(name)), 405)
    record("409", client.post(path(name), content=b"x", headers={"content-type": JSON}), 409)
    record("413", client.post(path(name), content=b"x" * (APPEND_BYTES_MAX + 1), headers={"content-type": TEXT}), 413)
    record("501", client.get(path("__ds/x")), 501)
    record("options", client.options(path(name)), 204)
    record("healthz", client.get("/healthz"), 200)
    record("metrics", client.get("/metrics"), 200)
    with client.stream("GET", path(name), params={"offset": "-1", "live": "sse"}) as sse:
        record("sse", sse, 200)
    record("204 delete", client.delete(path(name)), 204)
    for label, resp in responses:
        try:
            assert_security_headers(resp)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None


def test_server_survives_a_half_sent_request(server: Server, client: httpx.Client, text_stream: str) -> None:
    # A client that declares a body and goes away mid-way must not wedge the stream.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST {path(text_stream)} HTTP/1.1\r\nHost: x\r\nContent-Type: {TEXT}\r\nContent-Length: 100\r\n\r\nhalf".encode())
    assert client.post(path(text_stream), content=b"d", headers={"content-type": TEXT}).status_code == 204
    assert client.get(path(text_stream)).content == b"abcd"
