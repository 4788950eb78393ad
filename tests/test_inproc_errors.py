"""Bad input gets the right 4xx with a JSON error body — never a 500, never a hang; in process.

Every error response is checked for {"error": {"code", "message"}} and the
browser security headers (PROTOCOL.md 12.7). The ASGI app is driven by
tests/inproc.py, which passes paths and headers exactly as given (no
client normalises them). What depends on Hypercorn and h11 (request-line
parsing, sockets cut mid-body, chunked framing) is in tests/test_http_errors.py.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from conftest import (
    APPEND_BYTES_MAX,
    PREFIX,
    assert_error,
    assert_security_headers,
    offset_of,
    unique,
)
from inproc import InprocClient, InprocServer, Response, StreamingResponse

TEXT = "text/plain"
JSON = "application/json"
VALID_TAIL_SHAPE = "0000000000000000_0000000000000000"


def path(name: str) -> str:
    return PREFIX + name


@pytest.fixture
def client(inproc: InprocServer) -> InprocClient:
    return inproc.client


async def raw(client: InprocClient, method: str, target: str | bytes, headers: list[tuple[str, str]] | None = None,
              body: bytes | None = None) -> Response:
    """``method target`` exactly as given, with a Content-Length only when there is a body (like conftest.raw_request)."""
    framing = [] if body is None else [("content-length", str(len(body)))]
    return await client.request(method, target, headers=[*(headers or []), *framing], content=body)


@pytest.fixture
async def text_stream(client: InprocClient, name: str) -> str:
    """A text stream holding b"abc"; returns its name."""
    assert (await client.put(path(name), content=b"abc", headers={"content-type": TEXT})).status_code == 201
    return name


# -- offsets -------------------------------------------------------------------

MALFORMED_OFFSETS = [
    "", "abc", "0", "1", "-2", "-01", "+1", "-1 ", " -1", "- 1", "NOW", "Now", "now ", "now\n", "-1,0",
    "1_2", "_", "0000000000000000_", "_0000000000000000", "0000000000000000-0000000000000000",
    "0000000000000000_000000000000000x", "0000000000000000_00000000000000001", "000000000000000_0000000000000000",
    "0000000000000000_000000000000000３",  # a full-width digit
    "0000000000000000_-000000000000001", "0000000000000000_0000000000000000_0",
    "\x00", "%00", "a/b", "a=b", "1e3", "0x10", "∞", "x" * 4000,
]


@pytest.mark.parametrize("offset", MALFORMED_OFFSETS, ids=[repr(o[:24]) for o in MALFORMED_OFFSETS])
@pytest.mark.parametrize("live", [None, "long-poll", "sse"])
async def test_malformed_offset_is_400(client: InprocClient, text_stream: str, offset: str, live: str | None,
                                       autojump_clock: trio.testing.MockClock) -> None:
    params = {"offset": offset} | ({"live": live} if live else {})
    started = trio.current_time()
    assert_error(await client.get(path(text_stream), params=params), 400)
    assert trio.current_time() == started, "a malformed live read must fail before waiting"


@pytest.mark.parametrize("live", [None, "long-poll", "sse"])
async def test_offset_beyond_tail_is_400(client: InprocClient, text_stream: str, live: str | None) -> None:
    tail = offset_of(await client.head(path(text_stream)))
    beyond = tail[:-1] + str(int(tail[-1]) + 1)
    assert beyond > tail
    params = {"offset": beyond} | ({"live": live} if live else {})
    assert_error(await client.get(path(text_stream), params=params), 400)
    far = "0000000000000000_9999999999999999"
    assert_error(await client.get(path(text_stream), params={"offset": far} | ({"live": live} if live else {})), 400)


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1&offset=-1",
        "offset=-1&offset=now",
        "offset=now&live=long-poll&offset=now",
        "offset=-1&live=sse&live=sse",
        "offset=-1&live=long-poll&live=sse",
    ],
)
async def test_repeated_query_parameters_are_400(client: InprocClient, text_stream: str, query: str) -> None:
    assert_error(await raw(client, "GET", f"{path(text_stream)}?{query}"), 400)


@pytest.mark.parametrize("live", ["", "longpoll", "long_poll", "LONG-POLL", "SSE", "true", "1", "websocket", "sse "])
async def test_bad_live_value_is_400(client: InprocClient, text_stream: str, live: str) -> None:
    assert_error(await client.get(path(text_stream), params={"offset": "-1", "live": live}), 400)


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_live_modes_require_an_offset(client: InprocClient, text_stream: str, live: str) -> None:
    assert_error(await client.get(path(text_stream), params={"live": live}), 400)


async def test_json_read_from_inside_a_message_is_refused_or_valid_json(client: InprocClient, name: str) -> None:
    """Offsets are opaque, but a JSON-mode GET must never answer 200 with a body that is not a JSON array (9.1.5).

    The server mints offsets as fixed-width positions, so a client can forge
    one that points into the middle of a stored message.
    """
    created = await client.put(path(name), content=b'[{"a":1},{"b":2}]', headers={"content-type": JSON})
    assert created.status_code == 201
    inside = "0000000000000000_0000000000000003"
    assert inside < offset_of(created)
    resp = await client.get(path(name), params={"offset": inside})
    if resp.status_code == 200:
        body = resp.content
        try:
            parsed = json.loads(body)
        except ValueError:
            pytest.fail(f"GET ?offset={inside} on a JSON stream answered 200 with invalid JSON {body!r}")
        assert isinstance(parsed, list)
    else:
        assert_error(resp, 400)


# -- missing streams -----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_missing_stream_is_404(client: InprocClient, method: str) -> None:
    kwargs = {"content": b"x", "headers": {"content-type": TEXT}} if method == "POST" else {}
    assert_error(await client.request(method, path(unique("missing")), **kwargs), 404)


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_missing_stream_live_is_404(client: InprocClient, live: str) -> None:
    assert_error(await client.get(path(unique("missing")), params={"offset": "-1", "live": live}), 404)


async def test_missing_stream_head_is_404_without_body(client: InprocClient) -> None:
    resp = await client.head(path(unique("missing")))
    assert resp.status_code == 404
    assert resp.content == b""
    assert_security_headers(resp)


# -- creation headers ------------------------------------------------------------

BAD_TTLS = ["+3600", "03600", "3600.0", "3.6e3", "-1", "abc", "", " ", "1 2", "0x10", "1_000", "99999999999999999999", "٣"]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=[repr(t) for t in BAD_TTLS])
async def test_bad_stream_ttl_is_400(client: InprocClient, name: str, ttl: str) -> None:
    resp = await raw(client, "PUT", path(name), [("Content-Type", TEXT), ("Stream-TTL", ttl)], b"")
    assert_error(resp, 400)
    assert (await client.head(path(name))).status_code == 404


async def test_repeated_stream_ttl_header_is_400(client: InprocClient, name: str) -> None:
    resp = await client.put(path(name), headers=[("content-type", TEXT), ("stream-ttl", "60"), ("stream-ttl", "60")])
    assert_error(resp, 400)


BAD_EXPIRES = [
    "tomorrow", "", "1700000000", "2099-01-01", "2099-01-01T00:00:00", "2099-01-01T00:00Z", "2099-13-01T00:00:00Z",
    "2099-02-30T00:00:00Z", "2099-01-01T25:00:00Z", "2099-01-01T00:00:00+2:00", "2099-01-01T00:00:00+99:99",
    "2099-01-01T00:00:00.Z", "Thu, 01 Jan 2099 00:00:00 GMT", " 2099-01-01T00:00:00Z x",
]


@pytest.mark.parametrize("value", BAD_EXPIRES, ids=[repr(v) for v in BAD_EXPIRES])
async def test_bad_stream_expires_at_is_400(client: InprocClient, name: str, value: str) -> None:
    assert_error(await raw(client, "PUT", path(name), [("Content-Type", TEXT), ("Stream-Expires-At", value)], b""), 400)
    assert (await client.head(path(name))).status_code == 404


async def test_ttl_and_expires_at_together_is_400(client: InprocClient, name: str) -> None:
    resp = await client.put(path(name), headers={"content-type": TEXT, "stream-ttl": "60", "stream-expires-at": "2099-01-01T00:00:00Z"})
    assert_error(resp, 400)
    assert (await client.head(path(name))).status_code == 404


@pytest.mark.parametrize("ctype", ["not a type", "text/", "/plain", "text", "text/plain/extra", "té/xt", "a" * 300 + "/b"])
async def test_bad_content_type_on_create_is_400(client: InprocClient, name: str, ctype: str) -> None:
    assert_error(await client.put(path(name), headers={"content-type": ctype.encode()}), 400)


# -- appends -----------------------------------------------------------------------

PARTIAL_PRODUCERS = [
    {"producer-id": "p"},
    {"producer-epoch": "0"},
    {"producer-seq": "0"},
    {"producer-id": "p", "producer-epoch": "0"},
    {"producer-id": "p", "producer-seq": "0"},
    {"producer-epoch": "0", "producer-seq": "0"},
]
BAD_PRODUCER_VALUES = [
    {"producer-id": ""},
    {"producer-id": "   "},
    {"producer-epoch": "-1"},
    {"producer-epoch": "abc"},
    {"producer-epoch": "1.5"},
    {"producer-epoch": "01"},
    {"producer-epoch": "+1"},
    {"producer-epoch": ""},
    {"producer-epoch": str(2**53)},
    {"producer-seq": "-1"},
    {"producer-seq": "x"},
    {"producer-seq": "1e2"},
    {"producer-seq": str(2**53)},
    {"producer-seq": "9" * 40},
]


@pytest.mark.parametrize("headers", PARTIAL_PRODUCERS + BAD_PRODUCER_VALUES, ids=lambda h: ",".join(f"{k}={v[:8]}" for k, v in h.items()))
async def test_bad_producer_headers_are_400(client: InprocClient, text_stream: str, headers: dict[str, str]) -> None:
    full = headers if headers in PARTIAL_PRODUCERS else {"producer-id": "p", "producer-epoch": "0", "producer-seq": "0"} | headers
    tail = offset_of(await client.head(path(text_stream)))
    resp = await raw(client, "POST", path(text_stream), [("Content-Type", TEXT), *full.items()], b"x")
    assert_error(resp, 400)
    assert offset_of(await client.head(path(text_stream))) == tail


async def test_producer_values_at_the_limit_are_accepted(client: InprocClient, text_stream: str) -> None:
    limit = str(2**53 - 1)
    resp = await client.post(path(text_stream), content=b"x", headers={"content-type": TEXT, "producer-id": "p", "producer-epoch": limit, "producer-seq": "0"})
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("producer-epoch") == limit


async def test_missing_content_type_on_append_is_400(client: InprocClient, text_stream: str) -> None:
    # Raw, so no client can add a default Content-Type.
    resp = await raw(client, "POST", path(text_stream), [], b"data")
    assert_error(resp, 400)


async def test_content_type_mismatch_is_409(client: InprocClient, text_stream: str) -> None:
    resp = await client.post(path(text_stream), content=b"x", headers={"content-type": "application/octet-stream"})
    assert_error(resp, 409)
    assert "stream-closed" not in resp.headers
    # Parameters and case do not matter; the media type does.
    ok = await client.post(path(text_stream), content=b"y", headers={"content-type": "Text/Plain; charset=utf-8"})
    assert ok.status_code == 204


async def test_invalid_content_type_on_append_is_4xx(client: InprocClient, text_stream: str) -> None:
    resp = await client.post(path(text_stream), content=b"x", headers={"content-type": "garbage"})
    assert resp.status_code in (400, 409)
    assert_error(resp, resp.status_code)


async def test_empty_append_without_close_is_400(client: InprocClient, text_stream: str) -> None:
    assert_error(await client.post(path(text_stream), content=b"", headers={"content-type": TEXT}), 400)
    assert_error(await client.post(path(text_stream), content=b"", headers={"content-type": TEXT, "stream-closed": "no"}), 400)


@pytest.mark.parametrize("seq", ["", "x" * 300])
async def test_bad_stream_seq_is_400(client: InprocClient, text_stream: str, seq: str) -> None:
    assert_error(await client.post(path(text_stream), content=b"x", headers={"content-type": TEXT, "stream-seq": seq}), 400)


# -- size limits (--append-bytes-max 65536) -------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_over_limit_is_413(client: InprocClient, name: str, method: str, framing: str) -> None:
    if method == "POST":
        assert (await client.put(path(name), content=b"abc", headers={"content-type": TEXT})).status_code == 201
    body = b"z" * (APPEND_BYTES_MAX + 1)
    content = body if framing == "content-length" else iter([body[:40_000], body[40_000:]])
    resp = await client.request(method, path(name), content=content, headers={"content-type": TEXT})
    assert_error(resp, 413)
    if method == "POST":
        assert (await client.get(path(name))).content == b"abc"
    else:
        assert (await client.head(path(name))).status_code == 404


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_at_limit_is_accepted(client: InprocClient, name: str, framing: str) -> None:
    assert (await client.put(path(name), headers={"content-type": TEXT})).status_code == 201
    body = b"q" * APPEND_BYTES_MAX
    content = body if framing == "content-length" else iter([body[:1000], body[1000:]])
    resp = await client.post(path(name), content=content, headers={"content-type": TEXT})
    assert resp.status_code == 204, resp.text
    assert (await client.get(path(name))).content == body


async def test_huge_declared_content_length_is_413_without_waiting_for_the_body(
        client: InprocClient, text_stream: str, autojump_clock: trio.testing.MockClock) -> None:
    # The body never comes: an app that waited for it would hang (and fail the request's deadline).
    resp = await client.post(path(text_stream), headers=[("content-type", TEXT), ("content-length", str(10**12))],
                             content=b"", body_end="held")
    assert_error(resp, 413)
    assert client.last_exchange is not None and client.last_exchange.receive_calls == 0


# -- paths -----------------------------------------------------------------------------

TRAVERSALS = [
    "/v1/stream/a/../b", "/v1/stream/../etc/passwd", "/v1/stream/..", "/v1/stream/.", "/v1/stream/./a",
    "/v1/stream/a/./b", "/v1/stream/a/.", "/v1/stream/a//b", "/v1/stream//a", "/v1/stream/a/", "/v1/stream/",
    "/v1/stream/%2e%2e/b", "/v1/stream/%2E%2E", "/v1/stream/a/%2e%2e/b", "/v1/stream/%2e", "/v1/stream/a/%2e/b",
    "/v1/stream/.%2e/b", "/v1/stream/a%2f..%2fb", "/v1/stream/a%2F%2Fb", "/v1/stream/a%5c..%5cb", "/v1/stream/a\\..\\b",
    "/v1/stream/a%00b", "/v1/stream/a%01b", "/v1/stream/a%0ab", "/v1/stream/a%0d%0aX-Injected:%201", "/v1/stream/a%1fb",
    "/v1/stream/a%7fb", "/v1/stream/" + "a" * 1100,
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t[11:40])
@pytest.mark.parametrize("method", ["PUT", "GET", "POST", "HEAD"])
async def test_bad_stream_paths_are_400(client: InprocClient, target: str, method: str) -> None:
    headers = [("Content-Type", TEXT)] if method in ("PUT", "POST") else []
    body = b"evil" if method in ("PUT", "POST") else None
    resp = await raw(client, method, target, headers, body)
    if method == "HEAD":
        assert resp.status_code == 400
        assert_security_headers(resp)
    else:
        assert_error(resp, 400)
    # Nothing was created anywhere a traversal might have landed.
    for landing in ("b", "a", "etc/passwd", "a/b"):
        head = await raw(client, "HEAD", path(landing))
        if head.status_code == 200:
            assert (await client.get(path(landing))).content != b"evil", f"{target} wrote to {landing}"


async def test_invalid_utf8_percent_encoding_does_not_alias_streams(client: InprocClient) -> None:
    """Distinct URLs must not silently name the same stream (12.2).

    ``%ff`` and ``%fe`` are not UTF-8; decoding them lossily maps both (and a
    literal U+FFFD) to one name, so a writer at one URL is read at another.
    The server must either reject such paths with 400 or keep them apart.
    """
    token = unique("alias")
    first = await raw(client, "PUT", f"{PREFIX}{token}-%ff", [("Content-Type", TEXT)], b"secret")
    if first.status_code == 400:
        assert_error(first, 400)
        assert_error(await raw(client, "GET", f"{PREFIX}{token}-%fe"), 400)
        return
    assert first.status_code == 201
    other = await raw(client, "GET", f"{PREFIX}{token}-%fe")
    assert other.status_code in (400, 404), f"/{token}-%fe read the stream written at /{token}-%ff: {other.body!r}"
    replacement = await raw(client, "GET", f"{PREFIX}{token}-%ef%bf%bd")
    assert replacement.status_code in (400, 404), f"/{token}-%EF%BF%BD read the stream written at /{token}-%ff"


async def test_encoded_slash_names_the_same_stream_as_a_slash(client: InprocClient) -> None:
    # Documenting behaviour: %2F is decoded like '/', so it adds no new way to escape the prefix.
    token = unique("slash")
    assert (await raw(client, "PUT", f"{PREFIX}{token}%2Fchild", [("Content-Type", TEXT)], b"hi")).status_code == 201
    assert (await client.get(path(f"{token}/child"))).content == b"hi"


@pytest.mark.parametrize("method", ["PATCH", "TRACE", "PROPFIND", "FOO", "CONNECT"])
async def test_unknown_methods_are_405_with_allow(client: InprocClient, text_stream: str, method: str) -> None:
    for target in (path(text_stream), path(unique("missing"))):
        resp = await raw(client, method, target)
        assert_error(resp, 405)
        allow = {m.strip() for m in resp.headers["allow"].split(",")}
        assert {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"} <= allow
        assert method not in allow


@pytest.mark.parametrize("target", ["/v1/stream/__ds", "/v1/stream/__ds/subscriptions", "/v1/stream/__ds/keys"])
@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE"])
async def test_reserved_ds_namespace_is_501(client: InprocClient, target: str, method: str) -> None:
    headers = [("Content-Type", JSON)] if method in ("PUT", "POST") else []
    body = b"{}" if method in ("PUT", "POST") else None
    assert_error(await raw(client, method, target, headers, body), 501)


@pytest.mark.parametrize("target", ["/", "/v1", "/v1/stream", "/v1/streams/a", "/v2/stream/a", "/favicon.ico", "/V1/STREAM/a", "/healthz/x"])
@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
async def test_unknown_top_level_paths_are_404(client: InprocClient, target: str, method: str) -> None:
    headers = [("Content-Type", TEXT)] if method != "GET" else []
    assert_error(await raw(client, method, target, headers, b"x" if method != "GET" else None), 404)


# -- CORS ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["existing", "missing"])
async def test_cors_preflight(client: InprocClient, text_stream: str, target: str) -> None:
    name = text_stream if target == "existing" else unique("missing")
    resp = await client.options(path(name), headers={
        "origin": "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, if-none-match, stream-ttl, producer-id",
    })
    assert resp.status_code in (200, 204)
    assert_security_headers(resp)
    assert resp.headers.get("access-control-allow-origin") in ("*", "https://app.example")
    methods = {m.strip().upper() for m in resp.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "HEAD", "POST", "PUT", "DELETE"} <= methods
    allowed = {h.strip().lower() for h in resp.headers["access-control-allow-headers"].split(",")}
    for header in ("content-type", "if-none-match", "stream-ttl", "stream-expires-at", "stream-closed", "stream-seq",
                   "producer-id", "producer-epoch", "producer-seq"):
        assert header in allowed, header
    exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
    for header in ("stream-next-offset", "stream-cursor", "stream-up-to-date", "stream-closed", "etag", "location"):
        assert header in exposed, header


# -- security headers everywhere ------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(client: InprocClient) -> None:
    name = unique()
    responses: list[tuple[str, Response | StreamingResponse]] = []

    def record(label: str, resp: Response | StreamingResponse, status: int) -> Response | StreamingResponse:
        assert resp.status_code == status, (label, resp.status_code, resp.text)
        responses.append((label, resp))
        return resp

    record("201 create", await client.put(path(name), content=b"a", headers={"content-type": TEXT}), 201)
    record("200 re-create", await client.put(path(name), headers={"content-type": TEXT}), 200)
    record("204 append", await client.post(path(name), content=b"b", headers={"content-type": TEXT}), 204)
    read = record("200 read", await client.get(path(name)), 200)
    record("304", await client.get(path(name), headers={"if-none-match": read.headers["etag"]}), 304)
    record("200 head", await client.head(path(name)), 200)
    record("200 now", await client.get(path(name), params={"offset": "now"}), 200)
    record("204 long-poll", await client.get(path(name), params={"offset": "now", "live": "long-poll"}), 204)
    record("400", await client.get(path(name), params={"offset": "bad"}), 400)
    record("404", await client.get(path(unique("missing"))), 404)
    record("404 head", await client.head(path(unique("missing"))), 404)
    record("404 top", await client.get("/nope"), 404)
    record("405", await client.request("PATCH", path(name)), 405)
    record("409", await client.post(path(name), content=b"x", headers={"content-type": JSON}), 409)
    record("413", await client.post(path(name), content=b"x" * (APPEND_BYTES_MAX + 1), headers={"content-type": TEXT}), 413)
    record("501", await client.get(path("__ds/x")), 501)
    record("options", await client.options(path(name)), 204)
    record("healthz", await client.get("/healthz"), 200)
    record("metrics", await client.get("/metrics"), 200)
    async with client.stream("GET", path(name), params={"offset": "-1", "live": "sse"}) as sse:
        record("sse", sse, 200)
    record("204 delete", await client.delete(path(name)), 204)
    for label, resp in responses:
        try:
            assert_security_headers(resp)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None


async def test_no_500_for_odd_header_values(client: InprocClient, name: str) -> None:
    """A small sweep of odd values across protocol headers: every answer is < 500 and errors are JSON."""
    assert (await client.put(path(name), content=b"a", headers={"content-type": TEXT})).status_code == 201
    odd = ["", " ", "true", "TRUE", "0", "-0", "null", "\t1", "ä", "9" * 200, "a,b", '"x"']
    headers = ["stream-ttl", "stream-expires-at", "stream-closed", "stream-seq", "producer-id", "producer-epoch",
               "producer-seq", "if-none-match", "content-type"]
    for header in headers:
        for value in odd:
            for method, body in (("PUT", b""), ("POST", b"x"), ("GET", None)):
                hdrs = {"content-type": TEXT} | {header: value}
                resp = await raw(client, method, path(name), list(hdrs.items()), body)
                assert resp.status_code < 500, (method, header, value, resp.status_code, resp.body)
                if resp.status_code >= 400:
                    assert_error(resp, resp.status_code)


async def test_server_survives_a_half_sent_request(client: InprocClient, text_stream: str) -> None:
    # A client that declares a body and goes away mid-way must not wedge the stream.
    gone = await client.post(path(text_stream), headers=[("content-type", TEXT), ("content-length", "100")],
                             content=iter([b"half"]), body_end="disconnect")
    assert gone.status_code == 0, "no response to a client that went away"
    assert (await client.post(path(text_stream), content=b"d", headers={"content-type": TEXT})).status_code == 204
    assert (await client.get(path(text_stream))).content == b"abcd"
