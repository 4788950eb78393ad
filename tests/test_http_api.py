"""HTTP round trips against a real server: the few that need Hypercorn and a socket.

A create (Location from the Host header Hypercorn passes on), the basic
append/read round trip, chunked request bodies as h11
frames them, and concurrent clients on real connections. Everything else
about PROTOCOL.md sections 4, 5, 8, 9 and 10 is tested in process
(tests/test_inproc_api.py); each test uses its own stream.
"""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import (
    PREFIX,
    Server,
    assert_security_headers,
    offset_of,
    raw_request,
    unique,
)

OCTET = "application/octet-stream"
TEXT = "text/plain"
JSON = "application/json"
ALL_BYTES = bytes(range(256))


def path(name: str) -> str:
    return PREFIX + name


def put(client: httpx.Client, name: str, content_type: str | None = OCTET, body: bytes = b"", **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        hdrs["content-type"] = content_type
    return client.put(path(name), content=body, headers=hdrs)


def post(client: httpx.Client, name: str, body: bytes, content_type: str | None = OCTET, **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        hdrs["content-type"] = content_type
    return client.post(path(name), content=body, headers=hdrs)


def get(client: httpx.Client, name: str, **params: str) -> httpx.Response:
    return client.get(path(name), params=params)


# -- create -----------------------------------------------------------------


@pytest.mark.parametrize("content_type", [OCTET, TEXT, "text/plain; charset=utf-8", JSON, "application/x-protobuf"])
def test_create_returns_201_with_location_content_type_and_offset(client: httpx.Client, server: Server, content_type: str) -> None:
    name = unique()
    resp = put(client, name, content_type)
    assert resp.status_code == 201, resp.text
    assert_security_headers(resp)
    assert resp.headers["location"] == server.stream_url(name)
    assert resp.headers["content-type"] == content_type
    empty_tail = offset_of(resp)
    assert empty_tail not in ("-1", "now")
    head = client.head(path(name))
    assert head.status_code == 200
    assert head.headers["content-type"] == content_type
    assert offset_of(head) == empty_tail


# -- round trips --------------------------------------------------------------

def test_append_read_round_trip(client: httpx.Client, name: str) -> None:
    """Bytes through h11 both ways, offsets from real responses (every content type: test_inproc_api.py)."""
    created = put(client, name, OCTET, ALL_BYTES[:100])
    appended = post(client, name, ALL_BYTES[100:] + b"\r\n0\r\n\r\n", OCTET)
    assert appended.status_code == 204 and appended.content == b"", appended.text
    assert offset_of(created) < offset_of(appended)
    whole = get(client, name, offset="-1")
    assert whole.content == ALL_BYTES + b"\r\n0\r\n\r\n"
    assert whole.headers.get("stream-up-to-date") == "true" and offset_of(whole) == offset_of(appended)
    assert get(client, name, offset=offset_of(created)).content == ALL_BYTES[100:] + b"\r\n0\r\n\r\n"
    json_name = unique()
    put(client, json_name, JSON, b'{"a":1}')
    assert post(client, json_name, b'[2,"three"]', JSON).status_code == 204
    assert json.loads(get(client, json_name).content) == [{"a": 1}, 2, "three"]


# -- chunked (streaming) request bodies ---------------------------------------------


def test_chunked_request_body_append_is_byte_exact(client: httpx.Client, name: str) -> None:
    put(client, name, OCTET)
    pieces = [ALL_BYTES, b"", b"\r\n0\r\n\r\n", bytes(reversed(ALL_BYTES)) * 40, b"\x00"]

    def gen():
        yield from pieces

    resp = client.post(path(name), content=gen(), headers={"content-type": OCTET})
    assert resp.status_code == 204, resp.text
    assert get(client, name).content == b"".join(pieces)


def test_hand_made_chunked_body_with_odd_chunks(server: Server, client: httpx.Client, name: str) -> None:
    put(client, name, TEXT, b"<")
    chunked = b"1\r\na\r\n3;ext=1\r\nbcd\r\nA\r\n0123456789\r\n0\r\n\r\n"
    resp = raw_request(server, "POST", path(name), [("Content-Type", TEXT), ("Transfer-Encoding", "chunked")], raw_body=chunked)
    assert resp.status_code == 204, resp.body
    assert get(client, name).content == b"<abcd0123456789"


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_creates_and_appends_are_serialised(server: Server, client: httpx.Client, name: str) -> None:
    import concurrent.futures

    url = server.stream_url(name)
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        creates = list(pool.map(lambda _: httpx.put(url, headers={"content-type": OCTET}, timeout=10).status_code, range(12)))
        assert sorted(creates) == [200] * 11 + [201]
        pieces = [f"<{i:02d}>".encode() for i in range(24)]
        appends = list(pool.map(lambda p: httpx.post(url, content=p, headers={"content-type": OCTET}, timeout=10), pieces))
    assert all(r.status_code == 204 for r in appends), [r.status_code for r in appends]
    tails = [offset_of(r) for r in appends]
    assert len(set(tails)) == len(tails), "two appends were acknowledged with the same offset"
    body = get(client, name).content
    assert len(body) == 4 * len(pieces)
    stored = [body[i:i + 4] for i in range(0, len(body), 4)]
    assert sorted(stored) == sorted(pieces)
    # Each acknowledged offset is exactly where that piece ends in the stream.
    for piece, resp in zip(pieces, appends):
        assert get(client, name, offset=offset_of(resp)).content == body[body.index(piece) + 4:]
