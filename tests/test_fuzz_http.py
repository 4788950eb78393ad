"""HTTP fuzzing against a real server process: no client can crash, freeze or wedge it.

Hypothesis generates requests over protocol headers (valid, malformed,
duplicated, huge, non-ASCII), offsets, query strings, paths, methods, JSON
bodies (deep nesting, huge numbers, invalid UTF-8, lone surrogates, BOM,
NaN), chunked bodies, and raw-socket connection behaviours (pipelining,
half-closes, resets, truncated bodies, CL+TE framings, HTTP/1.0 with
trailing garbage, header floods).

Invariants, after every example: never a 5xx (501 under ``__ds``), never an
exchange longer than 5 s, every application error is a 4xx with the JSON
body ``{"error": {"code", "message"}}``, the process stays up (/healthz
200), and streams written and acknowledged before the fuzzing read back
byte-exact (every 200 examples, after any restart, and at the end).

Semantic requests go through httpx; paths and framings that httpx would
normalise or refuse (dot segments, control bytes, pipelining, half-closes)
go over raw sockets. Example counts and seeds: see fuzzlib (``make test``
runs about 700 examples, ``make test-all`` 50,000).
"""

from __future__ import annotations

import re
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from conftest import PREFIX, Server, serving, unique
from fuzzlib import (
    HANG_TIMEOUT_S, Guard, Hang, RawConnection, assert_error_shape, check_response, check_sentinels, chunked, fuzz_examples, new_client,
    profile, request_bytes, write_sentinels,
)

LONG_POLL_TIMEOUT_MS = 100  # long-polls at the tail answer quickly, so examples stay cheap
BIG_BODY_BYTES_MAX = 4 * 1024 * 1024

# -- the fuzzed server and its targets -----------------------------------------------

TARGET_SETUP: dict[str, tuple[dict[str, str], bytes]] = {
    "bytes": ({"content-type": "application/octet-stream"}, b"0123456789abcdef"),
    "text": ({"content-type": "text/plain"}, b"hello world"),
    "json": ({"content-type": "application/json"}, b'[{"a":1},{"b":[2,3]},"s"]'),
    "closed": ({"content-type": "text/plain", "stream-closed": "true"}, b"done"),
}
TARGET_KINDS = [*TARGET_SETUP, "fork", "missing"]


@dataclass
class Targets:
    """Fuzz-owned streams of each kind, re-created whenever an example deleted or closed one."""

    guard: Guard
    names: dict[str, str] = field(default_factory=dict)

    def ensure(self, kind: str) -> str:
        if kind == "missing":
            return unique("fz-missing")
        name = self.names.get(kind)
        if name is not None and self._intact(kind, name):
            return name
        name = self.names[kind] = unique(f"fz-{kind}")
        if kind == "fork":
            headers, body = {"stream-forked-from": PREFIX + self.ensure("bytes")}, b""
        else:
            headers, body = TARGET_SETUP[kind]
        resp = self.guard.client.put(PREFIX + name, content=body, headers=headers)
        assert resp.status_code == 201, f"target setup {kind}: {resp.status_code} {resp.text[:200]}"
        return name

    def _intact(self, kind: str, name: str) -> bool:
        resp = self.guard.client.head(PREFIX + name)
        return resp.status_code == 200 and (resp.headers.get("stream-closed") == "true") == (kind == "closed")


class Fuzz:
    """The fuzzed server, its guard and its targets (a plain class: Hypothesis prints
    dataclass fixtures field by field, sentinel bytes included)."""

    def __init__(self, guard: Guard, targets: Targets) -> None:
        self.guard, self.targets = guard, targets

    def __repr__(self) -> str:
        return f"Fuzz(server on port {self.guard.server.port})"

    @property
    def client(self) -> httpx.Client:
        return self.guard.client

    @property
    def server(self) -> Server:
        return self.guard.server


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    for server in serving(tmp, ["--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]):
        guard = Guard(server, new_client(server, keepalive=False), keepalive=False)
        guard.sentinels = write_sentinels(guard.client)
        try:
            yield Fuzz(guard, Targets(guard))
        finally:
            guard.client.close()
            guard.probe.close()


# -- value strategies ------------------------------------------------------------------

# Header bytes httpx will send (h11 refuses control characters); raw-socket tests cover the rest.
_HEADER_BYTES = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F))
NON_ASCII = st.text(min_size=1, max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass").strip())
HUGE = st.integers(100, 80_000).map(lambda n: b"v" * n)
INTEGERS = st.one_of(
    st.sampled_from([b"0", b"1", b"60", b"86400", b"-1", b"+1", b"01", b"1.0", b"1e3", b"0x10", b"9" * 17, b"9" * 40,
                     str(2**53 - 1).encode(), str(2**53).encode(), str(2**64).encode(), b"", b"\xd9\xa3", b"1,2"]),
    st.integers(0, 2**70).map(lambda n: str(n).encode()),
)
JUNK = st.one_of(_HEADER_BYTES, NON_ASCII, HUGE, st.sampled_from([b"", b"true", b"TRUE", b"null", b"\xff\xfe", b"a, b"]))

POSITION = st.integers(0, 80).map(lambda n: f"0000000000000000_{n:016d}")
OFFSETS = st.one_of(
    st.sampled_from(["-1", "now", "0000000000000000_0000000000000000", "0000000000000000_9999999999999999",
                     "9999999999999999_0000000000000000", "-2", "NOW", "0", "", "_", "0000000000000000_000000000000001x",
                     "0000000000000000_0000000000000000_0", "0000000000000001_0000000000000000", "%00", "∞", "x" * 5000]),
    POSITION,
    st.text(max_size=40),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from([b"application/json", b"text/plain", b"application/octet-stream", b"Application/JSON; charset=utf-8",
                     b"text/plain;charset=utf-8", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                     b"text/event-stream", b"application/json, text/plain", b"*/*", b"text/", b"/"]),
    JUNK,
)
EXPIRES = st.one_of(
    st.sampled_from([b"2099-01-01T00:00:00Z", b"2000-01-01T00:00:00Z", b"2099-01-01T00:00:00.123456789+05:30",
                     b"9999-12-31T23:59:59Z", b"0000-01-01T00:00:00Z", b"2099-01-01T00:00:00.9999999999Z",
                     b"2099-02-29T00:00:00Z", b"2099-01-01t00:00:00z", b"2099-01-01T00:00:00-23:59"]),
    st.datetimes().map(lambda d: d.isoformat().encode() + b"Z"),
    JUNK,
)


# Stream-Forked-From values; ``{kind}`` placeholders are filled with live target names.
FORKED_FROM = st.one_of(
    st.sampled_from([f"{{{k}}}".encode() for k in TARGET_KINDS]),
    st.sampled_from([b"{sentinel}", b"http://127.0.0.1/v1/stream/{bytes}", b"https://evil.example/v1/stream/{json}",
                         b"/v1/stream/../{bytes}", b"/v1/stream/", b"/v2/stream/x", b"/v1/stream/__ds/x", b"..", b"/",
                     b"/v1/stream/{bytes}/", b"/v1/stream//{bytes}", b"/v1/stream/%00", b"{bytes}"]),
    JUNK,
)


HEADER_VALUES: dict[str, st.SearchStrategy[bytes]] = {
    "content-type": CONTENT_TYPES,
    "stream-ttl": st.one_of(INTEGERS, JUNK),
    "stream-expires-at": EXPIRES,
    "stream-seq": st.one_of(st.sampled_from([b"1", b"2", b"a", b"z", b"0001", b""]), JUNK),
    "producer-id": st.one_of(st.sampled_from([b"p", b"q", b" ", b""]), JUNK),
    "producer-epoch": st.one_of(INTEGERS, JUNK),
    "producer-seq": st.one_of(INTEGERS, JUNK),
    "stream-closed": st.sampled_from([b"true", b"TRUE", b" true ", b"false", b"1", b"yes", b"", b"true, true"]),
    "stream-forked-from": FORKED_FROM,
    "stream-fork-offset": OFFSETS.map(lambda s: s.encode("utf-8")),
    "stream-fork-sub-offset": st.one_of(INTEGERS, JUNK),
    "if-none-match": st.one_of(st.sampled_from([b"*", b'"1:0:16"', b'W/"x"', b'"a", "b"', b""]), JUNK),
    "origin": st.sampled_from([b"https://app.example", b"null", b""]),
    "access-control-request-headers": st.one_of(st.sampled_from([b"content-type, stream-ttl"]), JUNK),
    "accept": st.sampled_from([b"text/event-stream", b"*/*", b"application/json"]),
    "x-junk": JUNK,
}
HEADERS = st.lists(
    st.sampled_from(sorted(HEADER_VALUES)).flatmap(lambda n: st.tuples(st.just(n), HEADER_VALUES[n])), max_size=8,
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND", "FOO", "get"])

# Path shapes below the prefix that httpx sends unchanged (dot segments are raw-socket only).
SUFFIXES = st.sampled_from(["", "", "", "/x", "%2Fx", "%00", "%ff", "%c0%ae", "%e2%80%ae", "/__ds", "%25", "☃",
                            "/" + "a" * 1100, "?", "#frag", ";params", "%2e"])
OTHER_PATHS = st.sampled_from(["/healthz", "/metrics", "/", "/v1/stream", "/v1/stream/", "/v1/stream/__ds/subscriptions/x",
                               "/V1/stream/a", "/v1/streams/a", "/healthz?x=1", "/metrics/x", "/v1/stream/%2F"])

QUERY_VALUES: dict[str, st.SearchStrategy[str]] = {
    "offset": OFFSETS,
    "live": st.one_of(st.sampled_from(["long-poll", "sse", "", "LONG-POLL", "true", "long_poll", "sse "]), st.text(max_size=8)),
    "cursor": st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=30)),
    "timeout": st.sampled_from(["1", "0", "-1", "999999"]),
    "x": st.text(max_size=10),
}
QUERIES = st.lists(
    st.sampled_from(sorted(QUERY_VALUES)).flatmap(lambda k: st.tuples(st.just(k), QUERY_VALUES[k], st.booleans())),
    max_size=4,
)


def render_query(pairs: list[tuple[str, str, bool]]) -> str:
    """``k=v`` pairs, each value either percent-encoded or written verbatim."""
    parts = [f"{k}={quote(v, safe='') if encode else v}" for k, v, encode in pairs]
    return "?" + "&".join(parts) if parts else ""


# -- bodies ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _nested(depth: int, opener: str, exact_digits: bool) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    core = "12345678901234567890" if exact_digits else "1"  # a 19+ digit run takes the exact-integer parser
    return (opener * depth + core + closer * depth).encode()


DEPTHS = st.one_of(st.integers(1, 3000), st.sampled_from([500, 900, 990, 1000, 1023, 1024, 1025, 5000, 100_000]))
DEEP = st.builds(_nested, DEPTHS, st.sampled_from(["[", '{"a":']), st.booleans())
HUGE_NUMBERS = st.one_of(
    st.integers(1, 50_000).map(lambda n: b"[" + b"9" * n + b"]"),
    st.sampled_from([b"[1e999]", b"[-1e400]", b"[1" + b"0" * 400 + b".5]", b"[-0]", b"[0.0000000000000000000001e-400]",
                     b"[123456789012345678901234567890, 1.5]", b"[18446744073709551616]", b"[-9223372036854775809]"]),
)
BAD_TEXT = st.sampled_from([
    b'["\xff"]', b'"\xc0\xae"', b'["\xed\xa0\x80"]', b'"\x80"', b'["\\ud800"]', b'"\\udfff"', b'{"\\ud800":1}',
    b'["\\ud800", 12345678901234567890]', b'["\\udc00\\ud800"]', b'"\\u0000"', b'["a\x00b"]',
])
ODD_JSON = st.sampled_from([
    b"NaN", b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1, NaN, 12345678901234567890]", b"[]", b"[[]]", b"", b" ",
    b"[,]", b"[1,]", b'{"a":1}{"b":2}', b'"unterminated', b"nul", b"[1]]", b"\t[1]\n", b'{"a":1,"a":2}',
])
JSON_BODIES = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    JSON_VALUES.map(lambda v: b"\xef\xbb\xbf" + json.dumps(v).encode()),  # BOM
    DEEP, HUGE_NUMBERS, BAD_TEXT, ODD_JSON,
    st.integers(1, BIG_BODY_BYTES_MAX // 8).map(lambda n: b"[" + b",".join([b"12345678"] * n) + b"]"),
)
BODIES = st.one_of(
    st.none(), st.binary(max_size=300), JSON_BODIES,
    st.integers(0, BIG_BODY_BYTES_MAX).map(lambda n: b"x" * n),
)


@st.composite
def chunkings(draw: st.DrawFn, body: bytes | None) -> list[bytes] | None:
    """None for a Content-Length body; else the chunks of a chunked one."""
    if body is None or not draw(st.booleans()):
        return None
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


# -- sending through httpx --------------------------------------------------------------------


def fill(template: bytes, fz: Fuzz) -> bytes:
    """Replaces ``{kind}`` placeholders with the names of live targets (and sentinels)."""
    for kind in TARGET_KINDS:
        marker = f"{{{kind}}}".encode()
        if marker in template:
            template = template.replace(marker, (PREFIX + fz.targets.ensure(kind)).encode() if kind != "missing"
                                        else (PREFIX + unique("fz-missing")).encode())
    if b"{sentinel}" in template:
        template = template.replace(b"{sentinel}", (PREFIX + fz.guard.sentinels[0].name).encode())
    return template


def exchange(client: httpx.Client, method: str, target: str, headers: list[tuple[bytes, bytes]],
             content: Any) -> tuple[int, httpx.Headers, bytes]:
    """One request; an SSE answer is read up to its first bytes, everything else fully."""
    try:
        with client.stream(method, target, headers=headers, content=content) as resp:
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                body = next(resp.iter_raw(), b"")
            else:
                body = resp.read()
            return resp.status_code, resp.headers, body
    except (httpx.LocalProtocolError, httpx.InvalidURL):
        reject()  # httpx itself refused to send this; the raw-socket tests cover such bytes
    except httpx.TimeoutException as exc:
        raise Hang(f"{method} {target[:120]!r}: no answer within {HANG_TIMEOUT_S}s ({exc!r})") from None
    except httpx.RemoteProtocolError as exc:
        raise AssertionError(f"{method} {target[:120]!r}: connection dropped without a response ({exc})") from None
    raise AssertionError("unreachable")


def send_and_check(fz: Fuzz, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes | None,
                   chunks: list[bytes] | None) -> tuple[int, httpx.Headers, bytes]:
    content = iter(chunks) if chunks is not None else body
    what = f"{method} {target[:200]!r} headers={[(k, v[:80]) for k, v in headers]} body={(body or b'')[:200]!r}"
    with fz.guard.example(what):
        status, resp_headers, resp_body = exchange(fz.client, method, target, headers, content)
        check_response(status, resp_headers, resp_body, method=method.upper(), path=target, context=what)
    return status, resp_headers, resp_body


# -- the tests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzRequest:
    kind: str
    method: str
    path_mode: str
    suffix: str
    other_path: str
    query: list[tuple[str, str, bool]]
    headers: list[tuple[str, bytes]]
    body: bytes | None
    chunks: list[bytes] | None


@st.composite
def requests(draw: st.DrawFn) -> FuzzRequest:
    body = draw(BODIES)
    return FuzzRequest(
        kind=draw(st.sampled_from(TARGET_KINDS)),
        method=draw(METHODS),
        path_mode=draw(st.sampled_from(["stream"] * 8 + ["suffix", "other"])),
        suffix=draw(SUFFIXES),
        other_path=draw(OTHER_PATHS),
        query=draw(QUERIES),
        headers=draw(HEADERS),
        body=body,
        chunks=draw(chunkings(body)),
    )


def render_target(fz: Fuzz, req: FuzzRequest) -> str:
    if req.path_mode == "other":
        return req.other_path + render_query(req.query)
    path = PREFIX + fz.targets.ensure(req.kind)
    if req.path_mode == "suffix":
        path += req.suffix
    return path + render_query(req.query)


@profile(fuzz_examples(0.45))
@given(req=requests())
def test_fuzz_requests(fuzz: Fuzz, req: FuzzRequest) -> None:
    """Any method, path, query, headers and body: a sane answer, and the server lives on."""
    headers = [(k.encode(), fill(v, fuzz) if k == "stream-forked-from" else v) for k, v in req.headers]
    send_and_check(fuzz, req.method, render_target(fuzz, req), headers, req.body, req.chunks)


def _strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def exact_int(literal: str) -> Any:
        # The server keeps integers of any length exactly; Python refuses to
        # convert more than 4300 digits, so very long ones compare as literals.
        return int(literal) if len(literal) < 4300 else ("integer literal", literal)

    return json.loads(data.decode("utf-8"), parse_constant=refuse, parse_int=exact_int)


def expected_messages(body: bytes) -> list[Any] | None:
    """The messages a JSON append of ``body`` stores (one array level flattened), or
    None when the body is not strict JSON by Python's reading."""
    try:
        value = _strict_json(body.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else [value]


@profile(fuzz_examples(0.2))
@given(method=st.sampled_from(["POST", "POST", "PUT"]), body=JSON_BODIES, chunks_seed=st.data())
def test_fuzz_json_bodies(fuzz: Fuzz, method: str, body: bytes, chunks_seed: st.DataObject) -> None:
    """JSON appends and creates: refused with 400, or stored so that reads are valid JSON arrays
    holding exactly the appended messages."""
    chunks = chunks_seed.draw(chunkings(body))
    name = fuzz.targets.ensure("json") if method == "POST" else unique("fz-jsoncreate")
    before = fuzz.client.head(PREFIX + name).headers.get("stream-next-offset", "-1")
    headers = [(b"content-type", b"application/json")]
    status, _, _ = send_and_check(fuzz, method, PREFIX + name, headers, body, chunks)
    if status not in (200, 201, 204):
        return
    read = fuzz.client.get(PREFIX + name, params={"offset": before})
    assert read.status_code == 200, read.text
    try:
        stored = _strict_json(read.content)
    except (ValueError, RecursionError) as exc:
        raise AssertionError(f"a JSON read is not strict JSON after accepting {body[:200]!r}: {exc}") from None
    assert isinstance(stored, list), stored
    expected = expected_messages(body)
    if expected is not None:
        assert stored == expected, f"stored {stored!r:.300} for body {body[:300]!r}"


# -- raw sockets: paths -------------------------------------------------------------------------

RAW_SEGMENTS = st.sampled_from([
    b"..", b".", b"%2e%2e", b"%2E%2E", b".%2e", b"%2e", b"..%2f", b"..%2F..", b"%c0%ae%c0%ae", b"%c0%af", b"%e0%80%ae",
    b"%f0%80%80%ae", b"..\\..", b"%5c", b"%00", b"%0d%0aX-Injected:%201", b"%ff", b"%fe%ff", b"%", b"%zz", b"%2",
    b"\xe2\x98\x83", b"\xff", b"__ds", b"a" * 300, b"", b"%2F", b"%252e%252e", b"%u002e", b"~", b"a;b", b"*",
])
RAW_PREFIXES = st.sampled_from([PREFIX.encode(), b"/v1/stream", b"//v1/stream/", b"/v1//stream/", b"/", b"",
                                b"http://127.0.0.1" + PREFIX.encode(), b"/healthz/", b"/metrics/", b"/V1/STREAM/"])


@st.composite
def raw_targets(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(RAW_SEGMENTS, min_size=1, max_size=6))
    target = draw(RAW_PREFIXES) + b"/".join(segments)
    if draw(st.booleans()):
        target += b"?offset=" + draw(st.sampled_from([b"-1", b"now", b"%00", b"..", b"%zz", b""]))
    if draw(st.integers(0, 20)) == 0:
        target += b"x" * draw(st.integers(1_000, 70_000))
    return target or b"/"


@profile(fuzz_examples(0.15))
@given(method=st.sampled_from([b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS"]), target=raw_targets())
def test_fuzz_raw_paths(fuzz: Fuzz, method: bytes, target: bytes) -> None:
    """Traversals, encodings, NULs, overlong UTF-8, very long and out-of-prefix paths."""
    headers = [(b"Host", b"127.0.0.1"), (b"Connection", b"close"), (b"Content-Type", b"text/plain"),
               (b"Content-Length", b"4")]
    what = f"{method!r} {target[:200]!r}"
    with fuzz.guard.example(what), RawConnection(fuzz.server.port) as conn:
        conn.send(request_bytes(method, target, headers, b"evil"))
        resp = conn.read_response(head_request=method == b"HEAD")
        if resp is not None:
            path = target.decode("latin-1")
            check_response(resp.status_code, resp.headers, resp.body, method=method.decode(), path=path, context=what)


# -- raw sockets: connection behaviours ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One connection: requests written back to back, then an ending."""

    requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]  # method, target kind, headers, body
    ending: str  # "close-header", "half-close", "reset", "keep", "garbage-after-close"
    truncate: int | None  # cut the last request's bytes to this many before the ending
    version: bytes
    trailing: bytes


SIMPLE = st.sampled_from([
    (b"GET", b"bytes", [], b""), (b"GET", b"json", [], b""), (b"HEAD", b"text", [], b""),
    (b"GET", b"bytes", [(b"X-Q", b"?offset=now&live=long-poll")], b""),
    (b"POST", b"text", [(b"Content-Type", b"text/plain")], b"appended"),
    (b"POST", b"json", [(b"Content-Type", b"application/json")], b'[{"p":1},{"p":2}]'),
    (b"PUT", b"missing", [(b"Content-Type", b"text/plain")], b"new"),
    (b"DELETE", b"missing", [], b""), (b"OPTIONS", b"bytes", [], b""), (b"GET", b"other", [], b""),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")], b"chunked"),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"),
                        (b"Content-Length", b"3")], b"smuggle"),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Content-Length", b"1"), (b"Content-Length", b"2")], b"xy"),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Expect", b"100-continue")], b"expect"),
    (b"get", b"bytes", [], b""), (b"GET", b"bytes", [(b"Transfer-Encoding", b"gzip, chunked")], b"x"),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"identity")], b"te"),
    (b"GET", b"bytes", [(b"Content-Length", b"-1")], b""), (b"GET", b"bytes", [(b"Content-Length", b"1 2")], b""),
    (b"POST", b"text", [(b"Content-Type", b"text/plain"), (b"Content-Length", b"0x10")], b"hex"),
])
FLOODS = st.one_of(
    st.integers(1, 3000).map(lambda n: [(b"X-Flood-%d" % i, b"v") for i in range(n)]),
    st.integers(1, 100_000).map(lambda n: [(b"X-Huge", b"h" * n)]),
    st.integers(1, 500).map(lambda n: [(b"Stream-TTL", b"60")] * n),
    st.just([(b"Bad Header", b"x")]), st.just([(b"X-Ctl", b"a\x00b")]), st.just([(b"X-Ctl", b"a\rb")]),
    st.just([(b":authority", b"x")]), st.just([(b"X-Folded", b"a\r\n b")]),
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    reqs = draw(st.lists(SIMPLE, min_size=1, max_size=4))
    if draw(st.integers(0, 4)) == 0:
        method, kind, headers, body = reqs[-1]
        reqs[-1] = (method, kind, headers + draw(FLOODS), body)
    total = len(_encode_all(reqs, b"HTTP/1.1", lambda kind: b"/x"))
    truncate = draw(st.none() | st.integers(0, max(0, total - 1)))
    return Plan(
        reqs,
        draw(st.sampled_from(["close-header", "half-close", "reset", "keep", "garbage-after-close"])),
        truncate,
        draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTPS/1.1"])),
        draw(st.sampled_from([b"", b"", b"garbage\r\n\r\n", b"\x00\xff\x16\x03\x01", b"GET / HTTP/1.1\r\n", b"\r\n\r\n"])),
    )


def _encode_one(req: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes], version: bytes,
                path_of: Any) -> bytes:
    method, kind, headers, body = req
    target = path_of(kind)
    extra = [h for h in headers if h[0] != b"X-Q"]
    target += b"".join(v for k, v in headers if k == b"X-Q")
    framing = {k.lower() for k, _ in extra}
    if b"transfer-encoding" in framing and b"chunked" in b" ".join(v for k, v in extra if k.lower() == b"transfer-encoding"):
        payload = chunked([body[:3], body[3:]])
    else:
        payload = body
        if b"content-length" not in framing and body:
            extra.append((b"Content-Length", str(len(body)).encode()))
    return request_bytes(method, target, [(b"Host", b"127.0.0.1"), *extra], payload, version)


def _encode_all(reqs: list, version: bytes, path_of: Any) -> bytes:
    return b"".join(_encode_one(r, version, path_of) for r in reqs)


def _path_of(fz: Fuzz) -> Any:
    def path_of(kind: bytes) -> bytes:
        if kind == b"other":
            return b"/healthz"
        return (PREFIX + fz.targets.ensure(kind.decode())).encode()

    return path_of


@profile(fuzz_examples(0.2))
@given(plan=plans())
def test_fuzz_connections(fuzz: Fuzz, plan: Plan) -> None:
    """Pipelining, half-closes, resets, truncation, odd versions, trailing garbage, CL+TE, floods.

    Every response that comes back is sane; the server answers or closes within 5 s
    (never leaves a half-closed or finished connection hanging); a request the server
    framed as CL+TE is never followed by a second response on the same connection
    (RFC 9112 6.1: it must close the connection after answering).
    """
    data = _encode_all(plan.requests, plan.version, _path_of(fuzz))
    if plan.ending == "close-header":
        data = data.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nConnection: close", 1)
    if plan.truncate is not None:
        data = data[: plan.truncate]
    data += plan.trailing
    what = f"plan={plan.ending} version={plan.version!r} truncate={plan.truncate} bytes={data[:600]!r}"
    with fuzz.guard.example(what), RawConnection(fuzz.server.port) as conn:
        conn.send(data)
        if plan.ending == "reset":
            conn.abort()
            return
        if plan.ending == "garbage-after-close":
            conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if plan.ending != "keep" or plan.truncate is not None or plan.trailing:
            conn.half_close()
        _read_all_responses(conn, plan, what)


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """(CL and TE both present, a transfer coding other than plain chunked)."""
    names = [k.lower() for k, _ in headers]
    codings = [v.strip().lower() for k, v in headers if k.lower() == b"transfer-encoding"]
    return b"content-length" in names and bool(codings), any(c != b"chunked" for c in codings)


def _read_all_responses(conn: RawConnection, plan: Plan, what: str) -> None:
    # A request line the server cannot parse is answered with a body even for
    # HEAD: the server cannot know the method of a request it could not read.
    parsable = re.fullmatch(rb"HTTP/[0-9]\.[0-9]", plan.version) is not None  # h11's rule
    for method, _, headers, _ in plan.requests:
        smuggling, odd_coding = _framing(headers)
        # A cut inside a Transfer-Encoding line leaves a coding that is not chunked.
        odd_coding = odd_coding or (plan.truncate is not None and any(
            k.lower() == b"transfer-encoding" for k, _ in headers))
        resp = conn.read_response(head_request=method == b"HEAD" and parsable)
        if resp is None:
            return  # the server closed: fine, as long as it did so in time
        if odd_coding and resp.status_code == 501:
            # RFC 9112 6.1: an unknown transfer coding earns a 501 (with the usual error body).
            assert_error_shape(resp.body, f"{resp.status_code} {resp.body[:300]!r} [{what}]")
        else:
            check_response(resp.status_code, resp.headers, resp.body, method=method.decode("latin-1"),
                           path="raw", context=what)
        if smuggling:
            # RFC 9112 6.1: after answering a CL+TE request the server must close the connection.
            try:
                rest = conn.read_until_eof()
            except Hang:
                raise AssertionError(f"connection still open {HANG_TIMEOUT_S}s after answering a CL+TE request "
                                     f"[{what}]") from None
            assert not rest, f"CL+TE request answered and the connection kept serving: {rest[:200]!r} [{what}]"
            return
    if plan.ending != "keep" or plan.truncate is not None or plan.trailing:
        conn.read_until_eof()  # half-closed by us: the server must finish and close, not hang


def test_sentinels_read_back_exactly_after_fuzzing(fuzz: Fuzz) -> None:
    """Runs last in this module: everything acknowledged before the fuzzing is intact."""
    assert fuzz.guard.healthy() is None
    check_sentinels(fuzz.client, fuzz.guard.sentinels)
    assert fuzz.guard.restart(signal.SIGTERM) == 0
    check_sentinels(fuzz.client, fuzz.guard.sentinels)
