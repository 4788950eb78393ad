"""JSON framing: the one-call path and the windowed path agree byte for byte.

Large bodies are framed by ``WindowedFramer`` (message by message over a
bounded window, in a worker thread); small ones by ``encode_messages`` (one
call, on the event loop). Properties: for generated JSON values and
near-JSON garbage, both give identical stored bytes or both refuse; for
JSON that orjson parses exactly, both give what the server stored before
framing was split in two (orjson loads + dumps of each message).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import orjson
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_streams.config import Settings
from trio_streams.protocol import jsonmode
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, ForkSpec
from trio_streams.protocol.jsonmode import JsonLimits
from trio_streams.streams.framing import JsonFraming

from test_streams import run_service

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
                      max_leaves=25)
whitespace = st.text(" \t\n\r", max_size=3)
JSONISH = b'[]{},:"\\ \n0123456789.eE+-tfnaulrsx\xff\xc3\x00'


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A value encoded in one of many legal ways (whitespace, escapes, a top-level array or not)."""
    value = draw(values | st.lists(values, max_size=6))
    sep = draw(whitespace)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=(sep + "," + sep, ":" + draw(whitespace)))
    raw = (draw(whitespace) + text + draw(whitespace)).encode("utf-8", "surrogatepass")  # surrogatepass: invalid UTF-8
    return raw


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """A valid body with a few bytes deleted, inserted or replaced, or cut short."""
    body = bytearray(draw(bodies()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "cut"]))
        byte = draw(st.sampled_from(JSONISH))
        if action == "delete":
            del body[at : at + 1]
        elif action == "insert":
            body.insert(at, byte)
        elif action == "replace" and at < len(body):
            body[at] = byte
        elif action == "cut":
            del body[at:]
    return bytes(body)


limits = st.builds(JsonLimits, depth_max=st.integers(1, 8), messages_max=st.integers(0, 8),
                   message_bytes_max=st.just(1 << 30))
windows = st.integers(1, 48) | st.just(jsonmode.WINDOW_BYTES)


def frame_inline(body: bytes, limit: JsonLimits, allow_empty: bool = False) -> bytes | ProtocolError:
    try:
        return jsonmode.encode_messages(body, allow_empty=allow_empty, limits=limit)
    except ProtocolError as exc:
        return exc


def frame_windowed(body: bytes, limit: JsonLimits, window: int, allow_empty: bool = False) -> bytes | ProtocolError:
    try:
        return bytes(jsonmode.encode_messages_windowed(body, allow_empty=allow_empty, limits=limit, window_bytes=window))
    except ProtocolError as exc:
        return exc


def assert_same(body: bytes, limit: JsonLimits, window: int, allow_empty: bool) -> None:
    inline = frame_inline(body, limit, allow_empty)
    windowed = frame_windowed(body, limit, window, allow_empty)
    if isinstance(inline, bytes) or isinstance(windowed, bytes):
        assert inline == windowed, (body, inline, windowed)
    else:  # both refuse, with a 4xx (which one may differ when several rules are broken)
        assert inline.status in (400, 413) and windowed.status in (400, 413)


@PROPERTY
@given(bodies(), limits, windows, st.booleans())
@example(b'[1.5e3, 12345678901234567890123, "\\ud83d\\ude00"]', JsonLimits(), 1, False)
@example(b'[[[[1]]]]', JsonLimits(depth_max=4), 2, False)
@example(b"[1, 2, 3]", JsonLimits(messages_max=2), 1, False)
def test_both_paths_agree_on_json(body: bytes, limit: JsonLimits, window: int, allow_empty: bool) -> None:
    assert_same(body, limit, window, allow_empty)


@PROPERTY
@given(garbage(), limits, windows, st.booleans())
@example(b"[1.", JsonLimits(), 2, False)
@example(b"[1e4", JsonLimits(), 3, False)
@example(b'["\\u12', JsonLimits(), 4, False)
@example(b"[1]]", JsonLimits(), 1, False)
def test_both_paths_agree_on_near_json(body: bytes, limit: JsonLimits, window: int, allow_empty: bool) -> None:
    assert_same(body, limit, window, allow_empty)


@PROPERTY
@given(st.binary(max_size=40) | st.text(st.sampled_from(JSONISH.decode("latin-1")), max_size=40).map(lambda t: t.encode("latin-1")),
       windows)
def test_both_paths_agree_on_noise(body: bytes, window: int) -> None:
    assert_same(body, JsonLimits(), window, False)


@PROPERTY
@given(bodies(), windows)
def test_stored_form_is_what_orjson_gives_for_what_it_parses_exactly(body: bytes, window: int) -> None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if jsonmode.needs_care(body) or json.dumps(value).count("[") + json.dumps(value).count("{") > 100:
        return  # orjson would round big integers; the nesting limit may apply
    items = value if isinstance(value, list) else [value]
    expected = b"".join(orjson.dumps(item) + b"\n" for item in items)
    assert frame_windowed(body, JsonLimits(), window, allow_empty=True) == expected


# -- today's semantics, on both paths ----------------------------------------------


@pytest.mark.parametrize(("body", "stored"), [
    (b'[{"a": 1}, [2, 3]]', b'{"a":1}\n[2,3]\n'),  # one array level flattened
    (b'{"x": "line\\nbreak"}', b'{"x":"line\\nbreak"}\n'),
    (b"[18446744073709551617, -9223372036854775809]", b"18446744073709551617\n-9223372036854775809\n"),
    (b"123456789012345678901234567890", b"123456789012345678901234567890\n"),
    (b'["\\ud83d\\ude00"]', '"\U0001F600"\n'.encode()),  # an escaped surrogate pair is one character
    (b"[1E2, -0, -0.0, 1e-400]", b"100.0\n0\n-0.0\n0.0\n"),
])
@pytest.mark.parametrize("window", [1, 5, jsonmode.WINDOW_BYTES])
def test_semantics_on_both_paths(body: bytes, stored: bytes, window: int) -> None:
    assert frame_inline(body, JsonLimits()) == stored
    assert frame_windowed(body, JsonLimits(), window) == stored


@pytest.mark.parametrize(("body", "code"), [
    (b"[]", "EMPTY_JSON_ARRAY"),
    (b"[NaN]", "INVALID_JSON"), (b"[Infinity]", "INVALID_JSON"), (b"[-Infinity]", "INVALID_JSON"),
    (b"[1e400]", "INVALID_JSON"), (b"[-1.8e308]", "INVALID_JSON"), (b"[1" + b"0" * 400 + b".0]", "INVALID_JSON"),
    (b'["\xff"]', "INVALID_JSON"), (b'["\xed\xa0\x80"]', "INVALID_JSON"),  # invalid UTF-8, an encoded surrogate
    (b'["\\ud800"]', "INVALID_JSON"), (b'{"\\udfff": 1}', "INVALID_JSON"),  # lone surrogates
    (b"\xef\xbb\xbf[1]", "INVALID_JSON"), (b"[1,]", "INVALID_JSON"), (b"[1] [2]", "INVALID_JSON"), (b"", "INVALID_JSON"),
    (b"[" * 129 + b"]" * 129, "JSON_TOO_DEEP"), (b"[" * 5000 + b"]" * 5000, "JSON_TOO_DEEP"),
])
@pytest.mark.parametrize("window", [1, 7, jsonmode.WINDOW_BYTES])
def test_refusals_on_both_paths(body: bytes, code: str, window: int) -> None:
    for outcome in (frame_inline(body, JsonLimits()), frame_windowed(body, JsonLimits(), window)):
        assert isinstance(outcome, ProtocolError) and (outcome.status, outcome.code) == (400, code), outcome


class _Counted:
    """Counts the calls of a function it stands in for."""

    def __init__(self, function: object) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.function(*args, **kwargs)  # type: ignore[operator]


def test_an_ordinary_body_is_validated_once_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """One validation pass (orjson), never a second parse by the stdlib decoder."""
    loads = _Counted(orjson.loads)
    monkeypatch.setattr(jsonmode.orjson, "loads", loads)
    for decoder in ("PLAIN", "CAREFUL"):
        monkeypatch.setattr(jsonmode, decoder, None)  # any use fails
    body = orjson.dumps([{"id": i, "text": "héllo\n", "n": 1.5, "id64": 2**63 + 5, "neg": -(10**18 - 1), "tags": [i, None]} for i in range(100)])
    assert frame_inline(body, JsonLimits()) == b"".join(orjson.dumps(m) + b"\n" for m in orjson.loads(body))
    assert loads.calls == 1 + 1  # the framer's, and the expected value's above


@pytest.mark.parametrize("body", [b"[18446744073709551616]", b"[-9223372036854775809]", b"[1e400]", b'["\\ud800"]', b"[1,]", b"[" * 2000])
def test_what_orjson_cannot_keep_or_refuses_goes_to_the_stdlib_decoder(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact big integers, and every refusal in the stdlib's words: the careful path decides."""
    decode = _Counted(jsonmode.CAREFUL.decode)
    plain = _Counted(jsonmode.PLAIN.decode)
    monkeypatch.setattr(jsonmode.CAREFUL, "decode", decode)
    monkeypatch.setattr(jsonmode.PLAIN, "decode", plain)
    frame_inline(body, JsonLimits())
    assert decode.calls + plain.calls == 1


def test_depth_limit_is_inclusive_on_both_paths() -> None:
    at_limit, over = b"[" * 128 + b"]" * 128, b"[" * 129 + b"]" * 129
    for window in (3, jsonmode.WINDOW_BYTES):
        assert frame_windowed(at_limit, JsonLimits(), window) == b"[" * 127 + b"]" * 127 + b"\n"
        assert frame_windowed(over, JsonLimits(), window).code == "JSON_TOO_DEEP"  # type: ignore[union-attr]
    assert frame_inline(at_limit, JsonLimits()) == b"[" * 127 + b"]" * 127 + b"\n"


# -- limits of the windowed path ---------------------------------------------------


def test_too_many_messages_is_found_without_reading_the_whole_body() -> None:
    body = b"[" + b"{}," * 1_000_000 + b"{}]"
    framer = jsonmode.WindowedFramer(body, allow_empty=False, limits=JsonLimits(messages_max=1000))
    with pytest.raises(ProtocolError) as info:
        for _ in framer.steps():
            pass
    assert (info.value.status, info.value.code) == (413, "JSON_TOO_MANY_MESSAGES")
    assert framer.messages == 1000
    assert framer._fed <= 2 * jsonmode.WINDOW_BYTES  # two windows of a 3 MB body were decoded
    assert frame_inline(body, JsonLimits(messages_max=1000)).code == "JSON_TOO_MANY_MESSAGES"  # type: ignore[union-attr]


@pytest.mark.parametrize("message", [b'"' + b"x" * 5000 + b'"', b"{\"a\":[" + b"1," * 2500 + b"1]}", "\"" + "é" * 2500 + "\""])
def test_a_message_over_message_bytes_max_is_413(message: bytes | str) -> None:
    encoded = message.encode() if isinstance(message, str) else message
    limit = JsonLimits(message_bytes_max=len(encoded) - 1)
    for body in (encoded, b"[1, " + encoded + b", 2]"):
        outcome = frame_windowed(body, limit, 64)
        assert isinstance(outcome, ProtocolError) and (outcome.status, outcome.code) == (413, "JSON_MESSAGE_TOO_LARGE")
    assert frame_windowed(b"[1, " + encoded + b", 2]", JsonLimits(message_bytes_max=len(encoded)), 64) == (
        b"1\n" + orjson.dumps(json.loads(encoded)) + b"\n2\n"
    )


def test_every_step_is_bounded() -> None:
    """No step decodes more than a window, or re-parses more than about twice the message it is on."""
    message = orjson.dumps({"k": "v" * 3000})
    body = b"[" + b",".join([message] * 50) + b"]"
    framer = jsonmode.WindowedFramer(body, allow_empty=False, limits=JsonLimits(), window_bytes=1024)
    fed, growth = 0, []
    for _ in framer.steps():
        growth.append(framer._fed - fed)
        fed = framer._fed
    assert framer.messages == 50 and bytes(framer.result()) == b"".join(m + b"\n" for m in [message] * 50)
    assert max(growth) <= 2 * len(message) + 1024


# -- where framing runs ------------------------------------------------------------


def _tracking_steps(monkeypatch: pytest.MonkeyPatch, overlap_wait_s: float = 0.0) -> list[tuple[threading.Thread, int]]:
    """Records (thread, bodies being framed at once) for each windowed framing."""
    seen: list[tuple[threading.Thread, int]] = []
    active = [0]
    lock = threading.Lock()
    another = threading.Event()
    real = jsonmode.WindowedFramer.steps

    def steps(self: jsonmode.WindowedFramer):  # type: ignore[no-untyped-def]
        with lock:
            active[0] += 1
            seen.append((threading.current_thread(), active[0]))
            if active[0] > 1:
                another.set()
        another.wait(overlap_wait_s)  # give a second worker every chance to overlap
        try:
            yield from real(self)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(jsonmode.WindowedFramer, "steps", steps)
    return seen


def _json_request(body: bytes) -> AppendRequest:
    return AppendRequest("application/json", body, None, None, False)


async def test_only_large_bodies_leave_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _tracking_steps(monkeypatch)
    framing = JsonFraming(Settings(json_inline_bytes_max=16, json_message_bytes_max=1024))
    small = await framing.append(_json_request(b"[1,2]"))
    assert small.framed is not None and small.framed.result() == b"1\n2\n" and seen == []
    large = await framing.append(_json_request(b"[" + b"1," * 20 + b"1]"))
    assert large.framed is not None and large.framed.result() == b"1\n" * 21
    [(thread, _)] = seen
    assert thread is not threading.current_thread()


async def test_large_bodies_share_json_workers_max_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _tracking_steps(monkeypatch, overlap_wait_s=0.2)
    framing = JsonFraming(Settings(json_inline_bytes_max=16, json_message_bytes_max=1024, json_workers_max=1))
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(framing.append, _json_request(b"[" + b"1," * 20 + b"1]"))
    assert [active for _, active in seen] == [1, 1, 1]


async def test_framing_refusals_travel_with_the_request() -> None:
    framing = JsonFraming(Settings(json_inline_bytes_max=16, json_message_bytes_max=1024))
    for body in (b"[1,", b"[" + b"1," * 20 + b"x]"):
        request = await framing.append(_json_request(body))
        assert request.framed is not None and request.framed.error is not None
        assert request.framed.error.code == "INVALID_JSON"


# -- forks inherit their source's content type, and its framing -----------------------


async def test_a_fork_inheriting_json_has_its_body_framed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_service(Settings(data_dir=str(tmp_path))) as service:
        registry = service.registry
        assert registry is not None
        await registry.create("src", CreateRequest("application/json", Expiry(), False, b"[1]"))
        fork = ForkSpec("src", None, 0)
        reply = await registry.create("f", CreateRequest("", Expiry(), False, b"[2, 3]", fork, content_type_given=False))
        assert reply.status == 201
        state = registry.visible("f")
        assert state is not None and await registry.view.read(state, 0, state.tail) == b"1\n2\n3\n"
        # The source's type as the registry saw it is stale by the time the actor decides:
        # the actor refuses rather than parse the body itself.
        monkeypatch.setattr(registry, "_expected_content_type", lambda request: "text/plain")
        with pytest.raises(ProtocolError) as info:
            await registry.create("g", CreateRequest("", Expiry(), False, b"[4]", fork, content_type_given=False))
        assert (info.value.status, info.value.code) == (409, "CONTENT_TYPE_CHANGED")
