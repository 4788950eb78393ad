"""HTTP round trips, in process: create, append, read, close, delete, HEAD.

PROTOCOL.md sections 4, 5, 8, 9 and 10, against the ASGI app driven by
tests/inproc.py (a fresh app and data directory per test). ``server`` and
``client`` here are that app and its client; tests/test_http_api.py keeps
the round trips that need Hypercorn and a socket.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

import pytest
import trio

from conftest import (
    PREFIX,
    assert_error,
    assert_security_headers,
    inproc_settings_for,
    offset_of,
    unique,
)
from inproc import InprocClient, InprocServer, Response, running_app

OCTET = "application/octet-stream"
TEXT = "text/plain"
JSON = "application/json"
ALL_BYTES = bytes(range(256))


@pytest.fixture
def server(inproc: InprocServer) -> InprocServer:
    return inproc


@pytest.fixture
def client(inproc: InprocServer) -> InprocClient:
    return inproc.client


async def read_all(client: InprocClient, url: str, offset: str = "-1", limit: int = 10_000) -> tuple[list[Response], str]:
    """Catch-up reads from ``offset`` until Stream-Up-To-Date; returns the responses and final offset."""
    responses = []
    for _ in range(limit):
        resp = await client.get(url, params={"offset": offset})
        assert resp.status_code == 200, resp.text
        responses.append(resp)
        offset = offset_of(resp)
        if resp.headers.get("stream-up-to-date") == "true":
            return responses, offset
    raise AssertionError("never reached Stream-Up-To-Date")


def path(name: str) -> str:
    return PREFIX + name


async def put(client: InprocClient, name: str, content_type: str | None = OCTET, body: bytes = b"", **headers: str) -> Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        hdrs["content-type"] = content_type
    return await client.put(path(name), content=body, headers=hdrs)


async def post(client: InprocClient, name: str, body: bytes, content_type: str | None = OCTET, **headers: str) -> Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        hdrs["content-type"] = content_type
    return await client.post(path(name), content=body, headers=hdrs)


async def get(client: InprocClient, name: str, **params: str) -> Response:
    return await client.get(path(name), params=params)


# -- create -----------------------------------------------------------------


@pytest.mark.parametrize("content_type", [OCTET, TEXT, "text/plain; charset=utf-8", JSON, "application/x-protobuf"])
async def test_create_returns_201_with_location_content_type_and_offset(client: InprocClient, server: InprocServer, content_type: str) -> None:
    name = unique()
    resp = await put(client, name, content_type)
    assert resp.status_code == 201, resp.text
    assert_security_headers(resp)
    assert resp.headers["location"] == server.stream_url(name)
    assert resp.headers["content-type"] == content_type
    empty_tail = offset_of(resp)
    assert empty_tail not in ("-1", "now")
    head = await client.head(path(name))
    assert head.status_code == 200
    assert head.headers["content-type"] == content_type
    assert offset_of(head) == empty_tail


async def test_create_without_content_type_defaults_to_octet_stream(client: InprocClient, name: str) -> None:
    resp = await put(client, name, None)
    assert resp.status_code == 201
    assert (await client.head(path(name))).headers["content-type"] == OCTET


async def test_create_with_initial_body_sets_tail(client: InprocClient, name: str) -> None:
    empty = await put(client, unique(), OCTET)
    resp = await put(client, name, OCTET, b"abc")
    assert resp.status_code == 201
    assert offset_of(resp) > offset_of(empty)
    read = await get(client, name, offset="-1")
    assert read.content == b"abc"
    assert offset_of(read) == offset_of(resp)


async def test_create_is_idempotent_for_matching_config(client: InprocClient, name: str) -> None:
    first = await put(client, name, TEXT, b"hello", stream_ttl="3600")
    assert first.status_code == 201
    again = await put(client, name, TEXT, stream_ttl="3600")
    assert again.status_code == 200, again.text
    assert "location" not in again.headers
    assert offset_of(again) == offset_of(first)
    assert (await get(client, name)).content == b"hello"  # the re-create did not touch the data


@pytest.mark.parametrize(
    "first, second",
    [
        ({"content_type": TEXT}, {"content_type": OCTET}),
        ({"content_type": TEXT}, {"content_type": TEXT, "stream_ttl": "60"}),
        ({"content_type": TEXT, "stream_ttl": "60"}, {"content_type": TEXT, "stream_ttl": "61"}),
        ({"content_type": TEXT, "stream_ttl": "60"}, {"content_type": TEXT}),
        ({"content_type": TEXT, "stream_expires_at": "2099-01-01T00:00:00Z"}, {"content_type": TEXT, "stream_expires_at": "2099-01-02T00:00:00Z"}),
        ({"content_type": TEXT}, {"content_type": TEXT, "stream_closed": "true"}),  # open vs closed
        ({"content_type": TEXT, "stream_closed": "true"}, {"content_type": TEXT}),  # closed vs open
    ],
    ids=["content-type", "ttl-added", "ttl-differs", "ttl-removed", "expires-differs", "open-vs-closed", "closed-vs-open"],
)
async def test_create_conflicts_on_different_config(client: InprocClient, name: str, first: dict, second: dict) -> None:
    assert (await put(client, name, **first)).status_code == 201
    assert_error(await put(client, name, **second), 409)


async def test_create_closed_matching_is_200(client: InprocClient, name: str) -> None:
    assert (await put(client, name, TEXT, b"done", stream_closed="true")).status_code == 201
    again = await put(client, name, TEXT, stream_closed="TRUE")
    assert again.status_code == 200
    assert again.headers.get("stream-closed") == "true"


async def test_create_closed_with_body_is_complete_and_final(client: InprocClient, name: str) -> None:
    resp = await put(client, name, TEXT, b"final answer", stream_closed="true")
    assert resp.status_code == 201
    assert resp.headers.get("stream-closed") == "true"
    read = await get(client, name, offset="-1")
    assert read.content == b"final answer"
    assert read.headers.get("stream-closed") == "true"
    assert read.headers.get("stream-up-to-date") == "true"
    refused = await post(client, name, b"more", TEXT)
    assert_error(refused, 409)
    assert refused.headers.get("stream-closed") == "true"
    assert offset_of(refused) == offset_of(resp)


async def test_create_expires_at_echoed_on_head(client: InprocClient, name: str) -> None:
    when = "2099-01-01T00:00:00Z"
    assert (await put(client, name, TEXT, stream_expires_at=when)).status_code == 201
    head = await client.head(path(name))
    assert head.headers.get("stream-expires-at") == when
    assert "stream-ttl" not in head.headers


# -- round trips --------------------------------------------------------------

ROUND_TRIPS = [
    # content type, pieces to append, the body a full read returns
    (OCTET, [ALL_BYTES, b"\x00", b"\r\n\r\n", b"tail"], ALL_BYTES + b"\x00\r\n\r\ntail"),
    (TEXT, ["héllo ".encode(), "wörld 🌍\n".encode(), b"line\r\nnext"], "héllo wörld 🌍\nline\r\nnext".encode()),
    ("text/csv", [b"a,b\n", b"1,2\n"], b"a,b\n1,2\n"),
    (JSON, [b'{"a":1}', b'[2,"three"]', b"  null ", b'[[4]]'], b'[{"a":1},2,"three",null,[4]]'),
]


@pytest.mark.parametrize("content_type, pieces, expected", ROUND_TRIPS, ids=["bytes", "text", "csv", "json"])
async def test_append_read_round_trip(client: InprocClient, name: str, content_type: str, pieces: list[bytes], expected: bytes) -> None:
    created = await put(client, name, content_type)
    offsets = [offset_of(created)]
    for piece in pieces:
        resp = await post(client, name, piece, content_type)
        assert resp.status_code == 204, resp.text
        assert_security_headers(resp)
        assert resp.content == b""
        offsets.append(offset_of(resp))
    # Offsets are opaque, strictly increasing, and sort lexicographically.
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    read = await get(client, name, offset="-1")
    assert read.status_code == 200
    assert read.headers["content-type"] == content_type
    assert read.headers.get("stream-up-to-date") == "true"
    assert "stream-closed" not in read.headers
    assert offset_of(read) == offsets[-1]
    if content_type == JSON:
        assert json.loads(read.content) == json.loads(expected)
    else:
        assert read.content == expected
    # No offset parameter is the same as -1.
    assert (await get(client, name)).content == read.content
    # Reading from each returned offset yields exactly the data appended after it.
    for i, off in enumerate(offsets):
        part = await get(client, name, offset=off)
        assert part.status_code == 200
        assert offset_of(part) == offsets[-1]
        if content_type == JSON:
            assert isinstance(json.loads(part.content), list)
        else:
            assert part.content == b"".join(pieces[i:])


async def test_read_at_tail_is_empty_up_to_date(client: InprocClient, name: str) -> None:
    tail = offset_of(await put(client, name, OCTET, b"xyz"))
    resp = await get(client, name, offset=tail)
    assert resp.status_code == 200
    assert resp.content == b""
    assert offset_of(resp) == tail
    assert resp.headers.get("stream-up-to-date") == "true"
    assert "stream-closed" not in resp.headers


async def test_json_read_at_tail_is_empty_array(client: InprocClient, name: str) -> None:
    tail = offset_of(await put(client, name, JSON, b'{"x":1}'))
    resp = await get(client, name, offset=tail)
    assert resp.status_code == 200
    assert resp.content.strip() == b"[]"


@pytest.mark.parametrize(
    "body, messages",
    [
        (b'{"event": "created"}', [{"event": "created"}]),
        (b'[{"event": "a"}, {"event": "b"}]', [{"event": "a"}, {"event": "b"}]),
        (b"[[1,2], [3,4]]", [[1, 2], [3, 4]]),
        (b"[[[1,2,3]]]", [[[1, 2, 3]]]),
        (b'"just a string"', ["just a string"]),
        (b"42", [42]),
        (b"true", [True]),
        (b"null", [None]),
        (b"[null]", [None]),
        (b'[{}, [], ""]', [{}, [], ""]),
        ('{"ü": "日本"}'.encode(), [{"ü": "日本"}]),
    ],
)
async def test_json_post_flattens_one_level(client: InprocClient, name: str, body: bytes, messages: list) -> None:
    assert (await put(client, name, JSON)).status_code == 201
    resp = await post(client, name, body, JSON)
    assert resp.status_code == 204, resp.text
    assert (await post(client, name, b'"sentinel"', JSON)).status_code == 204
    read = await get(client, name, offset="-1")
    assert read.headers["content-type"] == JSON
    assert json.loads(read.content) == messages + ["sentinel"]


@pytest.mark.parametrize("number", ["18446744073709551617", "-9223372036854775809", "123456789012345678901234567890"])
async def test_json_big_integers_are_kept_exactly_or_refused(client: InprocClient, name: str, number: str) -> None:
    """A JSON stream must not silently change a message: an integer the server cannot
    represent exactly is either stored exactly or refused with 400 — never rounded to a float."""
    await put(client, name, JSON)
    resp = await post(client, name, f'{{"id": {number}}}'.encode(), JSON)
    if resp.status_code == 400:
        assert_error(resp, 400)
        return
    assert resp.status_code == 204, resp.text
    read = (await get(client, name)).content
    assert json.loads(read) == [{"id": int(number)}], f"stored {number} came back as {read!r}"


async def test_json_put_with_array_body_flattens(client: InprocClient, name: str) -> None:
    assert (await put(client, name, JSON, b'[{"a":1},{"b":2}]')).status_code == 201
    assert json.loads((await get(client, name)).content) == [{"a": 1}, {"b": 2}]


async def test_json_put_empty_array_creates_empty_stream(client: InprocClient, name: str) -> None:
    resp = await put(client, name, JSON, b"[]")
    assert resp.status_code == 201, resp.text
    read = await get(client, name, offset="-1")
    assert read.status_code == 200
    assert json.loads(read.content) == []
    assert offset_of(read) == offset_of(resp)


@pytest.mark.parametrize("body", [b"[]", b" [ ] ", b"[]\n"])
async def test_json_post_empty_array_is_400(client: InprocClient, name: str, body: bytes) -> None:
    tail = offset_of(await put(client, name, JSON))
    assert_error(await post(client, name, body, JSON), 400)
    assert offset_of(await client.head(path(name))) == tail


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1,", b"{'a': 1}", b"undefined", b"NaN", b'{"a":1} {"b":2}', b"[1] [2]", b"\xff\xfe", b'"\xed\xa0\x80"', b"01"],
    ids=["open-brace", "open-array", "single-quotes", "undefined", "nan", "two-objects", "two-arrays", "not-utf8", "lone-surrogate", "leading-zero"],
)
async def test_json_invalid_post_is_400_and_stores_nothing(client: InprocClient, name: str, body: bytes) -> None:
    tail = offset_of(await put(client, name, JSON, b'{"ok":true}'))
    assert_error(await post(client, name, body, JSON), 400)
    assert offset_of(await client.head(path(name))) == tail
    assert json.loads((await get(client, name)).content) == [{"ok": True}]


async def test_json_invalid_put_is_400_and_creates_nothing(client: InprocClient, name: str) -> None:
    assert_error(await put(client, name, JSON, b"{nope"), 400)
    assert (await client.head(path(name))).status_code == 404
    assert (await put(client, name, JSON)).status_code == 201


# -- HEAD ---------------------------------------------------------------------


async def test_head_reports_metadata_without_body(client: InprocClient, name: str) -> None:
    created = await put(client, name, TEXT, b"abc", stream_ttl="3600")
    head = await client.head(path(name))
    assert head.status_code == 200
    assert head.content == b""
    assert_security_headers(head)
    assert head.headers["content-type"] == TEXT
    assert offset_of(head) == offset_of(created)
    assert head.headers.get("stream-ttl") == "3600"
    assert "stream-closed" not in head.headers
    assert "no-store" in head.headers.get("cache-control", "")
    closed = await post(client, name, b"", None, stream_closed="true")
    head = await client.head(path(name))
    assert head.headers.get("stream-closed") == "true"
    assert offset_of(head) == offset_of(closed) == offset_of(created)


# -- Stream-Seq ---------------------------------------------------------------


async def test_stream_seq_must_strictly_increase_lexicographically(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT)
    assert (await post(client, name, b"a", TEXT, stream_seq="0001")).status_code == 204
    assert (await post(client, name, b"b", TEXT, stream_seq="0002")).status_code == 204
    assert_error(await post(client, name, b"dup", TEXT, stream_seq="0002"), 409)
    assert_error(await post(client, name, b"back", TEXT, stream_seq="0001"), 409)
    # Byte-wise lexicographic, not numeric: "9" > "0002", then "10" < "9".
    assert (await post(client, name, b"c", TEXT, stream_seq="9")).status_code == 204
    assert_error(await post(client, name, b"numeric", TEXT, stream_seq="10"), 409)
    assert (await post(client, name, b"d", TEXT, stream_seq="9a")).status_code == 204
    # Appends without Stream-Seq are still accepted and do not reset the sequence.
    assert (await post(client, name, b"e", TEXT)).status_code == 204
    assert_error(await post(client, name, b"old", TEXT, stream_seq="9"), 409)
    assert (await get(client, name)).content == b"abcde"


# -- closure ----------------------------------------------------------------


async def test_close_only_then_idempotent_close_and_appends_refused(client: InprocClient, name: str) -> None:
    tail = offset_of(await put(client, name, TEXT, b"data"))
    # Reading at the tail of the open stream: up to date, not closed.
    open_read = await get(client, name, offset=tail)
    assert "stream-closed" not in open_read.headers
    close = await post(client, name, b"", None, stream_closed="true")
    assert close.status_code == 204
    assert close.headers.get("stream-closed") == "true"
    assert offset_of(close) == tail
    # Close-only again is idempotent, even with a (ignored) Content-Type.
    again = await post(client, name, b"", "application/something-else", stream_closed="true")
    assert again.status_code == 204
    assert again.headers.get("stream-closed") == "true"
    assert offset_of(again) == tail
    # Appends are refused with 409 + Stream-Closed + the final offset.
    for headers in ({}, {"stream_closed": "true"}):
        refused = await post(client, name, b"more", TEXT, **headers)
        assert_error(refused, 409)
        assert refused.headers.get("stream-closed") == "true"
        assert offset_of(refused) == tail
    # Closed precedes content-type mismatch.
    mismatch = await post(client, name, b"more", OCTET)
    assert mismatch.status_code == 409
    assert mismatch.headers.get("stream-closed") == "true"
    # EOF at the tail, data still readable from the start.
    eof = await get(client, name, offset=tail)
    assert eof.status_code == 200 and eof.content == b""
    assert eof.headers.get("stream-closed") == "true"
    assert eof.headers.get("stream-up-to-date") == "true"
    full = await get(client, name, offset="-1")
    assert full.content == b"data"
    assert full.headers.get("stream-closed") == "true"


async def test_append_and_close_is_atomic(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT, b"a")
    resp = await post(client, name, b"final", TEXT, stream_closed="true")
    assert resp.status_code == 204
    assert resp.headers.get("stream-closed") == "true"
    read = await get(client, name)
    assert read.content == b"afinal"
    assert read.headers.get("stream-closed") == "true"
    assert offset_of(read) == offset_of(resp)


@pytest.mark.parametrize("value", ["false", "yes", "1", "", "true-ish", "on"])
async def test_non_true_stream_closed_values_are_ignored(client: InprocClient, name: str, value: str) -> None:
    assert (await put(client, name, TEXT, stream_closed=value)).status_code == 201
    assert "stream-closed" not in (await client.head(path(name))).headers
    resp = await post(client, name, b"x", TEXT, stream_closed=value)
    assert resp.status_code == 204
    assert "stream-closed" not in resp.headers
    assert (await post(client, name, b"y", TEXT)).status_code == 204
    assert (await get(client, name)).content == b"xy"


# -- delete -----------------------------------------------------------------


async def test_delete_then_everything_is_404_and_recreate_is_empty(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT, b"old data")
    await get(client, name)  # warm any read cache
    resp = await client.delete(path(name))
    assert resp.status_code == 204
    assert_security_headers(resp)
    assert_error(await get(client, name), 404)
    assert (await client.head(path(name))).status_code == 404
    assert_error(await post(client, name, b"x", TEXT), 404)
    assert_error(await client.delete(path(name)), 404)
    # A new stream at the same path never shows the old one's data.
    assert (await put(client, name, TEXT)).status_code == 201
    fresh = await get(client, name, offset="-1")
    assert fresh.content == b""
    assert (await post(client, name, b"new", TEXT)).status_code == 204
    assert (await get(client, name, offset="-1")).content == b"new"


# -- ETag / caching -------------------------------------------------------------


async def test_etag_if_none_match_304_and_changes(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT, b"one")
    first = await get(client, name, offset="-1")
    etag = first.headers.get("etag")
    assert etag
    assert "public" in first.headers.get("cache-control", "") or "private" in first.headers.get("cache-control", "")
    cached = await client.get(path(name), params={"offset": "-1"}, headers={"if-none-match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert_security_headers(cached)
    assert (await client.get(path(name), params={"offset": "-1"}, headers={"if-none-match": '"other"'})).status_code == 200
    # New data changes the range, so the ETag changes too.
    await post(client, name, b"two", TEXT)
    second = await client.get(path(name), params={"offset": "-1"}, headers={"if-none-match": etag})
    assert second.status_code == 200
    assert second.content == b"onetwo"
    assert second.headers["etag"] != etag


async def test_etag_changes_on_closure_so_304_never_hides_eof(client: InprocClient, name: str) -> None:
    tail = offset_of(await put(client, name, TEXT, b"data"))
    for offset in ("-1", tail):
        etag = (await get(client, name, offset=offset)).headers["etag"]
        assert (await client.get(path(name), params={"offset": offset}, headers={"if-none-match": etag})).status_code == 304
    at_tail_etag = (await get(client, name, offset=tail)).headers["etag"]
    full_etag = (await get(client, name, offset="-1")).headers["etag"]
    assert (await post(client, name, b"", None, stream_closed="true")).status_code == 204
    for offset, etag in ((tail, at_tail_etag), ("-1", full_etag)):
        after = await client.get(path(name), params={"offset": offset}, headers={"if-none-match": etag})
        assert after.status_code == 200, f"closure hidden by 304 at offset {offset}"
        assert after.headers.get("stream-closed") == "true"
        assert after.headers["etag"] != etag
        assert (await client.get(path(name), params={"offset": offset}, headers={"if-none-match": after.headers["etag"]})).status_code == 304


# -- offset=now -----------------------------------------------------------------


@pytest.mark.parametrize("content_type, data, empty", [(OCTET, b"abc", b""), (TEXT, b"abc", b""), (JSON, b"[1,2]", b"[]")])
async def test_offset_now_catch_up(client: InprocClient, name: str, content_type: str, data: bytes, empty: bytes) -> None:
    tail = offset_of(await put(client, name, content_type, data))
    resp = await get(client, name, offset="now")
    assert resp.status_code == 200
    assert resp.content.strip() == empty
    assert offset_of(resp) == tail
    assert resp.headers.get("stream-up-to-date") == "true"
    assert "no-store" in resp.headers.get("cache-control", "")
    assert "stream-closed" not in resp.headers
    await post(client, name, b"", None, stream_closed="true")
    closed = await get(client, name, offset="now")
    assert closed.status_code == 200
    assert closed.content.strip() == empty
    assert closed.headers.get("stream-closed") == "true"
    assert closed.headers.get("stream-up-to-date") == "true"
    assert offset_of(closed) == tail


# -- chunked reads (--read-chunk-bytes-max 16) ------------------------------------


async def test_chunked_byte_reads_reassemble_exactly(tmp_path: Path) -> None:
    name = unique()
    data = bytes(range(256)) * 2 + "é🌍".encode() * 5
    async with running_app(inproc_settings_for(tmp_path, read_chunk_bytes_max=16)) as chunk_server:
        c = chunk_server.client
        assert (await put(c, name, OCTET, data[:100])).status_code == 201
        assert (await post(c, name, data[100:], OCTET)).status_code == 204
        assert (await post(c, name, b"", None, stream_closed="true")).status_code == 204
        responses, final = await read_all(c, path(name))
        assert b"".join(r.content for r in responses) == data
        assert len(responses) >= len(data) // 16
        for r in responses[:-1]:
            assert 0 < len(r.content) <= 16
            assert "stream-up-to-date" not in r.headers  # partial chunk: more data exists
            assert "stream-closed" not in r.headers
        assert responses[-1].headers.get("stream-closed") == "true"
        assert final == offset_of(await c.head(path(name)))
        offsets = [offset_of(r) for r in responses]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


async def test_chunked_json_reads_return_whole_messages(tmp_path: Path) -> None:
    name = unique()
    messages = [{"i": i, "pad": "x" * (i * 7 % 40)} for i in range(12)] + ["a", 1, None, [1, [2]]]
    async with running_app(inproc_settings_for(tmp_path, read_chunk_bytes_max=16)) as chunk_server:
        c = chunk_server.client
        assert (await put(c, name, JSON, json.dumps(messages[:3]).encode())).status_code == 201
        for m in messages[3:]:
            # Wrap in an array so arrays stay single messages.
            assert (await post(c, name, json.dumps([m]).encode(), JSON)).status_code == 204
        responses, _ = await read_all(c, path(name))
        got = []
        for r in responses:
            part = json.loads(r.content)  # every chunk is a complete JSON array
            assert isinstance(part, list) and part, r.content
            got.extend(part)
        assert got == messages
        assert len(responses) > 1


# -- idempotent producers --------------------------------------------------------


def producer(pid: str, epoch: int, seq: int) -> dict[str, str]:
    return {"producer_id": pid, "producer_epoch": str(epoch), "producer_seq": str(seq)}


async def test_idempotent_producer_dedupes_and_fences(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT)
    first = await post(client, name, b"a", TEXT, **producer("p1", 0, 0))
    assert first.status_code == 200, first.text
    assert first.headers.get("producer-epoch") == "0"
    assert first.headers.get("producer-seq") == "0"
    tail_after_a = offset_of(first)
    dup = await post(client, name, b"a", TEXT, **producer("p1", 0, 0))
    assert dup.status_code == 204
    assert dup.headers.get("producer-epoch") == "0"
    assert (await post(client, name, b"b", TEXT, **producer("p1", 0, 1))).status_code == 200
    assert (await post(client, name, b"b", TEXT, **producer("p1", 0, 1))).status_code == 204
    assert (await post(client, name, b"a", TEXT, **producer("p1", 0, 0))).status_code == 204  # older retry
    gap = await post(client, name, b"d", TEXT, **producer("p1", 0, 3))
    assert_error(gap, 409)
    assert gap.headers.get("producer-expected-seq") == "2"
    assert gap.headers.get("producer-received-seq") == "3"
    # A second producer is independent.
    assert (await post(client, name, b"X", TEXT, **producer("p2", 0, 0))).status_code == 200
    # New epoch must start at seq 0; then the old epoch is fenced.
    assert_error(await post(client, name, b"e", TEXT, **producer("p1", 1, 1)), 400)
    assert (await post(client, name, b"e", TEXT, **producer("p1", 1, 0))).status_code == 200
    stale = await post(client, name, b"z", TEXT, **producer("p1", 0, 2))
    assert_error(stale, 403)
    assert stale.headers.get("producer-epoch") == "1"
    assert (await get(client, name)).content == b"abXe"
    assert offset_of(first) == tail_after_a


async def test_idempotent_producer_close_retry_is_deduplicated(client: InprocClient, name: str) -> None:
    await put(client, name, TEXT)
    closing = await post(client, name, b"last", TEXT, stream_closed="true", **producer("p", 0, 0))
    assert closing.status_code in (200, 204)
    assert closing.headers.get("stream-closed") == "true"
    retry = await post(client, name, b"last", TEXT, stream_closed="true", **producer("p", 0, 0))
    assert retry.status_code == 204
    assert retry.headers.get("stream-closed") == "true"
    other = await post(client, name, b"more", TEXT, **producer("p", 0, 1))
    assert other.status_code == 409
    assert other.headers.get("stream-closed") == "true"
    assert (await get(client, name)).content == b"last"


# -- chunked (streaming) request bodies ---------------------------------------------


async def test_chunked_request_body_append_is_byte_exact(client: InprocClient, name: str) -> None:
    await put(client, name, OCTET)
    pieces = [ALL_BYTES, b"", b"\r\n0\r\n\r\n", bytes(reversed(ALL_BYTES)) * 40, b"\x00"]

    def gen():
        yield from pieces

    resp = await client.post(path(name), content=gen(), headers={"content-type": OCTET})
    assert resp.status_code == 204, resp.text
    assert (await get(client, name)).content == b"".join(pieces)


async def test_chunked_request_body_create_is_byte_exact(client: InprocClient, name: str) -> None:
    resp = await client.put(path(name), content=iter([b"abc", b"\xff" * 1000, b"def"]), headers={"content-type": OCTET})
    assert resp.status_code == 201, resp.text
    assert (await get(client, name)).content == b"abc" + b"\xff" * 1000 + b"def"


async def test_json_chunked_request_body(client: InprocClient, name: str) -> None:
    await put(client, name, JSON)
    resp = await client.post(path(name), content=iter([b'[{"a":', b"1},", b'{"b":2}]']), headers={"content-type": JSON})
    assert resp.status_code == 204, resp.text
    assert json.loads((await get(client, name)).content) == [{"a": 1}, {"b": 2}]


# -- concurrency ------------------------------------------------------------------------


async def test_concurrent_creates_and_appends_are_serialised(client: InprocClient, name: str) -> None:
    creates: list[int] = []
    pieces = [f"<{i:02d}>".encode() for i in range(24)]
    appends: dict[bytes, Response] = {}
    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(lambda: _record_status(creates, put(client, name, OCTET)))
    assert sorted(creates) == [200] * 11 + [201]

    async def append(piece: bytes) -> None:
        appends[piece] = await post(client, name, piece, OCTET)

    async with trio.open_nursery() as nursery:
        for piece in pieces:
            nursery.start_soon(append, piece)
    assert all(r.status_code == 204 for r in appends.values()), [r.status_code for r in appends.values()]
    tails = [offset_of(r) for r in appends.values()]
    assert len(set(tails)) == len(tails), "two appends were acknowledged with the same offset"
    body = (await get(client, name)).content
    assert len(body) == 4 * len(pieces)
    stored = [body[i:i + 4] for i in range(0, len(body), 4)]
    assert sorted(stored) == sorted(pieces)
    # Each acknowledged offset is exactly where that piece ends in the stream.
    for piece, resp in appends.items():
        assert (await get(client, name, offset=offset_of(resp))).content == body[body.index(piece) + 4:]


async def _record_status(into: list[int], request: Awaitable[Response]) -> None:
    into.append((await request).status_code)
