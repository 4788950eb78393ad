"""Table-driven tests of the pure protocol core: no sockets, no nursery."""

from __future__ import annotations

import random

import orjson
import pytest

from trio_streams.protocol import cursor, jsonmode, sse, urls
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import (
    AppendRequest, CreateRequest, Expiry, ForkSpec, Producer, flag, is_sse_text, media_type,
    parse_append, parse_create, parse_expiry, parse_producer,
)
from trio_streams.protocol.offsets import NOW, START, format_offset, parse_offset
from trio_streams.protocol.rules import decide_append, decide_create
from trio_streams.protocol.state import Appended, Created, Deleted, ForkOrigin, ProducerState, StreamState, StreamTable


# -- offsets ---------------------------------------------------------------

@pytest.mark.parametrize("position", [0, 1, 99, 10**15, 10**16 - 1])
def test_offset_round_trip(position: int) -> None:
    assert parse_offset(format_offset(position)) == position


def test_offsets_sort_like_positions() -> None:
    positions = sorted(random.Random(7).sample(range(10**12), 200))
    assert sorted(format_offset(p) for p in positions) == [format_offset(p) for p in positions]


@pytest.mark.parametrize("token", ["", " ", "abc", "0_0", "1,2", "../x", "0000000000000000_000000000000000a",
                                   "0000000000000001_0000000000000000", "0000000000000000_0000000000000000\n",
                                   "-2", "NOW", "0000000000000000/0000000000000000"])
def test_malformed_offsets_are_400(token: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_offset(token)
    assert info.value.status == 400


def test_sentinels() -> None:
    assert parse_offset("-1") == START
    assert parse_offset("now") == NOW


# -- headers -----------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("True", True), (" true ", True),
    ("false", False), ("yes", False), ("1", False), ("", False),
])
def test_stream_closed_flag(value: str, expected: bool) -> None:
    assert flag({"stream-closed": value}, "stream-closed") is expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, Expiry()),
    ({"stream-ttl": "0"}, Expiry(ttl_s=0)),
    ({"stream-ttl": "3600"}, Expiry(ttl_s=3600)),
    ({"stream-expires-at": "2030-01-01T00:00:00Z"}, Expiry(None, "2030-01-01T00:00:00Z", 1893456000.0)),
    ({"stream-expires-at": "2030-01-01T01:00:00+01:00"}, Expiry(None, "2030-01-01T01:00:00+01:00", 1893456000.0)),
    ({"stream-expires-at": "2030-01-01T00:00:00.123456789Z"}, Expiry(None, "2030-01-01T00:00:00.123456789Z", 1893456000.123456)),
])
def test_valid_expiry(headers: dict[str, str], expected: Expiry) -> None:
    assert parse_expiry(headers) == expected


@pytest.mark.parametrize("headers", [
    {"stream-ttl": "+3600"}, {"stream-ttl": "03600"}, {"stream-ttl": "3600.0"}, {"stream-ttl": "3.6e3"},
    {"stream-ttl": "-1"}, {"stream-ttl": ""}, {"stream-ttl": "abc"},
    {"stream-expires-at": "tomorrow"}, {"stream-expires-at": "2030-01-01"}, {"stream-expires-at": "2030-13-01T00:00:00Z"},
    {"stream-expires-at": "2030-01-01T00:00:00"},
    {"stream-ttl": "60", "stream-expires-at": "2030-01-01T00:00:00Z"},
])
def test_invalid_expiry_is_400(headers: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_expiry(headers)
    assert info.value.status == 400


@pytest.mark.parametrize("headers", [
    {"producer-id": "p"},
    {"producer-id": "p", "producer-epoch": "0"},
    {"producer-id": "", "producer-epoch": "0", "producer-seq": "0"},
    {"producer-id": "p", "producer-epoch": "1abc", "producer-seq": "0"},
    {"producer-id": "p", "producer-epoch": "0", "producer-seq": "-1"},
    {"producer-id": "p", "producer-epoch": "0", "producer-seq": "1.5"},
    {"producer-id": "p", "producer-epoch": str(2**53), "producer-seq": "0"},
])
def test_invalid_producer_headers_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_producer(headers)
    assert info.value.status == 400


def test_producer_headers_parse() -> None:
    headers = {"producer-id": "svc-1", "producer-epoch": "3", "producer-seq": str(2**53 - 1)}
    assert parse_producer(headers) == Producer("svc-1", 3, 2**53 - 1)
    assert parse_producer({}) is None


@pytest.mark.parametrize(("content_type", "media", "sse_text"), [
    ("application/json", "application/json", True),
    ("Application/JSON; charset=utf-8", "application/json", True),
    ("text/plain", "text/plain", True),
    ("TEXT/html;charset=utf-8", "text/html", True),
    ("application/octet-stream", "application/octet-stream", False),
    ("application/x-protobuf", "application/x-protobuf", False),
    ("application/ndjson", "application/ndjson", False),
])
def test_content_types(content_type: str, media: str, sse_text: bool) -> None:
    assert media_type(content_type) == media
    assert is_sse_text(content_type) is sse_text


@pytest.mark.parametrize(("headers", "body", "code"), [
    ({}, b"", "EMPTY_BODY"),
    ({}, b"x", "INVALID_HEADER"),  # a body needs a Content-Type
    ({"content-type": "nonsense"}, b"x", "INVALID_HEADER"),
    ({"content-type": "text/plain", "stream-seq": ""}, b"x", "INVALID_HEADER"),
])
def test_invalid_appends(headers: dict[str, str], body: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_append(headers, body)
    assert (info.value.status, info.value.code) == (400, code)


def test_close_only_append_needs_no_content_type() -> None:
    req = parse_append({"stream-closed": "true", "content-type": "bogus"}, b"")
    assert req.close and req.body == b""


def test_create_defaults_to_octet_stream() -> None:
    assert parse_create({}, b"").content_type == "application/octet-stream"


# -- JSON mode ---------------------------------------------------------------

@pytest.mark.parametrize(("body", "messages"), [
    (b'{"event": "created"}', [{"event": "created"}]),
    (b'[{"event": "a"}, {"event": "b"}]', [{"event": "a"}, {"event": "b"}]),
    (b"[[1,2], [3,4]]", [[1, 2], [3, 4]]),
    (b"[[[1,2,3]]]", [[[1, 2, 3]]]),
    (b'"line\\nbreak"', ["line\nbreak"]),
    (b"1", [1]),
    (b"null", [None]),
    (b' {"nested": {"deep": [1, {"x": "\\u2028"}]}} ', [{"nested": {"deep": [1, {"x": "\u2028"}]}}]),
])
def test_json_flattening(body: bytes, messages: list[object]) -> None:
    stored = jsonmode.encode_messages(body, allow_empty=False)
    assert jsonmode.message_count(stored) == len(messages)
    assert orjson.loads(jsonmode.to_array(stored)) == messages


@pytest.mark.parametrize("body", [b"", b"{", b"[1,", b"nope", b"\xff", b'{"a":1}{"b":2}'])
def test_invalid_json_is_400(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        jsonmode.encode_messages(body, allow_empty=False)
    assert info.value.status == 400


def test_empty_array_rules() -> None:
    assert jsonmode.encode_messages(b"[]", allow_empty=True) == b""
    with pytest.raises(ProtocolError):
        jsonmode.encode_messages(b"[]", allow_empty=False)
    assert jsonmode.to_array(b"") == b"[]"


# -- SSE ---------------------------------------------------------------------

def _parse_sse(stream: bytes) -> list[tuple[str, str]]:
    """A minimal spec-following SSE parser (W3C event stream interpretation)."""
    events, event, data = [], "message", []
    for line in stream.decode().split("\n"):
        if line == "":
            if data:
                events.append((event, "\n".join(data)))
            event, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    return events


@pytest.mark.parametrize("payload", [
    b"plain", b"two\nlines", b"crlf\r\nline", b"cr\ronly", b" leading space", b"event: data\n\nevent: control",
    b"trailing newline\n", b"",
])
def test_sse_text_round_trip(payload: bytes) -> None:
    encoded = sse.data_event(payload, binary=False)
    (event,) = _parse_sse(encoded) or [("data", "")]
    assert event[0] == "data"
    normalized = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode()
    assert event[1] == normalized


def test_sse_binary_is_base64_and_byte_at_a_time_safe() -> None:
    payload = bytes(range(256))
    encoded = sse.data_event(payload, binary=True) + sse.control_event("o", cursor="5", up_to_date=True, closed=False)
    assert b"\r" not in encoded
    events = _parse_sse(b"".join(encoded[i:i + 1] for i in range(len(encoded))))
    import base64
    assert events[0] == ("data", base64.b64encode(payload).decode())
    assert orjson.loads(events[1][1]) == {"streamNextOffset": "o", "streamCursor": "5", "upToDate": True}


def test_sse_control_on_close_omits_cursor() -> None:
    (event,) = _parse_sse(sse.control_event("o", cursor="5", up_to_date=False, closed=True))
    assert orjson.loads(event[1]) == {"streamNextOffset": "o", "upToDate": True, "streamClosed": True}


@pytest.mark.parametrize(("data", "cut"), [
    (b"abc", 3), ("aé".encode(), 3), ("aé".encode()[:2], 1), ("a€".encode()[:3], 1), ("a€".encode(), 4),
    ("a😀".encode()[:4], 1), (b"ab\r", 2), (b"ab\r\n", 4), (b"\xe2", 1),
])
def test_sse_text_cut(data: bytes, cut: int) -> None:
    assert sse.text_cut(data) == cut


# -- cursors -----------------------------------------------------------------

def test_cursor_is_interval_number() -> None:
    now = cursor.CURSOR_EPOCH_S + 20 * 1000 + 5
    assert cursor.next_cursor(now, None) == "1000"
    assert cursor.next_cursor(now, "999") == "1000"
    assert cursor.next_cursor(now, "garbage") == "1000"


@pytest.mark.parametrize("client", ["1000", "1005", "99999"])
def test_cursor_never_goes_backwards(client: str) -> None:
    now = cursor.CURSOR_EPOCH_S + 20 * 1000 + 5
    rng = random.Random(1)
    for _ in range(50):
        assert int(cursor.next_cursor(now, client, rng)) > int(client)


# -- rules -------------------------------------------------------------------

def _stream(content_type: str = "text/plain", **kw: object) -> StreamState:
    return StreamState(1, "s", content_type, Expiry(), 0.0, **kw)  # type: ignore[arg-type]


def _append(body: bytes = b"x", content_type: str | None = "text/plain", **kw: object) -> AppendRequest:
    fields = dict(seq=None, producer=None, close=False) | kw
    return AppendRequest(content_type, body, **fields)  # type: ignore[arg-type]


def test_create_then_idempotent_and_conflicts() -> None:
    req = CreateRequest("text/plain", Expiry(ttl_s=60), False, b"hi")
    event, reply = decide_create(None, "s", req, 7, 1.0)
    assert reply.status == 201 and isinstance(event, Created) and event.data == b"hi"
    table = StreamTable()
    state = table.apply(event)
    assert decide_create(state, "s", CreateRequest("TEXT/plain", Expiry(ttl_s=60), False, b""), 8, 2.0)[1].status == 200
    for other in (CreateRequest("application/json", Expiry(ttl_s=60), False, b""),
                  CreateRequest("text/plain", Expiry(ttl_s=61), False, b""),
                  CreateRequest("text/plain", Expiry(ttl_s=60), True, b"")):
        with pytest.raises(ProtocolError) as info:
            decide_create(state, "s", other, 9, 3.0)
        assert info.value.status == 409


APPEND_CASES = [
    # (stream kwargs, request kwargs, status, code)
    ({}, {}, 204, None),
    ({}, {"content_type": "application/json"}, 409, "CONTENT_TYPE_MISMATCH"),
    ({"closed": True}, {}, 409, "STREAM_CLOSED"),
    ({"closed": True}, {"content_type": "application/json"}, 409, "STREAM_CLOSED"),  # closed wins
    ({"closed": True}, {"body": b"", "close": True}, 204, None),
    ({"last_seq": "b"}, {"seq": "a"}, 409, "SEQUENCE_CONFLICT"),
    ({"last_seq": "b"}, {"seq": "b"}, 409, "SEQUENCE_CONFLICT"),
    ({"last_seq": "2"}, {"seq": "10"}, 409, "SEQUENCE_CONFLICT"),  # bytewise, not numeric
    ({"last_seq": "09"}, {"seq": "10"}, 204, None),
    ({}, {"producer": Producer("p", 0, 0)}, 200, None),
    ({}, {"producer": Producer("p", 0, 1)}, 409, "PRODUCER_SEQ_GAP"),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 0, 5)}, 403, "STALE_EPOCH"),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 1, 4)}, 204, None),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 1, 2)}, 204, None),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 1, 5)}, 200, None),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 1, 7)}, 409, "PRODUCER_SEQ_GAP"),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 2, 0)}, 200, None),
    ({"producers": {"p": ProducerState(1, 4)}}, {"producer": Producer("p", 2, 1)}, 400, "INVALID_PRODUCER"),
    ({"closed": True, "closed_by": Producer("p", 0, 3)}, {"producer": Producer("p", 0, 3)}, 204, None),
    ({"closed": True, "closed_by": Producer("p", 0, 3)}, {"producer": Producer("p", 0, 4)}, 409, "STREAM_CLOSED"),
    ({"closed": True, "producers": {"p": ProducerState(2, 0)}}, {"producer": Producer("p", 1, 9)}, 403, "STALE_EPOCH"),
]


@pytest.mark.parametrize(("stream_kw", "request_kw", "status", "code"), APPEND_CASES)
def test_append_decisions(stream_kw: dict, request_kw: dict, status: int, code: str | None) -> None:
    state = _stream(**stream_kw)
    try:
        event, reply = decide_append(state, _append(**request_kw))
    except ProtocolError as exc:
        assert (exc.status, exc.code) == (status, code)
        return
    assert code is None and reply.status == status
    if status == 200 or (status == 204 and event is not None):
        assert isinstance(event, Appended)


def test_gap_and_stale_headers() -> None:
    state = _stream(producers={"p": ProducerState(3, 4)})
    with pytest.raises(ProtocolError) as gap:
        decide_append(state, _append(producer=Producer("p", 3, 9)))
    assert dict(gap.value.headers) == {"producer-expected-seq": "5", "producer-received-seq": "9"}
    with pytest.raises(ProtocolError) as stale:
        decide_append(state, _append(producer=Producer("p", 2, 0)))
    assert dict(stale.value.headers) == {"producer-epoch": "3"}


def test_duplicate_reports_highest_accepted_seq() -> None:
    state = _stream(producers={"p": ProducerState(0, 5)}, tail=10)
    event, reply = decide_append(state, _append(producer=Producer("p", 0, 2)))
    assert event is None
    assert dict(reply.headers)["producer-seq"] == "5"
    assert dict(reply.headers)["stream-next-offset"] == format_offset(10)


def _json_append(body: bytes, **kw: object) -> AppendRequest:
    framed = jsonmode.frame(body, allow_empty=False, limits=jsonmode.JsonLimits())
    return _append(body, "application/json", framed=framed, **kw)


def test_json_append_is_validated_after_state_checks() -> None:
    state = _stream("application/json")
    with pytest.raises(ProtocolError) as info:
        decide_append(state, _json_append(b"[]"))
    assert info.value.code == "EMPTY_JSON_ARRAY"
    with pytest.raises(ProtocolError) as closed:
        decide_append(_stream("application/json", closed=True), _json_append(b"[]"))
    assert closed.value.code == "STREAM_CLOSED"
    with pytest.raises(ProtocolError) as gap:
        decide_append(state, _json_append(b"{", producer=Producer("p", 0, 3)))
    assert gap.value.code == "PRODUCER_SEQ_GAP"
    event, _ = decide_append(state, _json_append(b"[1,2]"))
    assert event is not None and event.data == b"1\n2\n"


def test_unframed_json_body_is_never_parsed_by_the_rules() -> None:
    with pytest.raises(ProtocolError) as info:
        decide_append(_stream("application/json"), _append(b"[1]", "application/json"))
    assert info.value.code == "CONTENT_TYPE_CHANGED"


def test_table_replay_is_deterministic() -> None:
    events = [
        Created(1, "a", "text/plain", Expiry(), 0.0, False, b"ab"),
        Appended(1, 2, b"cd", seq="1", producer=Producer("p", 0, 0)),
        Created(2, "b", "application/json", Expiry(ttl_s=5), 0.0, False, b"1\n"),
        Appended(1, 4, b"", producer=Producer("p", 0, 1), close=True),
        Deleted(2),
    ]
    tables = [StreamTable(), StreamTable()]
    for table in tables:
        for event in events:
            table.apply(event)
    a, b = (t.by_path["a"] for t in tables)
    assert a == b
    assert (a.tail, a.closed, a.closed_by, a.last_seq) == (4, True, Producer("p", 0, 1), "1")
    assert "b" not in tables[0].by_path and tables[0].next_stream_id == 3


@pytest.mark.parametrize("body", [
    b'{"id": 18446744073709551617}', b"[-9223372036854775809, 1]", b"123456789012345678901234567890",
    b'{"s": "1234567890123456789 in a string", "n": 1.5}',
])
def test_json_integers_beyond_64_bits_stay_exact(body: bytes) -> None:
    import json
    stored = jsonmode.encode_messages(body, allow_empty=False)
    value = json.loads(body)
    assert json.loads(jsonmode.to_array(stored)) == (value if isinstance(value, list) else [value])


@pytest.mark.parametrize("body", [b"[NaN]", b"[Infinity]", b"[1e99999999999999999999]"])
def test_json_non_finite_numbers_are_400(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        jsonmode.encode_messages(body, allow_empty=False)


def test_chunk_cache_is_bounded_in_bytes() -> None:
    from trio_streams.streams.chunks import ChunkCache
    cache = ChunkCache(bytes_max=1000)
    for i in range(20):
        data = bytes(100)
        cache.put((1, i, i + 100), (data, data))
    assert cache.get((1, 0, 100)) is None and cache.get((1, 19, 119)) is not None
    assert sum(1 for i in range(20) if cache.get((1, i, i + 100))) == 10
    cache.put((2, 0, 500), (bytes(500), bytes(500)))  # larger than an eighth: not cached
    assert cache.get((2, 0, 500)) is None


# -- fork re-creation: the default offset is the caller's to state -----------

def _existing_fork(anchor: int) -> StreamState:
    origin = ForkOrigin(1, "src", anchor, 0, anchor)
    return StreamState(2, "f", "text/plain", Expiry(), 0.0, fork=origin)


@pytest.mark.parametrize(("offset", "status"), [
    (format_offset(5), 200), (format_offset(4), 409), (None, 409),  # None: no source to take a tail from
])
def test_fork_recreate_compares_the_stated_offset(offset: str | None, status: int) -> None:
    req = CreateRequest("text/plain", Expiry(), False, b"", ForkSpec("src", offset, 0), content_type_given=False)
    try:
        _, reply = decide_create(_existing_fork(5), "f", req, 9, 1.0)
        assert reply.status == status
    except ProtocolError as exc:
        assert exc.status == status


# -- URLs: names, spellings, origins ---------------------------------------

@pytest.mark.parametrize(("raw", "decoded"), [
    (b"/v1/stream/x%2Fy", "/v1/stream/x/y"), (b"/p%2Bq", "/p+q"), (b"/p+q", "/p+q"),
    (b"/caf%c3%a9", "/café"), (b"/caf\xc3\xa9", "/café"), (b"/a%20b", "/a b"), (b"/%25", "/%"),
])
def test_paths_decode_every_escape(raw: bytes, decoded: str) -> None:
    assert urls.decode_path(raw) == decoded


@pytest.mark.parametrize("raw", [b"/x-%ff", b"/x-%c3", b"/\xff", b"/%ed%a0%80"])
def test_paths_that_are_not_utf8_are_400(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        urls.decode_path(raw, "INVALID_FORK")
    assert (info.value.status, info.value.code) == (400, "INVALID_FORK")


@pytest.mark.parametrize(("path", "encoded"), [
    ("/x/y", "/x/y"), ("/p+q", "/p+q"), ("/café", "/caf%C3%A9"), ("/a b", "/a%20b"), ("/%", "/%25"),
    ("/~a_b.c-d", "/~a_b.c-d"), ("/a?b#c", "/a%3Fb%23c"), ("/!$&'()*,;=:@", "/!$&'()*,;=:@"),
])
def test_names_print_in_one_canonical_encoding(path: str, encoded: str) -> None:
    assert urls.encode_path(path) == encoded
    assert urls.decode_path(encoded.encode()) == path  # and it reads back as the same name


def _respell(name: str, rng: random.Random) -> bytes:
    """Another spelling of ``name``: each UTF-8 byte raw when it may be, or escaped in either hex case."""
    out = b""
    for byte in name.encode():
        raw_ok = chr(byte).isalnum() and byte < 128 or chr(byte) in "/+~:@!"
        if raw_ok and rng.random() < 0.5:
            out += bytes([byte])
        else:
            escaped = f"%{byte:02X}"
            out += (escaped.lower() if rng.random() < 0.5 else escaped).encode()
    return out


def test_every_spelling_decodes_to_the_name_and_prints_canonically() -> None:
    rng = random.Random(11)
    alphabet = "az09/+%~ é?#:@!\u00ff\u4e2d"
    for _ in range(500):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        printed = urls.encode_path(name)
        assert urls.decode_path(printed.encode()) == name
        spelling = _respell(name, rng)
        assert urls.decode_path(spelling) == name, spelling
        assert urls.encode_path(urls.decode_path(spelling)) == printed


@pytest.mark.parametrize(("value", "origin", "path"), [
    ("/v1/stream/a", None, b"/v1/stream/a"),
    ("/v1/stream/a?x#y", None, b"/v1/stream/a"),
    ("/v1/stream/caf\xc3\xa9", None, b"/v1/stream/caf\xc3\xa9"),
    ("http://h:8/v1/stream/a", urls.Origin("http", "h", 8), b"/v1/stream/a"),
    ("HTTPS://H.example/v1/stream/a?q", urls.Origin("https", "h.example", 443), b"/v1/stream/a"),
    ("http://h?q", urls.Origin("http", "h", 80), b""),
    ("http://[::1]:80/s", urls.Origin("http", "[::1]", 80), b"/s"),
])
def test_fork_references_split_into_origin_and_raw_path(value: str, origin: object, path: bytes) -> None:
    assert urls.split_reference(value) == (origin, path)


@pytest.mark.parametrize("value", [
    "//evil.example/v1/stream/a", "ftp://h/v1/stream/a", "http:/v1/stream/a", "http://u@h/v1/stream/a",
    "http://h:0/a", "http://h:65536/a", "http:///a", "v1/stream/a", "mailto:a@b",
])
def test_malformed_fork_references_are_400(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        urls.split_reference(value)
    assert (info.value.status, info.value.code) == (400, "INVALID_FORK")


@pytest.mark.parametrize(("scheme", "authority", "origin"), [
    ("http", "Example.COM", urls.Origin("http", "example.com", 80)),
    ("https", "example.com:443", urls.Origin("https", "example.com", 443)),
    ("http", "127.0.0.1:4437", urls.Origin("http", "127.0.0.1", 4437)),
    ("http", "evil.example/x", None), ("http", "a b", None), ("http", "", None), ("ws", "h", None),
])
def test_origins_fill_in_default_ports_and_fold_case(scheme: str, authority: str, origin: object) -> None:
    assert urls.parse_origin(scheme, authority) == origin


def test_a_content_type_mismatch_names_both_types_and_cuts_the_clients() -> None:
    with pytest.raises(ProtocolError) as info:
        decide_append(_stream(), _append(content_type="application/json"))
    assert (info.value.status, info.value.code) == (409, "CONTENT_TYPE_MISMATCH")
    assert "'application/json'" in info.value.message and "'text/plain'" in info.value.message
    with pytest.raises(ProtocolError) as info:
        decide_append(_stream(), _append(content_type="x/" + "y" * 10_000))
    assert len(info.value.message) < 200  # untrusted input is never echoed whole
